"""The fused object-centric-embedding (OCE) loss of CELLULUS and its pair sampler.

Registered as ``torch.ops.cellulus_fast.oce_loss`` (CPU and CUDA kernels in ``csrc/oce_loss``); this module
adds argument checks, the fake (meta) kernels used by ``torch.compile``, and autograd.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch.autograd.function import once_differentiable

from .._extension import OPS
from ._checks import check_choice, check_float_tensor, check_int, check_real

NONLINEARITIES = ("sigmoid", "gaussian")
REDUCTIONS = ("sum", "mean")


def num_anchors(spatial: Sequence[int], density: float, kappa: float) -> int:
    """Anchors per image: ``max(1, floor(density * #valid))``, valid = positions at least floor(kappa) from
    every border (so the whole kappa-disk around them lies inside the image)."""
    margin = math.floor(kappa)
    valid = 1
    for size in spatial:
        valid *= size - 2 * margin
    return max(1, math.floor(density * valid))


def _check_offsets(offsets: torch.Tensor, kappa: float, density: float, *, half: bool = False) -> None:
    """Shape and dtype checks; `half`: float16/bfloat16 accepted too (computed in float32)."""
    if half and isinstance(offsets, torch.Tensor) and offsets.dtype in HALF_TYPES:
        pass
    else:
        check_float_tensor("offsets", offsets)
    if offsets.dim() not in (4, 5):
        raise ValueError(f"offsets must have shape (B, D, *spatial) with 2 or 3 spatial dims, got shape "
                         f"{tuple(offsets.shape)}")
    dims = offsets.dim() - 2
    if offsets.shape[1] != dims:
        raise ValueError(f"offsets must have D = {dims} channels (one per spatial dim), got {offsets.shape[1]}")
    margin = math.floor(kappa)
    if any(size <= 2 * margin for size in offsets.shape[2:]):
        raise ValueError(f"every spatial size of offsets must exceed 2 * floor(kappa) = {2 * margin}, got "
                         f"{tuple(offsets.shape[2:])}")
    anchors = num_anchors(offsets.shape[2:], density, kappa)
    if anchors > MAX_COUNT or offsets.shape[0] > MAX_COUNT:
        raise ValueError(f"offsets of shape {tuple(offsets.shape)} with density={density} give {anchors} anchors per "
                         "image; at most 2**31 - 1 anchors per image (and images per batch) are supported: lower "
                         "density or use smaller crops")


def _check_sampling(density: float, kappa: float, num_references: int) -> Tuple[float, float, int]:
    density = check_real("density", density, low=0.0, high=1.0, low_open=True)
    kappa = check_real("kappa", kappa, low=1.0)
    num_references = check_int("num_references", num_references, low=1, high=MAX_COUNT, high_text="2**31 - 1")
    return density, kappa, num_references


MAX_SEED = 2**63 - 1  # the ops take a signed 64-bit seed
MAX_COUNT = 2**31 - 1  # the kernels count images, anchors per image and references with 32-bit counters
HALF_TYPES = (torch.float16, torch.bfloat16)


def _check_seed(seed: object) -> int:
    return check_int("seed", seed, low=0, high=MAX_SEED, high_text="2**63 - 1")


def _resolve_seed(seed: Optional[int]) -> int:
    """An explicit seed, or one drawn from torch's global generator (so torch.manual_seed governs it)."""
    if seed is None:
        return int(torch.randint(0, 2**62, (1,)).item())
    return _check_seed(seed)


def oce_loss(offsets: torch.Tensor, *, density: float = 0.2, kappa: float = 10.0, num_references: int = 1,
             tau: float = 10.0, lambda_reg: float = 1e-5, nonlinearity: str = "sigmoid",
             detach_reference: bool = False, reduction: str = "sum", seed: Optional[int] = None) -> torch.Tensor:
    """Fused self-supervised OCE loss of CELLULUS (Wolf, Lalit et al., ICCV 2023), forward and backward.

    The embedding of pixel i is its coordinate plus its predicted offset, ``e(i) = x_i + r(i)``, where
    channel c of ``offsets`` is the offset along spatial axis c (axis order of the tensor: y, x in 2-D).
    For every image ``num_anchors(spatial, density, kappa)`` anchors are drawn uniformly (with replacement)
    among the pixels at least ``floor(kappa)`` from every border; for each anchor ``num_references``
    references ``j = i + o`` are drawn uniformly among the integer lattice offsets with
    ``0 < ||o||_2 <= kappa`` (inclusive), so references never leave the image. The loss is

        sum over pairs (i, j) of  sigma(||e(i) - e(j)||^2) + lambda_reg * ||r(i)||_2

    (the regulariser is counted once per pair, i.e. num_references times per anchor), divided by the number
    of pairs if ``reduction="mean"``. ``sigmoid`` is the paper's ``(1 + exp(-d^2/tau))^-1``; ``gaussian`` is the
    public reference code's ``1 - exp(-d^2/tau)``. ``detach_reference=True`` stops the gradient through e(j),
    as the reference code does.

    The pairs are never materialised: they come from a Philox counter-based generator keyed by
    (seed, image, anchor, reference), so extra memory is O(1) in the number of pairs. When a gradient will be
    needed (grad mode on and ``offsets.requires_grad``), the forward computes the loss and its gradient
    (``torch.ops.cellulus_fast.oce_loss_and_grad``: in one pass over the pairs for float32 2-D offsets on
    CPUs with AVX2, else in two) and keeps the gradient, one tensor of the size of ``offsets``, which backward
    scales by the upstream gradient; so a loss computed under grad mode costs the gradient too even if backward
    never runs. Otherwise only the loss is computed (``torch.ops.cellulus_fast.oce_loss``, whose own backward
    regenerates the pairs). The loss is the same either way, bit for bit, and so is the gradient for a unit
    upstream gradient. The same seed gives the same pairs on CPU and CUDA (see :func:`sample_pairs`), and
    the CPU loss does not depend on the number of threads. ``seed=None`` draws one from torch's global
    generator. The backward is not itself differentiable (no second derivatives).

    Mixed precision: float16/bfloat16 offsets (e.g. a network's output under ``torch.autocast``) are computed
    in float32 and give a float32 loss; the gradient reaches them through the cast. (The ops register Autocast
    kernels for CPU and CUDA that do this cast, as torchvision's ops do.)

    Args:
        offsets: (B, D, *spatial) float32/float64 (or float16/bfloat16, see above) network output, D = number of
            spatial dims (2 or 3); at most 2**31 - 1 anchors per image.
        seed: in [0, 2**63 - 1], or None.
    Returns:
        A 0-dim tensor of the dtype of ``offsets`` (float32 for float16/bfloat16).
    """
    density, kappa, num_references = _check_sampling(density, kappa, num_references)
    _check_offsets(offsets, kappa, density, half=True)
    tau = check_real("tau", tau, low=0.0, low_open=True)
    lambda_reg = check_real("lambda_reg", lambda_reg, low=0.0)
    nonlinearity = check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
    reduction = check_choice("reduction", reduction, REDUCTIONS)
    if not isinstance(detach_reference, bool):
        raise TypeError(f"detach_reference must be a bool, got {type(detach_reference).__name__}")
    args = (density, kappa, num_references, tau, lambda_reg, nonlinearity, detach_reference,
            _resolve_seed(seed), reduction)
    if offsets.dtype in HALF_TYPES and not torch.is_autocast_enabled(offsets.device.type):
        offsets = offsets.float()  # (under autocast the ops' Autocast kernels cast, see csrc/autocast.cpp)
    if torch.is_grad_enabled() and offsets.requires_grad:
        return OPS.oce_loss_and_grad(offsets, *args)[0]
    return OPS.oce_loss(offsets, *args)


def sample_pairs(offsets_or_shape: Union[torch.Tensor, Sequence[int]], *, density: float = 0.2,
                 kappa: float = 10.0, num_references: int = 1, seed: int,
                 device: Union[str, torch.device, None] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The pairs :func:`oce_loss` draws for ``seed`` on a tensor of this (B, D, *spatial) shape.

    Returns:
        anchors: (B, A, D) int64 pixel coordinates; references: (B, A, num_references, D) int64 coordinates.
    """
    density, kappa, num_references = _check_sampling(density, kappa, num_references)
    if isinstance(offsets_or_shape, torch.Tensor):
        offsets = offsets_or_shape
        if device is not None:
            offsets = offsets.to(device)
    else:
        offsets = torch.empty(tuple(offsets_or_shape), device=device)
    _check_offsets(offsets, kappa, density, half=True)
    if offsets.dtype in HALF_TYPES:
        offsets = offsets.float()  # (only the shape matters)
    return OPS.sample_pairs(offsets, density, kappa, num_references, _check_seed(seed))


# --- torch.library registrations: fake kernels (shape propagation for torch.compile) and autograd -------

@torch.library.register_fake("cellulus_fast::oce_loss")
def _oce_loss_fake(offsets, density, kappa, num_references, tau, lambda_reg, nonlinearity, detach_reference,
                   seed, reduction):
    return offsets.new_empty(())


@torch.library.register_fake("cellulus_fast::oce_loss_backward")
def _oce_loss_backward_fake(grad, offsets, density, kappa, num_references, tau, lambda_reg, nonlinearity,
                            detach_reference, seed, reduction):
    return torch.empty_like(offsets, memory_format=torch.contiguous_format)


@torch.library.register_fake("cellulus_fast::oce_loss_and_grad")
def _oce_loss_and_grad_fake(offsets, density, kappa, num_references, tau, lambda_reg, nonlinearity,
                            detach_reference, seed, reduction):
    return offsets.new_empty(()), torch.empty_like(offsets, memory_format=torch.contiguous_format)


@torch.library.register_fake("cellulus_fast::sample_pairs")
def _sample_pairs_fake(offsets, density, kappa, num_references, seed):
    batch, dims = offsets.shape[0], offsets.dim() - 2
    anchors = num_anchors(offsets.shape[2:], density, kappa)
    return (offsets.new_empty((batch, anchors, dims), dtype=torch.long),
            offsets.new_empty((batch, anchors, num_references, dims), dtype=torch.long))


def _setup_context(ctx, inputs, output):
    offsets, *params = inputs
    ctx.save_for_backward(offsets)
    ctx.params = params


@once_differentiable
def _backward(ctx, grad):
    (offsets,) = ctx.saved_tensors
    return (OPS.oce_loss_backward(grad, offsets, *ctx.params),) + (None,) * len(ctx.params)


torch.library.register_autograd("cellulus_fast::oce_loss", _backward, setup_context=_setup_context)


def _setup_context_and_grad(ctx, inputs, output):
    _, grad = output
    ctx.mark_non_differentiable(grad)  # the gradient is a by-product, not a differentiable output
    ctx.set_materialize_grads(False)  # so backward gets None for it, not an offsets-sized tensor of zeros
    ctx.save_for_backward(grad)
    ctx.num_params = len(inputs) - 1


@once_differentiable
def _backward_and_grad(ctx, grad_loss, _):
    (grad,) = ctx.saved_tensors
    return (None if grad_loss is None else grad_loss * grad,) + (None,) * ctx.num_params


torch.library.register_autograd("cellulus_fast::oce_loss_and_grad", _backward_and_grad,
                                setup_context=_setup_context_and_grad)
