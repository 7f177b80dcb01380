"""Pictures of label images over their grey image (the CLI's --overlay PNGs, the demo, the quality page)."""
from __future__ import annotations

import numpy as np


def overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB uint8 picture of a grey image with the label boundaries in colour."""
    from skimage.color import label2rgb
    from skimage.segmentation import find_boundaries

    grey = image if image.ndim == 2 else image[0]
    lo, hi = np.percentile(grey, (1, 99.8))
    grey = np.clip((grey - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = label2rgb(labels.astype(np.int64), image=grey, alpha=0.25, bg_label=0)
    rgb[find_boundaries(labels, mode="inner")] = (1.0, 1.0, 0.0)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
