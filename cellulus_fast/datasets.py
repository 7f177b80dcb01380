"""Generated data with exact ground truth, for tests, demos and benchmarks."""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch


def random_disks(shape: Tuple[int, int], num_cells: int, diameter: float, rng: np.random.Generator) -> np.ndarray:
    """A label image of `num_cells` non-overlapping disks (as far as rejection sampling allows) of about
    `diameter` pixels, labels 1..K (K <= num_cells)."""
    from skimage.draw import disk

    labels = np.zeros(shape, dtype=np.int32)
    radius = diameter / 2
    placed = []
    for _ in range(num_cells * 50):
        if len(placed) == num_cells:
            break
        r = radius * rng.uniform(0.8, 1.2)
        c = rng.uniform(r, np.array(shape) - r)
        if all(np.hypot(*(c - pc)) > r + pr + 1 for pc, pr in placed):
            placed.append((c, r))
            labels[disk(tuple(c), r, shape=shape)] = len(placed)
    return labels


def synthetic_embeddings(size: int = 512, num_cells: int = 125, diameter: float = 24.0, noise: float = 1.5,
                         seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Embeddings like a trained CELLULUS network's: the pixels of each cell embed near the cell's centre
    (Gaussian spread `noise`), background pixels at their own coordinates.

    Returns (embeddings (2, size, size) float64, foreground mask (size, size) bool, labels (size, size)).
    """
    rng = np.random.default_rng(seed)
    labels = random_disks((size, size), num_cells, diameter, rng)
    emb = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="ij")).astype(np.float64)
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(1, labels.max() + 2))
    for i in range(labels.max()):
        idx = order[bounds[i]:bounds[i + 1]]
        ys, xs = np.unravel_index(idx, labels.shape)
        centre = np.array([ys.mean(), xs.mean()])
        emb[:, ys, xs] = centre[:, None] + rng.normal(0, noise, size=(2, len(idx)))
    return torch.from_numpy(emb), torch.from_numpy(labels > 0), labels
