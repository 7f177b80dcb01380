"""Reference OCE loss: explicit pair lists and plain tensor ops with autograd (what the fused op avoids)."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from ..ops.oce_loss import num_anchors


def lattice_disk(kappa: float, dims: int) -> torch.Tensor:
    """All integer offsets o with 0 < ||o||_2 <= kappa, shape (M, dims), int64."""
    m = math.floor(kappa)
    axes = [torch.arange(-m, m + 1)] * dims
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, dims)
    sq = (grid**2).sum(dim=1)
    return grid[(sq > 0) & (sq.double() <= kappa * kappa)]


def sample_pairs(shape: Tuple[int, ...], *, density: float = 0.2, kappa: float = 10.0, num_references: int = 1,
                 generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Same distribution as the fused sampler, drawn with torch's generator: (B, A, D) anchors and
    (B, A, R, D) references, int64 coordinates."""
    batch, dims, spatial = shape[0], len(shape) - 2, shape[2:]
    count, margin = num_anchors(spatial, density, kappa), math.floor(kappa)
    anchors = torch.stack([torch.randint(margin, size - margin, (batch, count), generator=generator)
                           for size in spatial], dim=-1)
    disk = lattice_disk(kappa, dims)
    pick = torch.randint(0, len(disk), (batch, count, num_references), generator=generator)
    return anchors, anchors[:, :, None, :] + disk[pick]


def _gather(offsets: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """offsets (B, D, *spatial), coords (B, ..., D) -> offset vectors (B, ..., D)."""
    batch, dims = offsets.shape[:2]
    flat = offsets.reshape(batch, dims, -1)
    strides = torch.tensor(offsets.stride()[2:], device=coords.device) // offsets.stride()[-1]
    index = (coords * strides).sum(-1).reshape(batch, 1, -1).expand(batch, dims, -1)
    return flat.gather(2, index).transpose(1, 2).reshape(*coords.shape)


def oce_loss(offsets: torch.Tensor, anchors: torch.Tensor, references: torch.Tensor, *, tau: float = 10.0,
             lambda_reg: float = 1e-5, nonlinearity: str = "sigmoid", detach_reference: bool = False,
             reduction: str = "sum") -> torch.Tensor:
    """The OCE loss of :func:`cellulus_fast.ops.oce_loss` on explicit pairs (anchors (B, A, D), references
    (B, A, R, D)): embeddings e = coordinate + offset, per pair sigma(||e_i - e_j||^2) + lambda_reg ||r_i||."""
    offsets = offsets.contiguous()
    r_i = _gather(offsets, anchors)[:, :, None, :]                     # (B, A, 1, D)
    r_j = _gather(offsets, references)                                  # (B, A, R, D)
    if detach_reference:
        r_j = r_j.detach()
    e_i = anchors[:, :, None, :].to(offsets.dtype) + r_i
    e_j = references.to(offsets.dtype) + r_j
    sq = ((e_i - e_j) ** 2).sum(-1)                                     # (B, A, R)
    if nonlinearity == "sigmoid":
        pair = torch.sigmoid(sq / tau)
    elif nonlinearity == "gaussian":
        pair = -torch.expm1(-sq / tau)
    else:
        raise ValueError(f"nonlinearity must be 'sigmoid' or 'gaussian', got {nonlinearity!r}")
    per_pair = pair + lambda_reg * torch.linalg.vector_norm(r_i, dim=-1)
    return per_pair.mean() if reduction == "mean" else per_pair.sum()
