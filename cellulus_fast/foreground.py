"""Foreground rules: which pixels belong to some object. Shared by :func:`cellulus_fast.segment` (its
``foreground`` option) and the classical baselines (:mod:`cellulus_fast.baselines`).

* ``"uncertainty"`` (the paper's rule, the default): the spread of the predicted offsets under test-time
  noise is low inside objects, so foreground = uncertainty below Otsu's threshold. It also keeps a halo
  about kappa wide around objects (the loss pulls nearby background towards them), which the halo
  correction trims.
* ``"intensity"``: the smoothed normalised intensity above Otsu's threshold, holes filled: right for bright
  objects on a dark background (nuclear stains), wrong by construction for membrane stains.
* ``"refined"``: the uncertainty foreground, clustered, then each detection keeps only its pixels above
  Otsu's threshold of the smoothed intensity within it (as the napari-cellulus plugin's "nucleus" mode):
  removes the halo of bright objects; wrong for membrane stains.

``benchmarks/QUALITY.md`` measures each rule on every condition of the data zoo and on real nuclei.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from .data import normalize

RULES: Tuple[str, ...] = ("uncertainty", "intensity", "refined")
SMOOTHING = 1.0  # px, Gaussian sigma of the intensity rules: denoising below the scale of any object


def check_rule(rule: str) -> str:
    """``rule`` if it is one of :data:`RULES`, else a ValueError naming them."""
    if rule not in RULES:
        raise ValueError(f"foreground must be one of {', '.join(RULES)}; got {rule!r}")
    return rule


def grey(image: Any) -> np.ndarray:
    """A 2-D float image: each channel (first axis of a 3-D array, at most 16) normalised as for the network
    (1st percentile -> 0, 99.8th -> 1), then the channels averaged."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] > 16:
        raise ValueError(f"expected a 2-D image or a channels-first (C <= 16, H, W) array, got shape {array.shape}")
    return normalize(array).mean(axis=0)


def intensity_foreground(image: Any, sigma: float = SMOOTHING) -> np.ndarray:
    """Foreground = Gaussian-smoothed intensity above Otsu's threshold, holes filled (bool (H, W))."""
    smooth = ndimage.gaussian_filter(grey(image), sigma)
    if np.ptp(smooth) == 0:
        return np.zeros(smooth.shape, bool)
    return ndimage.binary_fill_holes(smooth > threshold_otsu(smooth))


def uncertainty_foreground(uncertainty: np.ndarray, threshold: Optional[float] = None) -> np.ndarray:
    """Foreground = uncertainty below ``threshold`` (default: Otsu's threshold of the map); all background
    when the map is constant and no threshold is given."""
    if threshold is None:
        if np.ptp(uncertainty) == 0:
            return np.zeros(uncertainty.shape, bool)
        threshold = float(threshold_otsu(uncertainty))
    return uncertainty < threshold


def refine_by_intensity(labels: np.ndarray, image: Any, sigma: float = SMOOTHING) -> np.ndarray:
    """Each object keeps its pixels whose smoothed intensity is above Otsu's threshold of the smoothed
    intensities inside it (objects without contrast are kept as they are)."""
    smooth = ndimage.gaussian_filter(grey(image), sigma)
    out = np.zeros_like(labels)
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        inside = labels[box] == k
        values = smooth[box][inside]
        keep = inside if np.ptp(values) == 0 else inside & (smooth[box] > threshold_otsu(values))
        out[box][keep] = k
    return out
