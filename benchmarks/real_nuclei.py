"""The ``real_nuclei`` condition of the quality benchmark: hand-labelled widefield nuclear-stain images
(DAPI / H2B; RPE1, U2OS and a mixed set of HeLa, HFF, MCC13 ...) shipped in the ``mnfinder`` wheel (PyPI
1.2.3, MIT licence).

The wheel is fetched with ``pip download --no-deps mnfinder==1.2.3`` into a cache outside the repository
(``$CELLULUS_FAST_DATA`` or ``~/.cache/cellulus_fast``) the first time; it is never vendored and never a
runtime dependency. Only ``training-data/`` and ``validation-data/`` are read: ``test-data/`` is never
extracted, so choices made on this benchmark are judged later on images no choice has seen.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import List

import numpy as np

WHEEL = "mnfinder-1.2.3-py3-none-any.whl"
SHA256 = "11b1f6aea9f40b4dd3cf6c3de30ef8d517a4833907b88b86ce2b7ab1f9dbce4a"  # pins the data's provenance
FOLDERS = ("training-data", "validation-data")  # test-data is deliberately absent


@dataclass
class RealImage:
    name: str          # e.g. "training-data/2022-10-14_U2OS/3"
    cell_line: str     # "RPE1", "U2OS" or "misc"
    image: np.ndarray  # (H, W) uint8 or uint16
    labels: np.ndarray  # (H, W) int32, 0 = background


def cache_dir() -> Path:
    return Path(os.environ.get("CELLULUS_FAST_DATA", Path.home() / ".cache" / "cellulus_fast"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel() -> Path:
    """The cached wheel, downloaded (no dependencies) on first use and whenever the cached file is not the
    pinned one (e.g. a truncated download)."""
    folder = cache_dir()
    wheel = folder / WHEEL
    if not wheel.exists() or _sha256(wheel) != SHA256:
        folder.mkdir(parents=True, exist_ok=True)
        wheel.unlink(missing_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "mnfinder==1.2.3",
                        "-d", str(folder)], check=True)
        if _sha256(wheel) != SHA256:
            raise RuntimeError(f"{wheel} does not have the pinned SHA-256 {SHA256}; delete it and retry")
    return wheel


def load(max_images: int = 0) -> List[RealImage]:
    """The labelled images of the training and validation folders, sorted by name (``max_images`` > 0
    keeps the first of each cell line, up to that many in all). The nucleus id is the blue channel of
    the RGBA mask PNG."""
    import tifffile
    from skimage.io import imread

    out: List[RealImage] = []
    with zipfile.ZipFile(fetch_wheel()) as wheel:
        names = set(wheel.namelist())
        for name in sorted(names):
            parts = name.split("/")  # mnfinder/<folder>/<set>/images/<id>.tif
            if len(parts) != 5 or parts[1] not in FOLDERS or parts[3] != "images" or not name.endswith(".tif"):
                continue
            mask_name = "/".join(parts[:3] + ["nucleus_masks", parts[4][:-4] + ".png"])
            if mask_name not in names:
                continue
            with wheel.open(name) as f:
                image = tifffile.imread(f)
            with wheel.open(mask_name) as f:
                labels = imread(f)[..., 2].astype(np.int32)
            out.append(RealImage(f"{parts[1]}/{parts[2]}/{parts[4][:-4]}", parts[2].rsplit("_", 1)[-1],
                                 image, labels))
    if max_images > 0:
        first = {}
        for item in out:
            first.setdefault(item.cell_line, item)
        out = list(first.values())[:max_images]
    return out
