"""Reference mean-shift: dense pairwise distances, every seed against every point (seeds in chunks, so
memory is O(chunk * N))."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..ops.mean_shift import bin_seeds, rank_modes


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a[:, None, :].double() - b[None, :, :].double()) ** 2).sum(-1)


def mean_shift(points: torch.Tensor, bandwidth: float, *, seeds: Optional[torch.Tensor] = None,
               bin_seeding: bool = False, min_bin_freq: int = 1, max_iter: int = 300,
               cluster_all: bool = True, chunk: int = 512) -> Tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`cellulus_fast.ops.mean_shift`, written with dense tensor ops."""
    if seeds is None:
        seeds = bin_seeds(points, bandwidth, min_bin_freq) if bin_seeding else points
    means = seeds.to(points.dtype).clone()
    counts = torch.zeros(len(means), dtype=torch.long)
    active = torch.ones(len(means), dtype=torch.bool)
    iterations = 0
    while active.any():
        for idx in active.nonzero().flatten().split(chunk):
            within = _squared_distances(means[idx], points) <= bandwidth**2
            n = within.sum(1)
            counts[idx] = n
            empty = n == 0
            new = (within.double() @ points.double() / n.clamp(min=1)[:, None]).to(points.dtype)
            moved = ((new.double() - means[idx].double()) ** 2).sum(1)
            means[idx[~empty]] = new[~empty]
            done = empty | (moved <= (1e-3 * bandwidth) ** 2) | (iterations == max_iter)
            active[idx[done]] = False
        iterations += 1
    candidates = rank_modes(means, counts, bandwidth)
    keep = torch.ones(len(candidates), dtype=torch.bool)
    close = _squared_distances(candidates, candidates) <= bandwidth**2
    for i in range(len(candidates)):
        if keep[i]:
            keep[close[i]] = False
            keep[i] = True
    centers = candidates[keep]
    best, labels = torch.cat([_squared_distances(p, centers) for p in points.split(chunk * 16)]).min(1)
    if not cluster_all:
        labels[best > bandwidth**2] = -1
    return labels, centers


def sklearn_mean_shift_labels(embeddings: torch.Tensor, mask: torch.Tensor, bandwidth: float, *,
                              fit_fraction: Optional[float] = 0.1, generator: Optional[torch.Generator] = None,
                              bin_seeding: bool = False, **_: object) -> torch.Tensor:
    """The public CELLULUS pipeline's clustering, with scikit-learn: ``MeanShift(bandwidth,
    cluster_all=False)`` fitted on a random ``fit_fraction`` of the foreground embeddings (each kept with
    that probability, drawn as :func:`cellulus_fast.ops.mean_shift_labels` draws them), then ``predict`` for
    every foreground pixel. Same contract as :func:`cellulus_fast.ops.mean_shift_labels`."""
    import warnings

    from sklearn.cluster import MeanShift

    labels = torch.zeros(mask.shape, dtype=torch.long)
    points = embeddings[:, mask].T.cpu().numpy()
    if len(points) == 0:
        return labels
    fit = points
    if fit_fraction is not None:
        keep = (torch.rand(len(points), generator=generator) < fit_fraction).numpy()
        if keep.any():
            fit = points[keep]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns when binning leaves every point a seed
        model = MeanShift(bandwidth=bandwidth, cluster_all=False, bin_seeding=bin_seeding).fit(fit)
    labels[mask.cpu()] = torch.from_numpy(model.predict(points)).long() + 1
    return labels
