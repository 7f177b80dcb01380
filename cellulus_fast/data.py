"""Loading, normalising and randomly cropping images for CELLULUS training.

Conventions: every image handed around by this module is a float32 numpy array of shape (C, H, W),
channels first, C = 1 for grey images. `load_images` turns files, folders, glob patterns, the Cell
Tracking Challenge layout and numpy arrays into such a list (it does *not* normalise); `normalize` maps
percentiles to [0, 1]; `CropSampler` draws reproducible random training crops from the normalised images.
"""
from __future__ import annotations

import glob
import os
import re
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["load_images", "read_arrays", "normalize", "CropSampler", "TIFF_SUFFIXES"]

TIFF_SUFFIXES = (".tif", ".tiff")
_SEQUENCE_DIR = re.compile(r"^\d{2}$")  # CTC sequence folders: 01, 02, ... (01_GT, 01_ST are not)
_CTC_FRAME = re.compile(r"^t(\d+)\.tiff?$", re.IGNORECASE)
_GLOB_CHARS = re.compile(r"[*?\[]")

PathLike = Union[str, os.PathLike]
Source = Union[PathLike, np.ndarray, torch.Tensor, Sequence[Union[PathLike, np.ndarray, torch.Tensor]]]


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------

def load_images(source: Source, axes: Optional[str] = None, min_size: int = 0,
                skip_constant: bool = True, return_names: bool = False) -> Any:
    """Read images into a list of float32 arrays of shape (C, H, W) (not normalised; see `normalize`).

    `source` may be
      * a TIFF file path (every image series in it, e.g. all pages of a multi-page TIFF);
      * a folder: its ``*.tif`` / ``*.tiff`` files (not recursive), sorted by file name;
      * a folder in the Cell Tracking Challenge layout, i.e. one holding sequence folders named by two
        digits (``01/t000.tif, 01/t001.tif, ..., 02/...``): all ``tNNN.tif`` frames of all sequences,
        sequences in name order, frames in numeric order. ``01_GT``, ``01_ST`` and other folders, and
        loose files next to the sequence folders, are ignored;
      * a glob pattern string (``"data/*.tif"``), matches sorted by name;
      * a numpy array (or CPU torch tensor);
      * a list/tuple mixing any of the above (each item expanded in order).

    `axes` says how to read every array (file contents or given arrays), using the letters T (stack /
    time, split into separate images), C (channels), Y, X, each at most once, Y and X required, in the
    array's order: e.g. ``"YX"``, ``"CYX"``, ``"TYX"``, ``"TCYX"``, ``"YXC"``. With ``axes=None``, a TIFF
    whose metadata names channels is read by its metadata: RGB(A) samples, interleaved (tifffile axes
    ``YXS``) or planar (``SYX``), and ImageJ hyperstack channels (``CYX``, ``TCYX``, ``ZCYX``) become
    channels, and Z / T / pages become separate images. Otherwise 2-D -> one grey image; 3-D -> a stack
    of 2-D grey images (e.g. the pages of a multi-page TIFF), except that an array shaped like a colour
    image, (H, W, 3) or (H, W, 4), is refused with a hint to pass ``axes="YXC"`` (or ``"TYX"`` if it
    really is a stack of 3 or 4 px wide images). Other dimensionalities need an explicit `axes`.

    Checks (each raising ValueError naming the offending file or list index, pages as ``[page i]``):
    unreadable / non-TIFF files; NaN or inf values; integer values too far from 0 for float32 to keep
    apart (e.g. 2**40 + a few counts); height or width below `min_size` (training passes
    the network's field of view); channel counts differing between images. An empty folder, or a path or
    glob pattern matching nothing, raises FileNotFoundError.

    Constant images carry no information and would make `normalize` divide by (almost) zero: with
    ``skip_constant=True`` (default) they are dropped with a `warnings.warn` naming each one, and a
    ValueError is raised if nothing is left; with ``skip_constant=False`` they are kept (`normalize`
    then maps them to all zeros).

    With ``return_names=True`` returns ``(images, names)``, a name per image (its file, page or list index).
    """
    images: List[np.ndarray] = []
    names: List[str] = []
    for name, image in read_arrays(source, axes):
        images.append(_validate(name, image, min_size))
        names.append(name)
    if not images:
        raise ValueError(f"no images found in {_describe(source)}")

    channels = images[0].shape[0]
    for name, image in zip(names, images):
        if image.shape[0] != channels:
            raise ValueError(f"{name} has {image.shape[0]} channel(s) but {names[0]} has {channels}; "
                             "all images must have the same number of channels (check `axes`)")

    if skip_constant:
        kept = [(name, image) for name, image in zip(names, images) if image.max() != image.min()]
        for name, image in zip(names, images):
            if image.max() == image.min():
                warnings.warn(f"skipping constant image {name} (value {float(image.flat[0])!r})",
                              stacklevel=2)
        if not kept:
            raise ValueError(f"all {len(images)} image(s) from {_describe(source)} are constant")
        names, images = [k[0] for k in kept], [k[1] for k in kept]
    return (images, names) if return_names else images


def read_arrays(source: Source, axes: Optional[str] = None) -> Iterator[Tuple[str, np.ndarray]]:
    """(name, (C, H, W) array) of every image in `source`, read as :func:`load_images` reads them but
    in the array's own dtype and unchecked (e.g. label images, which must not go through float32)."""
    if axes is not None:
        _check_axes(axes)
    for name, array, file_axes in _iter_arrays(source):
        yield from _split(name, array, axes or _axes_from_file(file_axes, name, array.shape), file_axes)


# tifffile's axis letters in ours: S (samples: RGB) and C are channels; Z, Q (unknown), I (image sequence)
# and T become separate images.
_TIFF_AXES = str.maketrans({"S": "C", "Z": "T", "Q": "T", "I": "T"})


# ImageJ files declare C for multi-channel images but tifffile also marks a plain z-stack written with
# imagej=True as channels: more declared channels than this are read as separate images, with a warning.
MAX_FILE_CHANNELS = 4


def _axes_from_file(file_axes: Optional[str], name: str = "", shape: Tuple[int, ...] = ()) -> Optional[str]:
    """Our axes for a file whose metadata names channels (tifffile axes with S or C), if they translate
    unambiguously; None (the default reading) otherwise."""
    if not file_axes or not set(file_axes) & set("CS"):
        return None
    if "C" in file_axes and len(shape) == len(file_axes) and shape[file_axes.index("C")] > MAX_FILE_CHANNELS:
        warnings.warn(f"{name}: its metadata declares {shape[file_axes.index('C')]} channels ({file_axes}); read "
                      f"as separate images (a z-stack is often stored so); pass axes='{file_axes.translate(_TIFF_AXES)}' "
                      "if they are channels of one image")
        return None
    axes = file_axes.translate(_TIFF_AXES)
    try:
        _check_axes(axes)
    except ValueError:  # e.g. TZCYX: both T and Z would be T
        return None
    return axes


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return f"an array of shape {tuple(source.shape)}"
    return "the given sources"


def _check_axes(axes: str) -> None:
    if (not isinstance(axes, str) or set(axes) - set("TCYX") or len(set(axes)) != len(axes)
            or "Y" not in axes or "X" not in axes):
        raise ValueError(f"axes must use each of the letters T, C, Y, X at most once and contain Y and X, "
                         f"got {axes!r}")


def _iter_arrays(source: Any, prefix: str = "") -> Iterable[Tuple[str, np.ndarray, Optional[str]]]:
    """Yield (name, raw array, tifffile axes or None) for every array or file in `source`."""
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu().numpy()
    if isinstance(source, np.ndarray):
        yield (prefix or "array"), source, None
    elif isinstance(source, (str, os.PathLike)):
        for path in _resolve_paths(source):
            series = _read_tiff(path)
            for i, (array, file_axes) in enumerate(series):
                yield (f"{path}[series {i}]" if len(series) > 1 else str(path)), array, file_axes
    elif isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("empty list of images")
        for i, item in enumerate(source):
            if isinstance(item, (np.ndarray, torch.Tensor)):
                yield from _iter_arrays(item, f"image {i}")
            elif isinstance(item, (str, os.PathLike)):
                yield from _iter_arrays(item)
            else:
                raise TypeError(f"item {i} of the image list is a {type(item).__name__}, expected a path "
                                "or an array")
    else:
        raise TypeError(f"cannot load images from a {type(source).__name__}; pass a path, a glob pattern, "
                        "an array or a list of those")


def _resolve_paths(source: PathLike) -> List[Path]:
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        sequences = sorted(p for p in path.iterdir() if p.is_dir() and _SEQUENCE_DIR.match(p.name))
        if sequences:
            files = []
            for seq in sequences:
                frames = [(int(m.group(1)), p) for p in seq.iterdir()
                          if p.is_file() and (m := _CTC_FRAME.match(p.name))]
                files.extend(p for _, p in sorted(frames))
            if not files:
                raise FileNotFoundError(f"no tNNN.tif frames in the sequence folders of {str(path)!r}")
            return files
        files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES),
                       key=lambda p: p.name)
        if not files:
            raise FileNotFoundError(f"no TIFF files (*.tif, *.tiff) in folder {str(path)!r}")
        return files
    pattern = os.fspath(source)
    if _GLOB_CHARS.search(pattern):
        files = sorted(Path(p) for p in glob.glob(pattern) if os.path.isfile(p))
        if not files:
            raise FileNotFoundError(f"glob pattern {pattern!r} matches no files")
        return files
    raise FileNotFoundError(f"no such file or folder: {pattern!r}")


def _read_tiff(path: Path) -> List[Tuple[np.ndarray, Optional[str]]]:
    """(array, tifffile axes) of every series in the file: pages appended one by one (e.g. by
    ``TiffWriter.write`` in a loop) form separate series, which `tifffile.imread` alone would drop."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = [(s.asarray(), s.axes) for s in tif.series]
        if not series:
            raise ValueError("no image data")
        return series
    except Exception as e:  # tifffile raises a variety of errors on corrupt / foreign files
        raise ValueError(f"cannot read {str(path)!r} as a TIFF image: {e}") from e


def _split(name: str, array: np.ndarray, axes: Optional[str],
           file_axes: Optional[str]) -> Iterable[Tuple[str, np.ndarray]]:
    """Yield (name, (C, H, W) array) for each image held by `array`, as described by `axes`."""
    if axes is None:
        if array.ndim == 2:
            axes = "YX"
        elif array.ndim == 3:
            if array.shape[2] in (3, 4) and array.shape[0] > 4:
                raise ValueError(f"{name} has shape {array.shape}, which would be read as {array.shape[0]} grey "
                                 f"images of {array.shape[1]}x{array.shape[2]} px; pass axes='YXC' if it is one "
                                 "colour image (or axes='TYX' if it really is such a stack)")
            axes = "TYX"
        else:
            hint = f" (the file says {file_axes!r})" if file_axes else ""
            raise ValueError(f"{name} has shape {array.shape}{hint}: pass axes=, e.g. 'TCYX'")
    if len(axes) != array.ndim:
        raise ValueError(f"{name} has shape {array.shape} ({array.ndim}-D) but axes={axes!r}")
    # transpose to T, C, Y, X, adding the missing axes with length 1
    full = array.transpose([axes.index(a) for a in "TCYX" if a in axes])
    full = full.reshape([array.shape[axes.index(a)] if a in axes else 1 for a in "TCYX"])
    if "T" not in axes:
        yield name, full[0]
    else:
        for t in range(full.shape[0]):
            yield f"{name}[page {t}]", full[t]


def _validate(name: str, image: np.ndarray, min_size: int) -> np.ndarray:
    if image.dtype.kind not in "biuf":
        raise ValueError(f"{name} has unsupported dtype {image.dtype}")
    if image.dtype.kind in "iu" and image.size:
        low, high = int(image.min()), int(image.max())
        # float32 holds integers exactly only up to 2**24: far from 0, a narrow range of values would merge
        # (an image at 2**40 plus a signal of a few counts would become constant).
        if high > low and 256 * float(np.spacing(np.float32(max(abs(low), abs(high))))) > high - low:
            raise ValueError(f"{name} has integer values in [{low}, {high}], too far from 0 for float32 (in which "
                             "images are processed) to keep them apart; subtract an offset first, e.g. "
                             "image - image.min()")
    image = np.ascontiguousarray(image, dtype=np.float32)
    if not np.isfinite(image).all():
        raise ValueError(f"{name} contains NaN or inf values")
    h, w = image.shape[1:]
    if min(h, w) < max(min_size, 1):
        raise ValueError(f"{name} is {h}x{w} pixels, smaller than the minimum size {max(min_size, 1)}")
    return image


# ----------------------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------------------

def normalize(image: np.ndarray, low: float = 1.0, high: float = 99.8, eps: float = 1e-20) -> np.ndarray:
    """Percentile normalisation: ``(x - p_low) / (p_high - p_low + eps)``, as float32.

    For a (C, H, W) image the percentiles are taken per channel, for an (H, W) image over the whole
    image. Values are not clipped (like csbdeep's ``normalize(..., clip=False)``), so about `low`% of the
    pixels end up below 0 and ``100 - high``% above 1. `eps` only prevents a division by zero: a constant
    channel maps to all zeros.
    """
    if not 0 <= low < high <= 100:
        raise ValueError(f"need 0 <= low < high <= 100, got low={low}, high={high}")
    x = np.asarray(image, dtype=np.float32)
    if x.ndim < 2:
        raise ValueError(f"expected an (H, W) or (C, H, W) image, got shape {x.shape}")
    axis = tuple(range(x.ndim)) if x.ndim == 2 else tuple(range(1, x.ndim))
    lo, hi = np.percentile(x, [low, high], axis=axis, keepdims=True).astype(np.float32)
    return ((x - lo) / (hi - lo + np.float32(eps))).astype(np.float32, copy=False)


SCALE_RANGE = (1 / 16, 16.0)  # beyond it an image shrinks to nothing or grows past any memory


def check_scale(scale: Any) -> float:
    """``scale`` as a float if it is a finite number in :data:`SCALE_RANGE`, else a ValueError."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) \
            or not SCALE_RANGE[0] <= float(scale) <= SCALE_RANGE[1]:
        raise ValueError(f"scale must be a number in [1/16, 16], got {scale!r}")
    return float(scale)


def rescale(image: np.ndarray, scale: float) -> np.ndarray:
    """A (C, *spatial) image resized by ``scale`` along each spatial axis (linear interpolation,
    anti-aliased when shrinking), as float32; the image itself when ``scale`` is 1. Labels go back with
    :func:`cellulus_fast.segment.segment`'s nearest-neighbour resize."""
    if scale == 1:
        return image
    from skimage.transform import resize

    target = tuple(max(1, round(n * scale)) for n in image.shape[1:])
    return resize(image, image.shape[:1] + target, order=1, preserve_range=True,
                  anti_aliasing=scale < 1).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# Random crops
# ----------------------------------------------------------------------------------------------------

class CropSampler:
    """Reproducible random square crops from a list of (C, H, W) images, for training.

    Each crop: pick an image (uniformly, or with probability proportional to its area if
    ``by_area=True``), a uniformly random position, and (if ``augment``) one of the 8 dihedral transforms
    (rotation by a multiple of 90 degrees, optionally followed by a horizontal flip), uniformly. Images
    smaller than `crop_size` in a dimension are reflect-padded (split evenly on both sides) to `crop_size`
    once, up front, so such a dimension has only one crop position.

    All randomness comes from one ``numpy.random.Generator`` seeded with `seed`; `state_dict` /
    `load_state_dict` save and restore its ``bit_generator.state``, so a resumed training run draws exactly
    the crops the uninterrupted one would have drawn.
    """

    def __init__(self, images: Sequence[np.ndarray], crop_size: int = 252, seed: Optional[int] = 0,
                 by_area: bool = False, augment: bool = True) -> None:
        if crop_size < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        if len(images) == 0:
            raise ValueError("CropSampler needs at least one image")
        self.crop_size = int(crop_size)
        self.augment = augment
        self.images: List[np.ndarray] = []
        areas = []
        for i, image in enumerate(images):
            image = np.asarray(image, dtype=np.float32)
            if image.ndim == 2:
                image = image[None]
            if image.ndim != 3:
                raise ValueError(f"image {i} has shape {image.shape}, expected (C, H, W) or (H, W)")
            if self.images and image.shape[0] != self.images[0].shape[0]:
                raise ValueError(f"image {i} has {image.shape[0]} channels, image 0 has "
                                 f"{self.images[0].shape[0]}")
            areas.append(float(image.shape[1] * image.shape[2]))  # unpadded area
            self.images.append(np.ascontiguousarray(self._pad(image)))
        self.channels = self.images[0].shape[0]
        # number of valid top-left positions per image and dimension (>= 1 thanks to the padding)
        self._positions = np.array([[im.shape[1] - self.crop_size + 1, im.shape[2] - self.crop_size + 1]
                                    for im in self.images], dtype=np.int64)
        if by_area:
            self._p: Optional[np.ndarray] = np.array(areas) / sum(areas)
        else:
            self._p = None
        self._rng = np.random.default_rng(seed)

    def _pad(self, image: np.ndarray) -> np.ndarray:
        ph, pw = (max(self.crop_size - s, 0) for s in image.shape[1:])
        if ph == 0 and pw == 0:
            return image
        # reflect (no edge repeat) keeps texture statistics; numpy repeats the reflection when the pad
        # exceeds the image size
        return np.pad(image, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="reflect")

    def batch(self, batch_size: int) -> torch.Tensor:
        """A (batch_size, C, crop_size, crop_size) float32 CPU tensor of random crops."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        rng, s = self._rng, self.crop_size
        # draw everything for the batch in a fixed order so that the stream is a function of the seed only
        which = rng.choice(len(self.images), size=batch_size, p=self._p)
        ys = rng.integers(0, self._positions[which, 0])
        xs = rng.integers(0, self._positions[which, 1])
        transforms = rng.integers(0, 8, size=batch_size) if self.augment else np.zeros(batch_size, np.int64)
        out = np.empty((batch_size, self.channels, s, s), dtype=np.float32)
        for b in range(batch_size):
            crop = self.images[which[b]][:, ys[b]:ys[b] + s, xs[b]:xs[b] + s]
            t = int(transforms[b])
            crop = np.rot90(crop, t % 4, axes=(1, 2))
            if t >= 4:
                crop = crop[:, :, ::-1]
            out[b] = crop
        return torch.from_numpy(out)

    def state_dict(self) -> Dict[str, Any]:
        """The generator's ``bit_generator.state`` (a plain dict, safe to pickle / ``torch.save``)."""
        return self._rng.bit_generator.state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore a state returned by `state_dict` (same images and settings give the same crops)."""
        self._rng.bit_generator.state = state
