"""Loads the compiled extension, which registers the ``torch.ops.cellulus_fast`` operators."""
import torch

try:
    from . import _C  # noqa: F401  (import for its registrations)
except ImportError as error:  # pragma: no cover - depends on the install
    raise ImportError(
        "cellulus_fast._C is not built. Install with `pip install --no-build-isolation .` "
        "(see README.md) in an environment that already has torch."
    ) from error

OPS = torch.ops.cellulus_fast


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether operator ``cellulus_fast::<op>`` has a kernel for ``dispatch_key`` (e.g. "CPU", "CUDA")."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"cellulus_fast::{op}", dispatch_key)


def cuda_built() -> bool:
    """Whether the extension was built with its CUDA kernels."""
    return has_kernel("oce_loss", "CUDA")
