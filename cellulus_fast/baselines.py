"""Classical segmentations a user tries first, as yardsticks for CELLULUS: Otsu's threshold on the
(smoothed, normalised) intensity, then connected components or a distance-transform watershed. Every
parameter derives from the same ``object_diameter`` that :func:`cellulus_fast.segment` takes, by fixed
rules chosen before looking at any score:

* foreground: :func:`cellulus_fast.foreground.intensity_foreground` (Gaussian smoothing with sigma = 1 px,
  Otsu's threshold, holes filled: nuclei and cells have no holes);
* watershed seeds: maxima of the distance transform at least ``object_diameter / 2`` apart (two touching
  discs of that diameter have their centres one diameter apart, so this keeps one seed per object with
  room for elongated ones);
* minimum size: as in :func:`cellulus_fast.segment.derive_parameters`, 10% of the area of a disc of the
  diameter.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.segmentation import watershed

from .foreground import intensity_foreground
from .ops._checks import check_real
from .segment import derive_parameters, size_filter

__all__ = ["intensity_foreground", "otsu_components", "otsu_watershed"]


def _min_size(object_diameter: float) -> int:
    return derive_parameters(object_diameter).min_size


def otsu_components(image: Any, object_diameter: float) -> np.ndarray:
    """Otsu foreground, connected components (4-connectivity), objects below the minimum size removed."""
    check_real("object_diameter", object_diameter, low=0.0, low_open=True)
    return size_filter(intensity_foreground(image).astype(np.int32), _min_size(object_diameter)).astype(np.int32)


def otsu_watershed(image: Any, object_diameter: float) -> np.ndarray:
    """Otsu foreground split by a watershed of its distance transform, seeded at distance maxima at least
    ``object_diameter / 2`` apart; objects below the minimum size removed."""
    check_real("object_diameter", object_diameter, low=0.0, low_open=True)
    mask = intensity_foreground(image)
    distance = ndimage.distance_transform_edt(mask)
    components, _ = ndimage.label(mask)
    peaks = peak_local_max(distance, min_distance=max(1, int(round(object_diameter / 2))), labels=components,
                           exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-distance, markers, mask=mask)
    return size_filter(labels, _min_size(object_diameter)).astype(np.int32)
