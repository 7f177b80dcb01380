"""Mean-shift clustering with scikit-learn's ``MeanShift`` semantics (flat kernel), on CPU or CUDA.

The seeds are shifted by ``torch.ops.cellulus_fast.mean_shift_modes`` (grid neighbour search, one thread per
seed); modes are then ranked and de-duplicated exactly as scikit-learn does, and every point is assigned to
its nearest centre by ``torch.ops.cellulus_fast.nearest_center``.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import numpy as np
import torch

from .._extension import OPS
from ._checks import check_float_tensor, check_int, check_real, count_non_finite


def _check_points(name: str, points: object) -> torch.Tensor:
    """The points as a plain (detached) tensor: clustering is not differentiable, its results are indices
    and positions."""
    check_float_tensor(name, points)
    if points.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (shape only, no values): mean-shift needs the values")
    if points.dim() != 2 or points.shape[1] not in (2, 3):
        raise ValueError(f"{name} must have shape (N, D) with D in {{2, 3}}, got {tuple(points.shape)}")
    points = points.detach()
    count_non_finite(name, points)
    return points


def bin_seeds(points: torch.Tensor, bandwidth: float, min_bin_freq: int = 1) -> torch.Tensor:
    """scikit-learn's ``get_bin_seeds``: the occupied cells of a grid of side ``bandwidth`` (points rounded
    to the nearest multiple), in order of first occurrence, with at least ``min_bin_freq`` points; float32
    like scikit-learn's. Falls back to the points themselves (with a warning) if binning removes nothing."""
    binned = torch.round(points / bandwidth)
    cells, inverse, freq = torch.unique(binned, dim=0, return_inverse=True, return_counts=True)
    first = torch.full((len(cells),), len(points), dtype=torch.long, device=points.device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(points), device=points.device), "amin")
    order = torch.argsort(first)
    cells, freq = cells[order], freq[order]
    cells = cells[freq >= min_bin_freq]
    if len(cells) == len(points):
        warnings.warn(f"Binning data failed with provided bin_size={bandwidth}, using data points as seeds.")
        return points
    return cells.to(torch.float32) * bandwidth


def rank_modes(modes: torch.Tensor, counts: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Converged modes -> candidate centres in scikit-learn's order: seeds that found no point dropped,
    bit-identical modes merged (the last seed's count wins, as in a dict), sorted by decreasing
    (count, coordinates)."""
    kept = counts > 0
    if not kept.any():
        raise ValueError(f"No point was within bandwidth={bandwidth} of any seed. Try a different seeding "
                         "strategy or increase the bandwidth.")
    m = modes[kept].cpu().numpy()
    c = counts[kept].cpu().numpy()
    unique, last = np.unique(m[::-1], axis=0, return_index=True)
    count = c[::-1][last]
    order = np.lexsort(tuple(-unique[:, d] for d in reversed(range(m.shape[1]))) + (-count,))
    return torch.from_numpy(np.ascontiguousarray(unique[order])).to(modes.device)


def mean_shift(points: torch.Tensor, bandwidth: float, *, seeds: Optional[torch.Tensor] = None,
               bin_seeding: bool = False, min_bin_freq: int = 1, max_iter: int = 300,
               cluster_all: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Flat-kernel mean-shift, the same clusters as ``sklearn.cluster.MeanShift`` with these parameters.

    Each seed (by default every point; with ``bin_seeding`` the occupied cells of a grid of side
    ``bandwidth`` holding >= ``min_bin_freq`` points) moves to the mean of the points within distance
    ``<= bandwidth`` until it moves by ``<= 1e-3 * bandwidth`` or ``max_iter`` iterations are done. Modes are
    ranked by the number of points around them (ties: larger coordinates first) and a mode within
    ``bandwidth`` of a higher-ranked kept one is dropped. Every point gets the index of its nearest centre;
    with ``cluster_all=False`` points farther than ``bandwidth`` from every centre get -1.

    Differences from scikit-learn: neighbour sums are accumulated in float64 in grid order (so modes may
    differ in the last bits); ``bandwidth`` is required (no ``estimate_bandwidth``); N = 0 returns empty
    results instead of raising.

    Args:
        points: (N, D) float32/float64 tensor, D in {2, 3}, on CPU or CUDA, finite (a ValueError says how many
            values are not); a tensor that requires grad is detached (clustering is not differentiable).
        bandwidth: radius of the flat kernel, > 0.
        seeds: optional (S, D) starting positions.
    Returns:
        labels (N,) int64 and centers (K, D) in the dtype and on the device of ``points``.
    """
    points = _check_points("points", points)
    bandwidth = check_real("bandwidth", bandwidth, low=0.0, low_open=True)
    min_bin_freq = check_int("min_bin_freq", min_bin_freq, low=1)
    max_iter = check_int("max_iter", max_iter, low=0)
    dims = points.shape[1]
    if seeds is not None:
        seeds = _check_points("seeds", seeds)
        if seeds.shape[1] != dims:
            raise ValueError(f"seeds must have D = {dims} columns like points, got {seeds.shape[1]}")
    if len(points) == 0:
        return points.new_empty((0,), dtype=torch.long), points.new_empty((0, dims))
    if seeds is None:
        seeds = bin_seeds(points, bandwidth, min_bin_freq) if bin_seeding else points
    points = points.contiguous()
    modes, counts, _ = OPS.mean_shift_modes(points, seeds.to(points), bandwidth, max_iter)
    candidates = rank_modes(modes, counts, bandwidth)
    centers = candidates[OPS.mean_shift_dedup(candidates, bandwidth)]
    labels = OPS.nearest_center(points, centers, bandwidth, cluster_all)
    return labels, centers


def mean_shift_labels(embeddings: torch.Tensor, mask: torch.Tensor, bandwidth: float, *,
                      fit_fraction: Optional[float] = None, generator: Optional[torch.Generator] = None,
                      **options) -> torch.Tensor:
    """Instance labels of an embedding image by mean-shift over its foreground pixels.

    Args:
        embeddings: (D, *spatial) absolute embeddings (pixel coordinate + predicted offset, channel d along
            spatial axis d).
        mask: (*spatial) bool foreground.
        bandwidth: mean-shift bandwidth in pixels.
        fit_fraction: if given, the modes are found on a random fraction of the foreground pixels (each kept
            with this probability, as the public CELLULUS pipeline does with 0.1) and every foreground pixel
            is then assigned to its nearest centre.
        generator: random generator for the subsample.
        **options: passed to :func:`mean_shift` (seeds, bin_seeding, min_bin_freq, max_iter, cluster_all).
    Returns:
        (*spatial) int64 labels: 0 background (and, with cluster_all=False, unassigned pixels), 1..K the
        clusters in scikit-learn's order (more populated modes first).
    """
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError("mask must be a bool torch.Tensor")
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != mask.dim() + 1 \
            or embeddings.shape[1:] != mask.shape or embeddings.shape[0] != mask.dim():
        raise ValueError(f"embeddings must have shape (D, *spatial) with D = mask.dim() and spatial = mask.shape; "
                         f"got embeddings {tuple(getattr(embeddings, 'shape', ()))}, mask {tuple(mask.shape)}")
    check_float_tensor("embeddings", embeddings)
    if embeddings.device.type == "meta":
        raise ValueError("embeddings is a meta tensor (shape only, no values): mean-shift needs the values")
    labels = torch.zeros(mask.shape, dtype=torch.long, device=embeddings.device)
    points = embeddings.detach()[:, mask].T.contiguous()
    if len(points) == 0:
        return labels
    # Every pixel is labelled, not only the fitted subsample: all must be finite.
    count_non_finite("embeddings (foreground pixels)", points)
    fit = points
    if fit_fraction is not None:
        fit_fraction = check_real("fit_fraction", fit_fraction, low=0.0, high=1.0, low_open=True)
        keep = torch.rand(len(points), generator=generator, device="cpu") < fit_fraction
        if keep.any():
            fit = points[keep.to(points.device)]
    cluster_all = options.pop("cluster_all", True)
    _, centers = mean_shift(fit, bandwidth, cluster_all=cluster_all, **options)
    labels[mask] = OPS.nearest_center(points, centers, bandwidth, cluster_all) + 1
    return labels


# --- fake kernels for torch.compile / meta tensors --------------------------------------------------------

@torch.library.register_fake("cellulus_fast::mean_shift_modes")
def _modes_fake(points, seeds, bandwidth, max_iter):
    count = seeds.new_empty((seeds.shape[0],), dtype=torch.long)
    return seeds.new_empty(seeds.shape, dtype=points.dtype), count, torch.empty_like(count)


@torch.library.register_fake("cellulus_fast::mean_shift_dedup")
def _dedup_fake(centers, bandwidth):
    return centers.new_empty((centers.shape[0],), dtype=torch.bool)


@torch.library.register_fake("cellulus_fast::nearest_center")
def _nearest_fake(points, centers, bandwidth, cluster_all):
    return points.new_empty((points.shape[0],), dtype=torch.long)
