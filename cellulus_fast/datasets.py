"""Generated data with exact ground truth, for tests, demos and benchmarks."""
from __future__ import annotations

from typing import List, Tuple, Union

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


def _place_centres(shape: Tuple[int, int], num_cells: int, min_dist: float, margin: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Up to `num_cells` points at least `min_dist` apart, `margin` pixels inside the image (rejection
    sampling with a bounded number of tries, so very dense requests yield fewer points)."""
    lo = np.array([margin, margin])
    hi = np.maximum(np.array(shape, dtype=np.float64) - margin, lo + 1)
    centres = np.empty((num_cells, 2))
    n = 0
    for _ in range(num_cells * 50):
        if n == num_cells:
            break
        c = rng.uniform(lo, hi)
        if n == 0 or np.min(np.sum((centres[:n] - c) ** 2, axis=1)) >= min_dist ** 2:
            centres[n] = c
            n += 1
    return centres[:n]


def _paint_cells(shape: Tuple[int, int], num_cells: int, diameter: float,
                 rng: np.random.Generator) -> np.ndarray:
    """A label image of touching / overlapping ellipses, labels 1..K consecutive.

    Later ellipses occlude earlier ones; a cell left in pieces keeps only its largest piece, and a cell
    with less than half of its ellipse visible is dropped, so every label is one plausible cell."""
    from scipy import ndimage as ndi
    from skimage.draw import ellipse

    r = diameter / 2
    # centres closer than a diameter => neighbouring ellipses touch or overlap
    centres = _place_centres(shape, num_cells, 0.75 * diameter, 0.25 * diameter, rng)
    labels = np.zeros(shape, dtype=np.int32)
    painted = np.zeros(len(centres) + 1, dtype=np.int64)
    for k, c in enumerate(centres, start=1):
        major = r * rng.uniform(0.85, 1.25)
        minor = major * rng.uniform(0.6, 1.0)
        rr, cc = ellipse(c[0], c[1], major, minor, shape=shape, rotation=rng.uniform(-np.pi, np.pi))
        labels[rr, cc] = k
        painted[k] = len(rr)

    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        mask = labels[sl] == k
        pieces, n = ndi.label(mask)
        if n > 1:
            sizes = np.bincount(pieces.ravel())[1:]
            mask = pieces == 1 + np.argmax(sizes)
            labels[sl][(labels[sl] == k) & ~mask] = 0
        if mask.sum() < 0.5 * painted[k]:
            labels[sl][labels[sl] == k] = 0

    present = np.unique(labels)
    present = present[present > 0]
    lut = np.zeros(len(centres) + 1, dtype=np.int32)
    lut[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    return lut[labels]


def synthetic(num_images: int = 4, size: Union[int, Tuple[int, int]] = 256, num_cells: int = 40,
              diameter: float = 24.0, seed: int = 0) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """Reproducible fluorescence-like cell images with exact instance labels.

    Each image holds about `num_cells` ellipses (major axis about `diameter`, random aspect ratio and
    orientation) whose neighbours may touch and overlap (later cells occlude earlier ones). The intensity
    image is rendered from the final label image, so the labels are exact: per-cell brightness, dimmer
    rims, textured interiors with bright granules, then optical blur (Gaussian), a smooth background
    gradient, Poisson (shot) and Gaussian (read) noise. Values are roughly in [0, 1.5], not normalised.

    Returns (images, labels): lists of `num_images` float32 (H, W) arrays and int32 (H, W) arrays with
    labels 1..K consecutive (K <= num_cells; fewer when the cells do not fit), 0 = background.
    """
    from scipy import ndimage as ndi

    shape = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    rng = np.random.default_rng(seed)
    images, all_labels = [], []
    for _ in range(num_images):
        labels = _paint_cells(shape, num_cells, diameter, rng)
        k = int(labels.max())
        fg = labels > 0

        # per-cell brightness, dimmer towards the rim so that touching cells stay distinguishable
        brightness = np.concatenate([[0.0], rng.uniform(0.45, 1.0, size=k)])
        boundary = fg & (ndi.minimum_filter(labels, size=3) != ndi.maximum_filter(labels, size=3))
        rim = ndi.distance_transform_edt(~boundary)
        cells = brightness[labels] * (1.0 - 0.35 * np.exp(-rim / 2.0))

        # textured interior: smooth multiplicative noise plus small bright granules, inside cells only
        texture = ndi.gaussian_filter(rng.normal(size=shape), 2.0)
        texture *= 0.15 / (texture.std() + 1e-12)
        granules = np.zeros(shape)
        n_granules = rng.poisson(fg.sum() / 40.0)
        gy, gx = rng.integers(0, shape[0], n_granules), rng.integers(0, shape[1], n_granules)
        granules[gy, gx] = rng.uniform(2.0, 6.0, n_granules)
        granules = ndi.gaussian_filter(granules, 0.8)
        cells = fg * (cells * (1.0 + texture) + granules * brightness[labels])

        # optics, then a smooth illumination gradient behind the cells
        image = ndi.gaussian_filter(cells, rng.uniform(0.8, 1.5))
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.meshgrid(np.linspace(-0.5, 0.5, shape[0]), np.linspace(-0.5, 0.5, shape[1]), indexing="ij")
        image += rng.uniform(0.08, 0.15) + rng.uniform(0.03, 0.1) * (np.cos(angle) * yy + np.sin(angle) * xx)

        # shot noise at a random photon budget, then camera read noise
        photons = rng.uniform(100, 300)
        image = rng.poisson(np.clip(image, 0, None) * photons) / photons
        image += rng.normal(0, 0.02, size=shape)

        images.append(image.astype(np.float32))
        all_labels.append(labels)
    return images, all_labels
