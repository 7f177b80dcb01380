"""Generated data with exact ground truth, for tests, demos and benchmarks."""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

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


# ----------------------------------------------------------------------------------------------------
# Data zoo: realistic synthetic microscopy conditions with exact instance labels
# ----------------------------------------------------------------------------------------------------
#
# Every condition follows the same recipe: (1) lay out objects as a label image (exact ground truth),
# (2) render the noiseless photon image FROM that label image (per-object brightness, thickness profile,
# texture, stain pattern), (3) image it: PSF blur, uneven illumination, background, (4) a camera model:
# photons -> Poisson shot noise -> Gaussian read noise (electrons) -> gain (ADU per electron) -> +offset
# -> round, clip to uint16. Nothing is tuned to any segmentation method.

CONDITIONS: Tuple[str, ...] = ("fluo_nuclei", "large_cells", "membrane", "dense", "mixed_sizes", "low_snr",
                               "debris")

CAMERA_OFFSET = 100.0  # ADU added by the camera (dark level), as in real 16-bit sCMOS / CCD images


@dataclass(frozen=True)
class ZooData:
    """One condition of the data zoo.

    name: the condition (one of CONDITIONS).
    images: uint16 (H, W) camera images (photon counts times gain plus a camera offset of 100 ADU).
    labels: int32 (H, W) instance labels, 0 = background, objects 1..K consecutive, each object one
        4-connected component; objects cut by the image border are kept.
    diameter: the condition's nominal median object diameter in pixels (what a user would say their
        objects measure).
    """

    name: str
    images: List[np.ndarray]
    labels: List[np.ndarray]
    diameter: float


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _check_args(num_images: object, size: object, seed: object) -> Tuple[int, int]:
    """Validates the common arguments; returns the image shape (H, W)."""
    if not _is_int(num_images) or num_images < 1:
        raise ValueError(f"num_images must be an int >= 1, got {num_images!r}")
    if _is_int(size):
        shape = (int(size), int(size))
    elif (isinstance(size, (tuple, list)) and len(size) == 2 and all(_is_int(s) for s in size)):
        shape = (int(size[0]), int(size[1]))
    else:
        raise ValueError(f"size must be an int or a pair of ints (H, W), got {size!r}")
    if min(shape) < 64:
        raise ValueError(f"size must be >= 64 pixels in each dimension, got {size!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return shape


# ---- layout: object shapes and painting ------------------------------------------------------------

def _blob(centre: Tuple[float, float], radius: float, aspect: float, angle: float, wobble: float,
          rng: np.random.Generator, harmonics: int = 4) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels of a blobby ellipse: an ellipse of mean radius `radius` (area pi radius^2 before the
    wobble), axis ratio `aspect` >= 1, rotated by `angle`, whose outline is modulated by random Fourier
    harmonics 2..`harmonics` of total relative amplitude about `wobble`.

    Returns (rr, cc, u): pixel rows and columns (may lie outside any image; painting clips them) and the
    normalised radius u in [0, 1] of each pixel (0 at the centre, 1 on the outline)."""
    a, b = radius * np.sqrt(aspect), radius / np.sqrt(aspect)
    ks = np.arange(2, harmonics + 1)
    amps = wobble * rng.normal(size=len(ks)) / np.sqrt(ks - 1)
    phases = rng.uniform(0, 2 * np.pi, size=len(ks))
    ext = a * (1 + np.abs(amps).sum()) + 1
    y0, x0 = int(np.floor(centre[0] - ext)), int(np.floor(centre[1] - ext))
    y1, x1 = int(np.ceil(centre[0] + ext)) + 1, int(np.ceil(centre[1] + ext)) + 1
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dy, dx = yy - centre[0], xx - centre[1]
    p = (dy * np.cos(angle) + dx * np.sin(angle)) / a
    q = (-dy * np.sin(angle) + dx * np.cos(angle)) / b
    theta = np.arctan2(q, p)
    outline = 1.0 + (amps[:, None, None] * np.cos(ks[:, None, None] * theta + phases[:, None, None])).sum(0)
    u = np.hypot(p, q) / np.maximum(outline, 0.3)
    inside = u <= 1.0
    return yy[inside], xx[inside], u[inside]


PINHOLE = 8  # packed conditions: background pockets enclosed by objects and smaller than this are filled


def _paint_objects(shape: Tuple[int, int], objects: Sequence[Tuple[np.ndarray, ...]], compete: bool = False,
                   min_pixels: int = 8, min_visible: float = 0.4) -> Tuple[np.ndarray, np.ndarray]:
    """Paints objects into a label image; this is the step that makes the labels exact.

    objects: (rr, cc) or (rr, cc, u) pixel coordinates per object, in painting order; pixels outside the
    image are clipped (an object across the border is kept, cut by it). With compete=False later objects
    occlude earlier ones (a 2-D projection in which the upper object wins); with compete=True a pixel
    claimed by several objects goes to the one with the smallest normalised radius u (objects pressed
    against each other, as in packed tissue, meet along a flattened contact line).

    Afterwards an object left in pieces keeps only its largest 4-connected piece, and an object with fewer
    than `min_pixels` pixels or less than `min_visible` of its in-image painted pixels left is dropped.
    With compete=False the pixels so removed become background. With compete=True (packed tissue) they
    stay tissue: each goes to the runner-up, the kept object with the next smallest u that also covers
    it, where that joins the runner-up's piece; then every pocket of background enclosed by objects that
    consists only of painted pixels, or that is smaller than PINHOLE pixels (such as the 1-px seams where
    two outlines nearly meet), goes to the neighbouring objects (_fill_pockets), so that the tissue has no
    pinholes. Returns (labels, index): int32 labels 1..K consecutive, each one 4-connected component,
    label k being objects[index[k - 1]]."""
    h, w = shape
    n = len(objects)
    labels = np.zeros(shape, dtype=np.int32)
    best = np.full(shape, np.inf, dtype=np.float64) if compete else None
    painted = np.zeros(n + 1, dtype=np.int64)
    clipped = []
    for i, obj in enumerate(objects, start=1):
        rr, cc = np.asarray(obj[0]), np.asarray(obj[1])
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        rr, cc = rr[ok], cc[ok]
        painted[i] = len(rr)
        if compete:
            u = np.asarray(obj[2])[ok]
            clipped.append((rr, cc, u))
            win = u <= best[rr, cc]
            rr, cc = rr[win], cc[win]
            best[rr, cc] = u[win]
        labels[rr, cc] = i
    if not compete:
        return _clean_labels(labels, n, painted, min_pixels, min_visible)
    winner = labels.copy()
    labels, index = _clean_labels(labels, n, painted, min_pixels, min_visible)
    claimed = best < np.inf
    dropped = claimed & (labels == 0)
    if dropped.any():
        # the runner-up of each dropped pixel among the kept objects (not the one that lost it)
        best2 = np.full(shape, np.inf, dtype=np.float64)
        runner = np.zeros(shape, dtype=np.int32)
        for k, i in enumerate(index + 1, start=1):
            rr, cc, u = clipped[i - 1]
            m = dropped[rr, cc] & (winner[rr, cc] != i)
            rr, cc, u = rr[m], cc[m], u[m]
            win = u <= best2[rr, cc]
            rr, cc = rr[win], cc[win]
            best2[rr, cc] = u[win]
            runner[rr, cc] = k
        labels = _attach(labels, np.where(dropped, runner, 0))
    return _fill_pockets(labels, PINHOLE, claimed=claimed), index


def _attach(labels: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """Adds the pixels of `extra` (labels, on background of `labels`) that are 4-connected through pixels
    of the same label to that label's pixels in `labels`; the others are left background."""
    from skimage.measure import label as connected

    out = np.where(labels > 0, labels, extra)
    pieces = connected(out, background=0, connectivity=1)
    anchored = np.zeros(int(pieces.max()) + 1, dtype=bool)
    anchored[pieces[labels > 0]] = True
    anchored[0] = False
    return np.where(anchored[pieces], out, 0).astype(labels.dtype, copy=False)


def _fill_pockets(labels: np.ndarray, max_size: int, claimed: Optional[np.ndarray] = None) -> np.ndarray:
    """Gives enclosed background pockets to the neighbouring objects (packed tissue has no pinholes).

    A pocket is a 4-connected background component not 4-connected through background to the image
    border. Pockets with fewer than `max_size` pixels, and pockets made only of `claimed` pixels (tissue:
    e.g. the dropped pieces of an object), are filled by growing the surrounding objects into them one
    pixel layer at a time, each pixel taking the most frequent label among its 4 neighbours that are
    already labelled (ties: up, down, left, right). A pixel is only ever added next to a pixel of its
    label, so every label stays one 4-connected component. Deterministic; returns a new array."""
    from scipy import ndimage as ndi

    bg = labels == 0
    pockets, n = ndi.label(ndi.binary_fill_holes(~bg) & bg)
    if n == 0:
        return labels
    fill = np.bincount(pockets.ravel(), minlength=n + 1) < max_size
    if claimed is not None:
        fill |= np.bincount(pockets.ravel(), weights=~claimed.ravel(), minlength=n + 1) == 0
    fill[0] = False
    todo = fill[pockets]
    if not todo.any():
        return labels
    labels = labels.copy()
    h, w = labels.shape
    ys, xs = np.nonzero(todo)
    while len(ys):
        nb = np.stack([labels[np.maximum(ys - 1, 0), xs] * (ys > 0),
                       labels[np.minimum(ys + 1, h - 1), xs] * (ys < h - 1),
                       labels[ys, np.maximum(xs - 1, 0)] * (xs > 0),
                       labels[ys, np.minimum(xs + 1, w - 1)] * (xs < w - 1)])
        votes = ((nb[:, None] == nb[None]) & (nb[None] > 0)).sum(axis=1)  # votes[j]: neighbours equal to nb[j]
        pick = nb[np.argmax(votes, axis=0), np.arange(len(ys))]
        now = pick > 0  # pixels next to an object: all of a pocket's rim, so every pass makes progress
        labels[ys[now], xs[now]] = pick[now]
        ys, xs = ys[~now], xs[~now]
    return labels


def _clean_labels(labels: np.ndarray, n: int, painted: Optional[np.ndarray] = None, min_pixels: int = 8,
                  min_visible: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """Keeps each label's largest 4-connected piece, drops labels below `min_pixels` (or below
    `min_visible` times painted[k]), relabels 1..K consecutively. Returns (labels, index of kept ids - 1)."""
    from scipy import ndimage as ndi

    for k, sl in enumerate(ndi.find_objects(labels, max_label=n), start=1):
        if sl is None:
            continue
        view = labels[sl]
        mask = view == k
        pieces, num = ndi.label(mask)
        if num > 1:
            sizes = np.bincount(pieces.ravel())[1:]
            keep = pieces == 1 + int(np.argmax(sizes))
            view[mask & ~keep] = 0
            mask = keep
        area = int(mask.sum())
        if area < min_pixels or (painted is not None and area < min_visible * painted[k]):
            view[mask] = 0
    present = np.unique(labels)
    present = present[present > 0]
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    return lut[labels], present - 1


def _place_blobs(shape: Tuple[int, int], radii: np.ndarray, rng: np.random.Generator, cluster_prob: float,
                 min_sep: float = 0.8, spill: float = 0.3,
                 tries: int = 30) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequential placement of objects of the given radii. With probability `cluster_prob` an object is put
    against a random earlier one (centre distance 0.82-1.0 times the sum of radii: touching clusters),
    otherwise uniformly, centres up to `spill` radii outside the image (so objects get cut by the border).
    No two centres closer than `min_sep` times the sum of their radii. Returns (centres, radii, which) of
    the objects that found a place, `which` indexing `radii`."""
    h, w = shape
    centres = np.empty((len(radii), 2))
    rs = np.empty(len(radii))
    which = np.empty(len(radii), dtype=np.int64)
    n = 0
    for i, r in enumerate(radii):
        lo, hi = -spill * r, np.array([h - 1 + spill * r, w - 1 + spill * r])
        for _ in range(tries):
            if n and rng.random() < cluster_prob:
                j = rng.integers(n)
                ang = rng.uniform(0, 2 * np.pi)
                c = centres[j] + (r + rs[j]) * rng.uniform(0.82, 1.0) * np.array([np.cos(ang), np.sin(ang)])
                if np.any(c < lo) or np.any(c > hi):
                    continue
            else:
                c = rng.uniform(lo, hi)
            if n == 0 or np.all(np.hypot(*(centres[:n] - c).T) >= min_sep * (r + rs[:n])):
                centres[n], rs[n], which[n] = c, r, i
                n += 1
                break
    return centres[:n], rs[:n], which[:n]


def _draw_radii(rng: np.random.Generator, target_area: float, draw) -> np.ndarray:
    """Draws radii from `draw()` until their disks' total area reaches `target_area`."""
    radii, total = [], 0.0
    while total < target_area:
        r = float(draw())
        radii.append(r)
        total += np.pi * r * r
    return np.array(radii)


# ---- rendering helpers ------------------------------------------------------------------------------

def _smooth_field(shape: Tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Random smooth field, zero mean and unit std, correlation length about `scale` px (Gaussian-filtered
    white noise for small scales; a sum of Gaussian bumps on a `scale`-spaced grid otherwise)."""
    from scipy import ndimage as ndi

    if scale <= 3:
        f = ndi.gaussian_filter(rng.normal(size=shape), scale)
    else:
        def basis(n: int) -> np.ndarray:
            nodes = (np.arange(int(np.ceil(n / scale)) + 5) - 2) * scale
            return np.exp(-0.5 * ((np.arange(n)[:, None] - nodes[None, :]) / scale) ** 2)

        ay, ax = basis(shape[0]), basis(shape[1])
        f = ay @ rng.normal(size=(ay.shape[1], ax.shape[1])) @ ax.T
    f = f - f.mean()
    return f / (f.std() + 1e-12)


def _inner_distance(labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Distance of each object pixel to its object's outline (1 on the outline; the image border does not
    count as outline, the object continues beyond it) and that distance normalised by the object's
    maximum (0 on background). Returns (t, s)."""
    from scipy import ndimage as ndi

    edge = np.zeros(labels.shape, dtype=bool)
    dv = labels[1:] != labels[:-1]
    dh = labels[:, 1:] != labels[:, :-1]
    edge[1:] |= dv
    edge[:-1] |= dv
    edge[:, 1:] |= dh
    edge[:, :-1] |= dh
    fg = labels > 0
    t = (ndi.distance_transform_edt(fg & ~edge) + 1.0) * fg
    k = int(labels.max())
    tmax = np.concatenate([[1.0], np.asarray(ndi.maximum(t, labels, index=np.arange(1, k + 1)), dtype=float)])
    return t, t / tmax[labels]


def _illumination(shape: Tuple[int, int], rng: np.random.Generator, strength: float = 0.3) -> np.ndarray:
    """Uneven excitation: off-centre vignetting, a linear gradient and slow ripples; max 1."""
    h, w = shape
    m = max(h, w)
    yy, xx = np.meshgrid((np.arange(h) - h / 2) / m, (np.arange(w) - w / 2) / m, indexing="ij")
    cy, cx = rng.uniform(-0.3, 0.3, size=2)
    field = 1.0 - strength * rng.uniform(0.5, 1.0) * ((yy - cy) ** 2 + (xx - cx) ** 2) / 0.5
    ang = rng.uniform(0, 2 * np.pi)
    field *= 1.0 + strength * rng.uniform(0.2, 0.6) * (np.cos(ang) * yy + np.sin(ang) * xx)
    field *= 1.0 + 0.04 * _smooth_field(shape, m / 4, rng)
    field = np.clip(field, 0.25, None)
    return field / field.max()


def _psf(image: np.ndarray, sigma: float, halo: float = 0.1) -> np.ndarray:
    """Optical blur: a Gaussian core of `sigma` px plus a faint wide halo (fraction `halo`, 5 sigma wide)
    standing in for out-of-focus light of a widefield microscope."""
    from scipy import ndimage as ndi

    out = ndi.gaussian_filter(image, sigma)
    if halo > 0:
        out = (1 - halo) * out + halo * ndi.gaussian_filter(image, 5 * sigma, truncate=3.0)
    return out


def _camera(photons: np.ndarray, rng: np.random.Generator, gain: float, read_noise: float,
            offset: float = CAMERA_OFFSET) -> np.ndarray:
    """photons (expected, per pixel) -> Poisson shot noise -> + Gaussian read noise (electrons) -> times gain
    (ADU per electron) -> + camera offset -> round and clip to uint16."""
    electrons = rng.poisson(np.clip(photons, 0, None)).astype(np.float64)
    electrons += rng.normal(0.0, read_noise, size=photons.shape)
    return np.clip(np.round(electrons * gain + offset), 0, 65535).astype(np.uint16)


def _random_camera(rng: np.random.Generator) -> Tuple[float, float]:
    """(gain ADU/e-, read noise e-) of a typical scientific camera."""
    return rng.uniform(0.5, 2.5), rng.uniform(1.2, 3.0)


def _background(shape: Tuple[int, int], rng: np.random.Generator, level: float, variation: float) -> np.ndarray:
    """Additive background in photons: autofluorescence / out-of-focus haze, `level` on average with slow
    relative variations of about `variation`."""
    field = 1.0 + variation * _smooth_field(shape, max(shape) / rng.uniform(3, 8), rng)
    return level * np.clip(field, 0.2, None)


def _image(signal: np.ndarray, rng: np.random.Generator, peak: float, background: float, sigma: float,
           halo: float = 0.1, bg_variation: float = 0.15, illum_strength: float = 0.3) -> np.ndarray:
    """Images a noiseless relative signal (about 1 for a typical object): PSF, illumination, background,
    camera. `peak`: photons per pixel for signal 1 at full illumination; `background`: photons per pixel."""
    shape = signal.shape
    illum = _illumination(shape, rng, illum_strength)
    photons = illum * (_background(shape, rng, background, bg_variation) + peak * _psf(signal, sigma, halo))
    return _camera(photons, rng, *_random_camera(rng))


def _object_centres(labels: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    k = int(labels.max())
    return np.array(ndi.center_of_mass(np.ones(labels.shape), labels, np.arange(1, k + 1))).reshape(-1, 2)


def _nuclear_signal(labels: np.ndarray, brightness: np.ndarray, rng: np.random.Generator,
                    texture: float = 0.12, spots: float = 0.35) -> np.ndarray:
    """Relative fluorescence of DNA-stained nuclei rendered from the labels: per-nucleus brightness
    (brightness[k] for label k, brightness[0] = 0) times a thickness profile (a flattened ellipsoid:
    brighter centre, soft rim) times a mild chromatin texture (fine mottling plus sparse bright
    chromocentres)."""
    from scipy import ndimage as ndi

    _, s = _inner_distance(labels)
    dome = 0.35 + 0.65 * np.sqrt(np.clip(s * (2 - s), 0, 1))
    fg = labels > 0
    tex = 1.0 + texture * _smooth_field(labels.shape, 1.2, rng)
    dots = (rng.random(labels.shape) < 1 / 80) & fg
    tex += spots * ndi.gaussian_filter(dots * rng.uniform(0.5, 1.5, size=labels.shape), 1.0) * 2 * np.pi
    return brightness[labels] * dome * np.clip(tex, 0.2, None) * fg


def _nuclei_layout(shape: Tuple[int, int], rng: np.random.Generator, coverage: float, median_d: float,
                   sd_log: float, d_range: Tuple[float, float], cluster_prob: float,
                   mitotic: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """Blobby elliptical nuclei covering about `coverage` of the image. Diameters log-normal around
    `median_d` clipped to `d_range`; a fraction `mitotic` are small condensed (bright) nuclei.
    Returns (labels, is_mitotic per label)."""
    def draw():
        return np.clip(median_d * np.exp(sd_log * rng.normal()), *d_range) / 2

    radii = _draw_radii(rng, 1.15 * coverage * shape[0] * shape[1], draw)
    mit = rng.random(len(radii)) < mitotic
    radii = np.where(mit, np.maximum(radii * 0.7, d_range[0] / 2), radii)
    centres, radii, which = _place_blobs(shape, radii, rng, cluster_prob)
    objects = []
    for c, r in zip(centres, radii):
        aspect = 1.0 + min(abs(rng.normal(0, 0.25)), 0.9)
        objects.append(_blob(c, r, aspect, rng.uniform(0, np.pi), 0.05, rng))
    labels, index = _paint_objects(shape, objects)
    return labels, mit[which][index]


# ---- the conditions -----------------------------------------------------------------------------------

def _render_fluo_nuclei(shape: Tuple[int, int], rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    labels, mit = _nuclei_layout(shape, rng, rng.uniform(0.13, 0.22), 22.0, 0.22, (12.0, 40.0), 0.3,
                                 mitotic=0.05)
    k = int(labels.max())
    b = rng.lognormal(0.0, 0.5, size=k)
    dim = rng.random(k) < 0.1
    if k >= 3:  # at least one poorly stained nucleus barely above background per image
        dim[rng.integers(k)] = True
    b = np.where(dim, rng.uniform(0.03, 0.08, size=k), b)
    b = np.where(mit & ~dim, b * rng.uniform(2.0, 3.5, size=k), b)
    signal = _nuclear_signal(labels, np.concatenate([[0.0], b]), rng)
    return _image(signal, rng, peak=rng.uniform(400, 1200), background=rng.uniform(30, 80),
                  sigma=rng.uniform(1.0, 1.8)), labels


def _render_large_cells(shape: Tuple[int, int], rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage as ndi

    def draw():
        return np.clip(58.0 * np.exp(0.15 * rng.normal()), 40.0, 80.0) / 2

    radii = _draw_radii(rng, 1.15 * rng.uniform(0.3, 0.45) * shape[0] * shape[1], draw)
    centres, radii, _ = _place_blobs(shape, radii, rng, cluster_prob=0.3, min_sep=0.75)
    objects = [_blob(c, r, 1.0 + min(abs(rng.normal(0, 0.4)), 1.0), rng.uniform(0, np.pi),
                     rng.uniform(0.06, 0.14), rng, harmonics=5) for c, r in zip(centres, radii)]
    labels, _ = _paint_objects(shape, objects)
    k = int(labels.max())
    fg = labels > 0
    _, s = _inner_distance(labels)
    b = np.concatenate([[0.0], rng.lognormal(0.0, 0.4, size=k)])
    # cytoplasm thick around the nucleus, thin lamella at the edge; the dye is partly excluded from
    # the nucleus (an oval a third of the cell wide around the centre, inside the cell)
    cyto = 0.2 + 0.8 * s ** 0.7
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    nuc = np.ones(shape)
    for j, (c, sl) in enumerate(zip(_object_centres(labels), ndi.find_objects(labels)), start=1):
        area = np.count_nonzero(labels[sl] == j)
        rn = 0.33 * np.sqrt(area / np.pi) * rng.uniform(0.85, 1.15)
        ang = rng.uniform(0, np.pi)
        dy, dx = yy[sl] - c[0], xx[sl] - c[1]
        p = (dy * np.cos(ang) + dx * np.sin(ang)) / (rn * 1.2)
        q = (-dy * np.sin(ang) + dx * np.cos(ang)) / (rn / 1.2)
        inside = (p * p + q * q < 1) & (labels[sl] == j)
        nuc[sl][inside] = rng.uniform(0.5, 0.8)
    tex = np.clip(1.0 + 0.2 * _smooth_field(shape, 2.0, rng), 0.3, None)
    # granules / vesicles: bright puncta, denser where the cytoplasm is thick (perinuclear)
    gran = (rng.random(shape) < s * fg / 45.0) * rng.lognormal(np.log(1.8), 0.5, size=shape)
    gran = ndi.gaussian_filter(gran, 0.8) * 2 * np.pi * 0.64
    signal = b[labels] * (cyto * nuc * tex + gran) * fg
    return _image(signal, rng, peak=rng.uniform(300, 900), background=rng.uniform(30, 80),
                  sigma=rng.uniform(1.0, 1.8)), labels


def _render_membrane(shape: Tuple[int, int], rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage as ndi
    from scipy.spatial import cKDTree

    h, w = shape
    spacing = 25.5  # minimum seed distance; the resulting cells measure about 34 px
    seeds = _dart_throw(shape, spacing, spacing / 2, rng)
    n = len(seeds)
    weights = (spacing / 2 * rng.uniform(0.8, 1.25, size=n)) ** 2  # power diagram: varied cell sizes
    # wavy cell borders: nearest seed in slightly warped coordinates
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    wy = yy + 0.1 * spacing * _smooth_field(shape, 0.6 * spacing, rng)
    wx = xx + 0.1 * spacing * _smooth_field(shape, 0.6 * spacing, rng)
    pts = np.stack([wy.ravel(), wx.ravel()], axis=1)
    dist, idx = cKDTree(seeds).query(pts, k=min(6, n))
    power = dist ** 2 - weights[idx]
    pick = np.argmin(power, axis=1)
    owner = idx[np.arange(len(pts)), pick]
    d_own = dist[np.arange(len(pts)), pick]
    # gaps: tissue is absent where a slow random field is low (whole cells missing), and cells at the
    # edge of a gap end within a reach of their seed
    tissue = _smooth_field(shape, 3 * spacing, rng)
    thr = np.quantile(tissue, rng.uniform(0.08, 0.25))
    si = np.clip(np.round(seeds).astype(int), 0, [h - 1, w - 1])
    present = tissue[si[:, 0], si[:, 1]] > thr
    reach = 0.85 * spacing * rng.uniform(0.9, 1.2, size=n)
    keep = present[owner] & (d_own < reach[owner])
    labels = np.where(keep, owner + 1, 0).reshape(shape).astype(np.int32)
    labels, _ = _clean_labels(labels, n, min_pixels=30)
    # the reach (and dropping stray pieces) should only shape the edges of the gaps: background pockets
    # inside the tissue (beyond the reach at a junction of present cells, or small) go to the neighbours
    labels = _fill_pockets(labels, PINHOLE, claimed=present[owner].reshape(shape))
    k = int(labels.max())
    fg = labels > 0
    t, s = _inner_distance(labels)
    # membrane: a band at each cell's outline, patchy along the membrane (uneven staining)
    width = rng.uniform(1.0, 1.6)
    band = np.exp(-0.5 * ((t - 1.0) / width) ** 2) * fg
    patchy = np.clip(1.0 + 0.4 * _smooth_field(shape, 5.0, rng), 0.1, None)
    mb = np.concatenate([[0.0], rng.lognormal(0.0, 0.3, size=k)])
    # interior only slightly above background: cytoplasm with internalised-dye puncta, darker nucleus
    interior = rng.uniform(0.06, 0.15) * rng.lognormal(0.0, 0.3, size=k + 1)
    nucleus = np.clip((s - 0.55) / 0.2, 0, 1) * rng.uniform(0.3, 0.6)
    puncta = ndi.gaussian_filter((rng.random(shape) < fg * s / 150) * rng.uniform(0.3, 1.0, size=shape),
                                 0.8) * 2 * np.pi * 0.64
    signal = mb[labels] * (band * patchy + interior[labels] * (1 - nucleus) + 0.5 * puncta) * fg
    return _image(signal, rng, peak=rng.uniform(250, 700), background=rng.uniform(20, 60),
                  sigma=rng.uniform(1.0, 1.6), halo=0.08), labels


def _dart_throw(shape: Tuple[int, int], min_dist: float, margin: float, rng: np.random.Generator,
                density: Optional[np.ndarray] = None, tries: int = 20) -> np.ndarray:
    """Random sequential adsorption: points at least `min_dist` apart, up to `margin` px outside the image,
    thrown until about saturation (`tries` candidates per point of a saturated packing); a candidate is
    kept only with probability density[y, x] (if given). Grid-accelerated."""
    h, w = shape
    lo = np.array([-margin, -margin], dtype=np.float64)
    hi = np.array([h - 1 + margin, w - 1 + margin], dtype=np.float64)
    cell = min_dist / np.sqrt(2)
    gh, gw = int(np.ceil((hi[0] - lo[0]) / cell)) + 1, int(np.ceil((hi[1] - lo[1]) / cell)) + 1
    grid = -np.ones((gh + 4, gw + 4), dtype=np.int64)
    n_max = int(0.8 * (hi[0] - lo[0] + min_dist) * (hi[1] - lo[1] + min_dist) / min_dist ** 2) + 1
    pts = np.empty((n_max, 2))
    cand = rng.uniform(lo, hi, size=(tries * n_max, 2))
    keep_p = rng.random(len(cand))
    if density is not None:
        iy = np.clip(cand[:, 0].astype(np.int64), 0, h - 1)
        ix = np.clip(cand[:, 1].astype(np.int64), 0, w - 1)
        cand = cand[keep_p <= density[iy, ix]]
    n = 0
    md2 = min_dist ** 2
    for c in cand:
        gy, gx = int((c[0] - lo[0]) / cell) + 2, int((c[1] - lo[1]) / cell) + 2
        near = grid[gy - 2:gy + 3, gx - 2:gx + 3]
        near = near[near >= 0]
        if near.size and np.min(np.sum((pts[near] - c) ** 2, axis=1)) < md2:
            continue
        grid[gy, gx] = n
        pts[n] = c
        n += 1
        if n == n_max:
            break
    return pts[:n]


DENSE_MIN_DIST, DENSE_RADIUS = 0.85, 1.05  # dense: seed distance and nucleus radius, in nominal diameters


def _render_dense(shape: Tuple[int, int], rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    h, w = shape
    d = 20.0
    # tissue: locally varying cell density, nuclei elongated along a locally coherent direction
    density = np.clip(0.75 + 0.35 * _smooth_field(shape, 5 * d, rng), 0.3, 1.0)
    centres = _dart_throw(shape, DENSE_MIN_DIST * d, 0.3 * d, rng, density)
    flow = _smooth_field(shape, 4 * d, rng) * np.pi
    objects = []
    for c in centres:
        iy, ix = int(np.clip(c[0], 0, h - 1)), int(np.clip(c[1], 0, w - 1))
        aspect = 1.0 + min(abs(rng.normal(0, 0.35)), 1.2)
        r = 0.5 * d * DENSE_RADIUS * np.exp(0.15 * rng.normal())
        objects.append(_blob(c, r, aspect, flow[iy, ix] + rng.normal(0, 0.4), 0.06, rng))
    labels, _ = _paint_objects(shape, objects, compete=True, min_pixels=20)
    k = int(labels.max())
    b = np.concatenate([[0.0], rng.lognormal(0.0, 0.45, size=k)])
    signal = _nuclear_signal(labels, b, rng)
    return _image(signal, rng, peak=rng.uniform(300, 900), background=rng.uniform(40, 100),
                  sigma=rng.uniform(1.0, 1.6), halo=0.15, bg_variation=0.25), labels


def _render_mixed_sizes(shape: Tuple[int, int], rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    def draw():
        return np.exp(rng.uniform(np.log(15.0), np.log(60.0))) / 2

    radii = _draw_radii(rng, 1.15 * rng.uniform(0.2, 0.32) * shape[0] * shape[1], draw)
    rng.shuffle(radii)
    centres, radii, _ = _place_blobs(shape, radii, rng, cluster_prob=0.3)
    objects = [_blob(c, r, 1.0 + min(abs(rng.normal(0, 0.25)), 0.9), rng.uniform(0, np.pi), 0.06, rng)
               for c, r in zip(centres, radii)]
    labels, index = _paint_objects(shape, objects)
    k = int(labels.max())
    # small nuclei (lymphocyte-like, condensed chromatin) are brighter per pixel than large ones
    b = rng.lognormal(0.0, 0.4, size=k) * (radii[index] / 15.0) ** -0.6
    signal = _nuclear_signal(labels, np.concatenate([[0.0], b]), rng)
    return _image(signal, rng, peak=rng.uniform(400, 1000), background=rng.uniform(30, 80),
                  sigma=rng.uniform(1.0, 1.8)), labels


LOW_SNR = 2.0  # the target signal-to-noise ratio of the low_snr condition (definition in low_snr())


def _render_low_snr(shape: Tuple[int, int], rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage as ndi

    labels, _ = _nuclei_layout(shape, rng, rng.uniform(0.13, 0.22), 22.0, 0.22, (12.0, 40.0), 0.3)
    k = int(labels.max())
    signal = _nuclear_signal(labels, np.concatenate([[0.0], rng.lognormal(0.0, 0.3, size=k)]), rng)
    # a starved photon budget: a few background photons per pixel, camera read noise matters
    illum = _illumination(shape, rng, 0.2)
    bg = illum * _background(shape, rng, rng.uniform(3.0, 10.0), 0.1)
    sig = illum * _psf(signal, rng.uniform(1.0, 1.8))
    gain, read_noise = _random_camera(rng)
    far = ndi.distance_transform_edt(labels == 0) > 4
    obj = labels > 0
    # scale the object signal so that (mean object - mean far background) / std(far background) of the
    # rendered image is LOW_SNR: background noise = shot + read + rounding + the background's own
    # spatial variation
    noise = np.sqrt(bg[far].mean() + read_noise ** 2 + 1 / (12 * gain ** 2) + bg[far].var())
    if obj.any() and far.any():
        scale = (LOW_SNR * noise - (bg[obj].mean() - bg[far].mean())) / (sig[obj].mean() - sig[far].mean())
    else:  # no object (or no background) in a tiny image: nothing to calibrate against
        scale = LOW_SNR * noise
    return _camera(bg + scale * sig, rng, gain, read_noise), labels


def _render_debris(shape: Tuple[int, int], rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage as ndi
    from skimage.draw import disk

    h, w = shape
    labels, mit = _nuclei_layout(shape, rng, rng.uniform(0.12, 0.2), 22.0, 0.22, (12.0, 40.0), 0.3,
                                 mitotic=0.04)
    k = int(labels.max())
    b = rng.lognormal(0.0, 0.45, size=k) * np.where(mit, 2.5, 1.0)
    signal = _nuclear_signal(labels, np.concatenate([[0.0], b]), rng)
    # in focus: small bright specks (dust, dye precipitate, fluorescent particles), sometimes in groups
    junk = np.zeros(shape)
    n_specks = rng.poisson(h * w / 3000) + 2
    for _ in range(n_specks):
        c = rng.uniform(0, [h, w])
        for _ in range(1 if rng.random() < 0.7 else rng.integers(2, 5)):
            cc = c + rng.normal(0, 3, size=2)
            rr, cc2 = disk(tuple(cc), rng.uniform(0.8, 2.5), shape=shape)
            junk[rr, cc2] = np.maximum(junk[rr, cc2], rng.uniform(1.5, 6.0))
    # lint fibres: thin bright curves
    for _ in range(rng.binomial(2, 0.4)):
        p = rng.uniform(0, [h, w])
        ang = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.uniform(40, 160))):
            ang += rng.normal(0, 0.08)
            p = p + [np.sin(ang), np.cos(ang)]
            rr, cc2 = disk(tuple(p), rng.uniform(0.6, 1.2), shape=shape)
            junk[rr, cc2] = np.maximum(junk[rr, cc2], 1.2)
    # out of focus: large dim, very blurred blobs (cells or clumps in another focal plane)
    haze = np.zeros(shape)
    for _ in range(rng.poisson(h * w / 25000) + 1):
        rr, cc2 = disk(tuple(rng.uniform(0, [h, w])), rng.uniform(15, 40), shape=shape)
        haze[rr, cc2] += rng.uniform(0.15, 0.5)
    haze = ndi.gaussian_filter(haze, rng.uniform(5, 10))
    return _image(signal + junk + haze, rng, peak=rng.uniform(400, 1200), background=rng.uniform(30, 80),
                  sigma=rng.uniform(1.0, 1.8)), labels


_Render = Callable[[Tuple[int, int], np.random.Generator], Tuple[np.ndarray, np.ndarray]]


def _generate(name: str, render: _Render, diameter: float, num_images: int,
              size: Union[int, Tuple[int, int]], seed: int) -> ZooData:
    shape = _check_args(num_images, size, seed)
    # one random stream per (seed, condition), keyed on the condition's name (not on its position in
    # CONDITIONS, so adding or reordering conditions changes no other condition's data): conditions with
    # the same seed are not correlated
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode("ascii"))])
    images, labels = [], []
    for _ in range(num_images):
        im, lb = render(shape, rng)
        images.append(im)
        labels.append(lb.astype(np.int32, copy=False))
    return ZooData(name=name, images=images, labels=labels, diameter=float(diameter))


def fluo_nuclei(num_images: int = 4, size: Union[int, Tuple[int, int]] = 256, seed: int = 0) -> ZooData:
    """Widefield fluorescence of DNA-stained nuclei (DAPI / Hoechst, like BBBC039 or the fluorescence part
    of DSB 2018). Nominal diameter 22 px.

    Blobby ellipses, diameters log-normal (median 22 px, clipped to 12-40 px, axis ratio up to ~1.9), about
    13-22% of the image painted (foreground 10-30%), ~30% placed against an earlier nucleus
    (touching clusters, slight overlaps resolved by occlusion). Brightness log-normal (sigma 0.5) per
    nucleus; ~5% mitotic nuclei (smaller, 2-3.5x brighter); ~10% (at least one per image) poorly stained,
    3-8% of the median brightness, barely above background: the spread between nuclei is well over 10x.
    Flattened-ellipsoid thickness profile and a mild chromatin texture. Optics: Gaussian PSF sigma 1-1.8 px
    plus a 10% wide halo, vignetting and a gradient in the excitation, a slowly varying background of
    30-80 photons. Camera: 400-1200 photons at a typical nucleus' peak, Poisson noise, read noise
    1.2-3 e-, gain 0.5-2.5 ADU/e-, offset 100 ADU, uint16."""
    return _generate("fluo_nuclei", _render_fluo_nuclei, 22.0, num_images, size, seed)


def large_cells(num_images: int = 4, size: Union[int, Tuple[int, int]] = 256, seed: int = 0) -> ZooData:
    """Whole cells with a cytoplasmic fluorescent stain (e.g. CellTracker / CellMask), 40-80 px (median 58,
    the nominal diameter). Irregular outlines (harmonics up to 5), axis ratio up to ~2, 30-45% of the image
    painted, ~30% placed against another cell. Inside: thickness profile (bright around the nucleus, dim
    thin lamella at the edge), the nucleus a darker oval (dye partly excluded), granular texture, and many
    bright granules / vesicles (log-normal, median 1.8x the cytoplasm, denser near the nucleus) that can
    pull a method into over-segmentation. Optics and camera as in fluo_nuclei."""
    return _generate("large_cells", _render_large_cells, 58.0, num_images, size, seed)


def membrane(num_images: int = 4, size: Union[int, Tuple[int, int]] = 256, seed: int = 0) -> ZooData:
    """A membrane stain in packed tissue (like the membrane channel of TissueNet, or HU7 'cell' images).
    Nominal diameter 34 px.

    Cells are a power (weighted Voronoi) diagram of seeds at least 25.5 px apart, computed in slightly
    warped coordinates (wavy borders); roughly 10-25% of the area is tissue-free (whole cells missing
    where a slow random field is low, cells at a gap's edge end within about one spacing of their seed);
    inside the tissue the cells fill the space (background pockets there go to the neighbouring cells).
    Each label is the whole cell including its membrane. Rendering: a bright band 1-1.6 px wide along
    every cell's outline (so two adjacent cells show a double membrane), patchy along its length;
    interiors only 6-15% of the membrane level (slightly above background) with sparse internalised-dye
    puncta and a darker nucleus. Intensity thresholding is wrong here by construction. PSF sigma
    1-1.6 px."""
    return _generate("membrane", _render_membrane, 34.0, num_images, size, seed)


def dense(num_images: int = 4, size: Union[int, Tuple[int, int]] = 256, seed: int = 0) -> ZooData:
    """Nuclei packed as in a tissue section, more than half of the image foreground (about 70%), most
    nuclei touching a neighbour. Nominal diameter 20 px.

    Seeds thrown at random to saturation, at least 17 px apart, with a slowly varying local density;
    blobby ellipses of about 21 px elongated along a locally coherent direction (as in stroma / epithelia);
    overlaps resolved competitively (a pixel goes to the nucleus it is most central in: flattened contact
    lines; pieces a nucleus loses go to the runner-up, and enclosed background pockets smaller than 8 px
    to the neighbours: no pinholes). Brightness log-normal (sigma 0.45); strong tissue autofluorescence
    background (40-100 photons, 25% variations) and a 15% PSF halo (out-of-focus light of a thick
    sample), PSF sigma 1-1.6 px."""
    return _generate("dense", _render_dense, 20.0, num_images, size, seed)


def mixed_sizes(num_images: int = 4, size: Union[int, Tuple[int, int]] = 256, seed: int = 0) -> ZooData:
    """Nuclei of very different sizes in one image (e.g. lymphocytes next to tumour cells): diameters
    log-uniform in 15-60 px (nominal diameter 30 px, the geometric middle), 20-32% of the image painted,
    ~30% placed against another nucleus. Small nuclei are brighter per pixel (condensed chromatin:
    brightness ~ (d / 30)^-0.6 times log-normal). Optics and camera as in fluo_nuclei."""
    return _generate("mixed_sizes", _render_mixed_sizes, 30.0, num_images, size, seed)


def low_snr(num_images: int = 4, size: Union[int, Tuple[int, int]] = 256, seed: int = 0) -> ZooData:
    """Nuclei imaged with a starved photon budget (live-cell, low light): signal-to-noise ratio 2.

    SNR = (mean of the image over object pixels - mean over background pixels more than 4 px from any
    object) / standard deviation of the image over those background pixels, measured on the rendered
    uint16 image; the object brightness is scaled per image so that its expected value is 2 (LOW_SNR).
    Background 3-10 photons per pixel, so read noise (1.2-3 e-) and shot noise both matter; nuclei as in
    fluo_nuclei but with less brightness spread (log-normal sigma 0.3), so individual nuclei have an SNR
    of roughly 1-4. Nominal diameter 22 px."""
    return _generate("low_snr", _render_low_snr, 22.0, num_images, size, seed)


def debris(num_images: int = 4, size: Union[int, Tuple[int, int]] = 256, seed: int = 0) -> ZooData:
    """Nuclei as in fluo_nuclei (nominal diameter 22 px) plus things that are NOT objects (not in the
    labels): small in-focus bright specks (dust, dye precipitate; 1-5 px, 1.5-6x a typical nucleus,
    sometimes in small groups), 0-2 thin lint fibres, and large dim out-of-focus blobs (30-80 px,
    blurred with sigma 5-10 px, 15-50% of a typical nucleus)."""
    return _generate("debris", _render_debris, 22.0, num_images, size, seed)


_ZOO: Dict[str, Callable[..., ZooData]] = {
    "fluo_nuclei": fluo_nuclei,
    "large_cells": large_cells,
    "membrane": membrane,
    "dense": dense,
    "mixed_sizes": mixed_sizes,
    "low_snr": low_snr,
    "debris": debris,
}


def zoo(name: str, num_images: int = 4, size: Union[int, Tuple[int, int]] = 256, seed: int = 0) -> ZooData:
    """Synthetic microscopy images with exact instance labels for one condition of the data zoo.

    name: one of CONDITIONS: fluo_nuclei, large_cells, membrane, dense, mixed_sizes, low_snr, debris (see
    the function of that name). num_images >= 1 images of `size` (int, or (H, W); >= 64 px each), fully
    determined by `seed` (a non-negative int; identical arrays for the same seed with the same
    numpy/scipy versions; each condition's random stream is keyed on its name). Returns a ZooData with
    uint16 images, int32 labels and the condition's nominal object diameter."""
    if not isinstance(name, str) or name not in _ZOO:
        raise ValueError(f"unknown condition {name!r}; valid names: {', '.join(CONDITIONS)}")
    return _ZOO[name](num_images=num_images, size=size, seed=seed)
