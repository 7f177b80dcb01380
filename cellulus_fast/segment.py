"""Instance segmentation with a trained CELLULUS network: uncertainty -> foreground, mean-shift on the
embeddings -> instances, each judged on the image's intensity (or the paper's halo correction), a minimum
size. Every parameter derives from one ``object_diameter`` unless given, and that is measured on each image
unless given."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Union

import numpy as np
import torch
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.segmentation import relabel_sequential
from skimage.transform import resize
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from ._progress import progress_bar
from ._validate import check_device
from .config import object_size_range
from .data import check_scale, load_images, normalize, rescale
from .foreground import (check_rule, intensity_foreground, judge_detections, refine_by_intensity, smoothed_noise,
                         uncertainty_foreground)
from .models import UNet
from .ops import mean_shift_labels
from .ops._checks import check_int, check_real
from .predict import Prediction, predict


@dataclass
class Parameters:
    """The derived segmentation parameters (in pixels of the network's grid, i.e. after ``scale``)."""

    bandwidths: List[float]
    min_size: int
    grow: float
    shrink: float


def derive_parameters(object_diameter: float, *, bandwidth: Union[float, Sequence[float], None] = None,
                      min_size: Optional[int] = None, grow: float = 3.0, shrink: float = 6.0,
                      scale: float = 1.0) -> Parameters:
    """The rule (the public CELLULUS reference's): bandwidth = 0.5 x diameter, min_size = 10% of the area
    of a disc of that diameter, grow 3 px and shrink 6 px. ``object_diameter`` and ``min_size`` are in
    pixels of the input images; with ``scale`` != 1 they are converted to the rescaled grid."""
    diameter = check_real("object_diameter", object_diameter, low=0.0, low_open=True) * check_scale(scale)
    if bandwidth is None:
        bandwidths = [0.5 * diameter]
    else:
        many = isinstance(bandwidth, (list, tuple)) or (isinstance(bandwidth, np.ndarray) and bandwidth.ndim == 1)
        bandwidths = [check_real("bandwidth", b, low=0.0, low_open=True)
                      for b in (bandwidth if many else [bandwidth])]
        if not bandwidths:
            raise ValueError("bandwidth must be a number or a non-empty list of numbers, got an empty list")
    if min_size is None:
        min_size = int(0.1 * math.pi * object_diameter**2 / 4)
    check_int("min_size", min_size, low=0)
    grow, shrink = check_real("grow", grow, low=0.0), check_real("shrink", shrink, low=0.0)
    return Parameters(bandwidths, int(round(min_size * scale**2)), grow, shrink)


def equivalent_diameter(labels: Union[np.ndarray, Sequence[np.ndarray]], *, weighted: bool = False) -> Optional[float]:
    """Median, over all objects of one or more label images, of the diameter of the disc with the object's
    area (None when there is no object). ``weighted=True``: each object counts with its area, i.e. the
    diameter of the object a random object pixel belongs to (small fragments and specks weigh little)."""
    arrays = [labels] if isinstance(labels, np.ndarray) else list(labels)
    areas = np.concatenate([np.bincount(np.asarray(a, np.int64).ravel())[1:] for a in arrays] + [np.zeros(0)])
    areas = np.sort(areas[areas > 0])
    if not len(areas):
        return None
    if not weighted:
        return float(np.median(2 * np.sqrt(areas / np.pi)))
    cumulative = np.cumsum(areas)
    middle = min(int(np.searchsorted(cumulative, cumulative[-1] / 2)), len(areas) - 1)
    return float(2 * np.sqrt(areas[middle] / np.pi))


# estimate_diameter: first guess, measure and number of passes. The first guess is the smallest diameter the
# network segments well, 2x its 16 px field of view: its minimum size (10% of the disc, 80 px) keeps objects
# down to ~10 px, and its bandwidth (16 px) rarely splits larger ones. Each further pass segments at the
# bandwidth of the last estimate, correcting for objects it split or joined. The measure is the
# area-weighted median size: where a too-small bandwidth splits objects, a plain median follows the
# fragments down and each pass keeps the bandwidth that split them; the area-weighted one follows the
# pixels and climbs towards the whole objects. Compared on the quality benchmark's seed-0 *training* images
# (its held-out images stay blind to the choice), F1@0.5 per condition (fluo_nuclei, large_cells, membrane,
# dense, mixed_sizes, low_snr): plain median, 2 passes (the rule before) .87 .58 .91 .71 .82 .87 (mean .79);
# area-weighted, 2 passes .86 .75 .90 .72 .84 .89; 4 passes .87 .85 .90 .72 .84 .89 (mean .85); the 75th
# percentile, 3 passes .84 .88 .89 .72 .85 .87.
DIAMETER_START = 32.0
DIAMETER_PASSES = 4


def estimate_diameter(prediction: Prediction, image: Optional[np.ndarray] = None, *, foreground: str = "auto",
                      threshold: Optional[float] = None, start: float = DIAMETER_START,
                      passes: int = DIAMETER_PASSES, grow: float = 3.0, shrink: float = 6.0,
                      noise: Optional[float] = None, fit_fraction: Optional[float] = 0.1, seed: int = 0,
                      device: Union[str, torch.device, None] = None) -> Optional[float]:
    """The typical object diameter (px, on the prediction's grid), measured with the segmentation itself:
    segment with the parameters of a ``start`` diameter, take the area-weighted median equivalent diameter of
    the objects found (:func:`equivalent_diameter`), and repeat with that diameter (``passes`` times in all).
    When the first pass finds nothing it is retried once from half of ``start`` (its minimum size keeps smaller objects); when a later pass finds
    nothing, the last measurement stands. None when no object is found at all. The other arguments are
    :func:`instances`' (``image`` is needed by every foreground rule but ``"uncertainty"``)."""
    check_int("passes", passes, low=1)
    check_real("start", start, low=0.0, low_open=True)

    def measure(diameter: float) -> Optional[float]:
        labels = instances(prediction, derive_parameters(diameter, grow=grow, shrink=shrink), threshold=threshold,
                           foreground=foreground, image=image, noise=noise, fit_fraction=fit_fraction, seed=seed,
                           device=device)[0]
        return equivalent_diameter(labels, weighted=True)

    measured = measure(float(start))
    if measured is None:  # perhaps objects below the first pass's minimum size
        measured = measure(start / 2)
    if measured is None:
        return None
    for _ in range(passes - 1):
        found = measure(measured)
        if found is None:
            break
        measured = found
    return measured


def size_advice(measured: float, scale: float, field_of_view: int) -> Optional[str]:
    """A hint when objects measured ``measured`` px on the network's grid (images resized by ``scale``) lie
    outside the sizes the network segments at their own size (:func:`~cellulus_fast.config.object_size_range`), naming the ``object_diameter`` to train with (which chooses the scale);
    None inside."""
    low, high = object_size_range(field_of_view)
    if low <= measured <= high:
        return None
    return (f"objects measure {measured:.0f} px to the network (field of view {field_of_view} px), outside the "
            f"{low:.0f}-{high:.0f} px it segments best: train with object_diameter={measured / scale:.0f} (px of "
            f"these images), which resizes them to fit, or pass scale= to both train() and segment()")


def halo_correction(labels: np.ndarray, grow: float, shrink: float) -> np.ndarray:
    """Removes the halo at object/background borders: the foreground is grown by ``grow`` px, then every
    pixel within ``shrink`` px of the grown foreground's border is cleared (a net erosion of shrink - grow
    at the outer border; borders between touching objects stay)."""
    if shrink <= 0:
        return labels
    grown = ndimage.distance_transform_edt(labels == 0) < grow if grow > 0 else labels > 0
    out = labels.copy()
    out[ndimage.distance_transform_edt(grown) < shrink] = 0
    return out


def size_filter(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Splits every label into its connected components, drops components smaller than ``min_size`` and
    relabels consecutively from 1."""
    # components of each label separately: label the image with a unique id per (label, component)
    components = connected_components(labels, background=0, connectivity=1)
    sizes = np.bincount(components.ravel())
    small = sizes < min_size
    small[0] = False
    components[small[components]] = 0
    return relabel_sequential(components)[0]


def instances(prediction: Prediction, params: Parameters, *, threshold: Optional[float] = None,
              foreground: str = "auto", image: Optional[np.ndarray] = None,
              noise: Optional[float] = None, fit_fraction: Optional[float] = 0.1, seed: int = 0,
              device: Union[str, torch.device, None] = None,
              clusterer: Callable[..., torch.Tensor] = mean_shift_labels) -> List[np.ndarray]:
    """Label images (one per bandwidth) from a prediction. ``foreground`` is one of
    :data:`cellulus_fast.foreground.RULES` (all but ``"uncertainty"`` need the ``image`` the prediction
    was made from; ``noise`` goes to :func:`~cellulus_fast.foreground.judge_detections`); ``threshold``
    replaces Otsu's threshold of the uncertainty map. The halo correction (``params.grow`` /
    ``params.shrink``) applies to the ``"uncertainty"`` rule only: the others remove the halo by
    intensity. ``clusterer`` has the signature of :func:`cellulus_fast.ops.mean_shift_labels`
    (benchmarks pass scikit-learn's pipeline here)."""
    check_rule(foreground)
    if foreground != "uncertainty" and image is None:
        raise ValueError(f"foreground={foreground!r} needs the image")
    empty = [np.zeros(prediction.uncertainty.shape, np.int64) for _ in params.bandwidths]
    if foreground == "intensity":
        mask = intensity_foreground(image)
    elif threshold is None and np.ptp(prediction.uncertainty) == 0:
        warnings.warn("the uncertainty map is constant: no foreground found, returning empty labels")
        return empty
    else:
        mask = uncertainty_foreground(prediction.uncertainty, threshold)  # low variance = inside an object
    if not mask.any():
        warnings.warn("empty foreground: returning empty labels")
        return empty
    emb = torch.from_numpy(prediction.embeddings()).to(device or "cpu")
    mask_t = torch.from_numpy(mask).to(emb.device)
    out = []
    for bandwidth in params.bandwidths:
        g = torch.Generator().manual_seed(seed)
        labels = clusterer(emb, mask_t, bandwidth, fit_fraction=fit_fraction, generator=g).cpu().numpy()
        if foreground == "uncertainty":
            labels = halo_correction(labels, params.grow, params.shrink)
        elif foreground == "refined":
            labels = refine_by_intensity(labels, image)
        elif foreground == "auto":
            labels = judge_detections(labels, image, noise=noise)
        out.append(size_filter(labels, params.min_size))
    return out


def _as_model(model_or_checkpoint: Union[UNet, str, Path], device) -> UNet:
    if isinstance(model_or_checkpoint, UNet):
        return model_or_checkpoint.to(device) if device else model_or_checkpoint
    return ckpt.load(model_or_checkpoint, device=device)


def _label_dtype(labels: np.ndarray) -> np.ndarray:
    return labels.astype(np.uint16 if labels.max(initial=0) < 2**16 else np.uint32)


def segment(model_or_checkpoint: Union[UNet, str, Path], images: Any, *, object_diameter: Optional[float] = None,
            bandwidth: Union[float, Sequence[float], None] = None, threshold: Optional[float] = None,
            foreground: str = "auto",
            num_noise_passes: int = 16, grow: float = 3.0, shrink: float = 6.0, min_size: Optional[int] = None,
            scale: Optional[float] = None, device: Union[str, torch.device, None] = None, batch_size: int = 4,
            fit_fraction: Optional[float] = 0.1, seed: int = 0, axes: Optional[str] = None,
            progress: bool = True, return_predictions: bool = False) -> Any:
    """Instance labels of images with a trained model (or a checkpoint path).

    Each image is normalised as in training, resized by ``scale`` (by default the scale the model was
    trained at, ``train(..., scale=...)`` or chosen by ``train(..., object_diameter=...)``, recorded in its
    checkpoint; another value warns, since objects then
    look to the network unlike in training; labels are mapped back to the original grid by nearest-neighbour
    resizing), predicted in tiles with ``num_noise_passes`` noise passes per value, and
    segmented: foreground by the rule ``foreground`` (:mod:`cellulus_fast.foreground`: the default
    ``"auto"`` clusters the low-uncertainty pixels and judges each detection on the image's intensity;
    ``"uncertainty"`` is the paper's rule, uncertainty < Otsu's threshold or ``threshold``, with the halo
    correction ``grow`` / ``shrink``), mean-shift of the foreground embeddings (fitted on a random
    ``fit_fraction`` of them, every foreground pixel then assigned to its nearest centre), and removal of
    objects smaller than ``min_size``.

    ``object_diameter`` (px of the input images) sets the bandwidth (half of it) and the minimum size (10% of
    its disc) unless those are given (:func:`derive_parameters`). By default (None) it is measured on each
    image from its own prediction (:func:`estimate_diameter`: the area-weighted median size of the objects
    found with a first guess of 32 px, then three more times with the last measured size), reported when ``progress`` is on and kept as
    ``prediction.object_diameter`` (``return_predictions=True``); a warning when no object is found.

    Returns:
        A uint16 (uint32 if needed) label image per image (0 = background), with the input's spatial shape;
        a single array for a single image. With several bandwidths, a list of label images per image.
        With ``return_predictions=True`` a tuple (labels, predictions). ``images`` are read as by
        :func:`~cellulus_fast.data.load_images` (``axes`` as there, e.g. ``"CYX"`` for multi-channel).
    """
    check_int("num_noise_passes", num_noise_passes, low=0)
    check_int("batch_size", batch_size, low=1)
    check_rule(foreground)
    check_int("seed", seed, low=0)
    if threshold is not None:
        check_real("threshold", threshold, low=-math.inf)
    elif num_noise_passes == 0 and foreground != "intensity":
        raise ValueError(f"num_noise_passes=0 leaves no uncertainty map, which foreground={foreground!r} needs: use "
                         "num_noise_passes >= 1, foreground='intensity', or give a threshold")
    if fit_fraction is not None:
        check_real("fit_fraction", fit_fraction, low=0.0, high=1.0, low_open=True)
    if not isinstance(model_or_checkpoint, (UNet, str, Path)):
        raise TypeError("model_or_checkpoint must be a trained UNet or the path of a checkpoint, got "
                        f"{type(model_or_checkpoint).__name__}")
    # every option checked (with a stand-in diameter when it is to be measured) before any work
    derive_parameters(object_diameter if object_diameter is not None else DIAMETER_START, bandwidth=bandwidth,
                      min_size=min_size, grow=grow, shrink=shrink, scale=1.0 if scale is None else scale)
    device = check_device(device) or ("cuda" if torch.cuda.is_available() else "cpu")
    model = _as_model(model_or_checkpoint, device)
    trained_at = float(getattr(model, "training_scale", 1.0))
    if scale is None:
        scale = trained_at
    elif not math.isclose(scale, trained_at, rel_tol=1e-6):
        warnings.warn(f"scale={scale:g} but the model was trained at scale {trained_at:g}: objects will look "
                      "larger or smaller to the network than in training")
    data = load_images(images, axes=axes, min_size=model.context + 2 if scale == 1 else 0)
    single = len(data) == 1 and (isinstance(images, (str, Path, np.ndarray, torch.Tensor)))
    if data[0].shape[0] != model.config.in_channels:
        raise ValueError(f"the model expects {model.config.in_channels} channel(s), the images have "
                         f"{data[0].shape[0]}")
    results, predictions = [], []
    advice = None
    for image in progress_bar(data, desc="segmenting", unit="image", disable=not progress or len(data) < 2):
        original = image.shape[1:]
        image = normalize(image)
        # the intensity rules' noise level, measured before resampling correlates the noise
        noise = smoothed_noise(image, scale) if scale != 1 and foreground == "auto" else None
        image = rescale(image, scale)
        prediction = predict(model, image, num_noise_passes=num_noise_passes, batch_size=batch_size,
                             device=device, seed=seed)
        diameter = object_diameter
        if diameter is None and (bandwidth is None or min_size is None):  # else it would not be used
            measured = estimate_diameter(prediction, image, foreground=foreground, threshold=threshold, grow=grow,
                                         shrink=shrink, noise=noise, fit_fraction=fit_fraction, seed=seed,
                                         device=device)
            if measured is None:
                warnings.warn(f"image {len(results) + 1}: no object found to measure the object diameter; "
                              f"using {DIAMETER_START / scale:g} px (pass object_diameter to choose)")
            else:
                prediction.object_diameter = measured / scale
                if progress:
                    tqdm.write(f"image {len(results) + 1}: object diameter {measured / scale:.1f} px (measured)")
                advice = advice or size_advice(measured, scale, model.context)
            diameter = (DIAMETER_START if measured is None else measured) / scale
        params = derive_parameters(diameter if diameter is not None else DIAMETER_START / scale,
                                   bandwidth=bandwidth, min_size=min_size, grow=grow, shrink=shrink, scale=scale)
        labels = instances(prediction, params, threshold=threshold, foreground=foreground, image=image,
                           noise=noise, fit_fraction=fit_fraction, seed=seed, device=device)
        if scale != 1:
            labels = [resize(l, original, order=0, preserve_range=True, anti_aliasing=False).astype(l.dtype)
                      for l in labels]
        labels = [_label_dtype(l) for l in labels]
        results.append(labels[0] if len(params.bandwidths) == 1 else labels)
        predictions.append(prediction)
    if advice:
        warnings.warn(advice)
    out = results[0] if single else results
    if return_predictions:
        return out, (predictions[0] if single else predictions)
    return out
