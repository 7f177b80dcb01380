"""The end-to-end demo: generated images -> training -> segmentation -> evaluation, next to a classical
baseline on the same images.

    python -m cellulus_fast demo --output-dir demo_output

Two image sets, each with its own model:

* ``cells``: large (~40 px), well separated cells, comfortably larger than the 16 px field of view (the
  regime the paper rescales real data into);
* ``fluo_nuclei``: the data zoo's realistic fluorescence nuclei (:func:`cellulus_fast.datasets.fluo_nuclei`:
  ~22 px, 10x brightness spread, touching clusters, camera noise, uint16), where the method's defaults are
  known to struggle today (see ``benchmarks/QUALITY.md``).

The schedule is short so the demo runs on a laptop CPU (the paper's defaults would take days there): a
16-feature-map U-Net, 4 epochs of 100 steps of 4 crops of 128 px, Adam with lr 1e-3 divided by 10 after
epoch 3. Each set is scored for cellulus-fast and for Otsu + distance-transform watershed
(:func:`cellulus_fast.baselines.otsu_watershed`) with the same object diameter.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Tuple, Union

import numpy as np

from .datasets import fluo_nuclei, synthetic

if TYPE_CHECKING:
    from .evaluate import EvaluationResult

DIAMETER = 40.0  # of the "cells" set
SCHEDULE = dict(epochs=4, steps_per_epoch=100, batch_size=4, crop_size=128, num_fmaps=16,
                learning_rate=1e-3, milestones=(3,))
QUICK_SCHEDULE = dict(SCHEDULE, epochs=2, steps_per_epoch=75, milestones=())

Images = Tuple[List[np.ndarray], List[np.ndarray]]


def _cells(num_images: int, seed: int) -> Tuple[Images, float]:
    return synthetic(num_images=num_images, size=256, num_cells=16, diameter=DIAMETER, seed=seed), DIAMETER


def _fluo_nuclei(num_images: int, seed: int) -> Tuple[Images, float]:
    data = fluo_nuclei(num_images=num_images, size=256, seed=seed)
    return (data.images, data.labels), data.diameter


DATASETS: Dict[str, Callable[[int, int], Tuple[Images, float]]] = {"cells": _cells, "fluo_nuclei": _fluo_nuclei}


def run_demo(output_dir: Union[str, Path] = "demo_output", *, quick: bool = False, seed: int = 0,
             progress: bool = True, overwrite: bool = False) -> Dict[str, Dict[str, EvaluationResult]]:
    """Runs the demo, writing per image set ``<output_dir>/<set>/`` with data, model, labels, overlays and
    metrics (of both methods), and ``<output_dir>/summary.txt``; returns ``{set: {method: result}}`` of
    :class:`~cellulus_fast.evaluate.EvaluationResult` on the held-out images.

    An ``output_dir`` that exists and is not empty is refused (a ValueError before any work) unless
    ``overwrite=True``, which first deletes the demo's own outputs there (the set folders and the summary)."""
    import tifffile
    from skimage.io import imsave

    from .baselines import otsu_watershed
    from .overlay import overlay
    from .evaluate import evaluate, write_results
    from .segment import segment
    from .train import train

    root = Path(output_dir)
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise ValueError(f"{root} exists and is not empty; choose another output directory or pass "
                             "overwrite=True (--overwrite) to replace the demo's outputs there")
        for name in DATASETS:
            shutil.rmtree(root / name, ignore_errors=True)
        (root / "summary.txt").unlink(missing_ok=True)
    start = time.time()
    schedule = QUICK_SCHEDULE if quick else SCHEDULE
    results: Dict[str, Dict[str, EvaluationResult]] = {}
    for name, make in DATASETS.items():
        out, set_start = root / name, time.time()
        (train_images, _), diameter = make(6 if quick else 8, seed)
        (test_images, test_labels), _ = make(3, seed + 1000)
        for folder, arrays in (("data/train", train_images), ("data/test", test_images),
                               ("data/test_gt", test_labels)):
            (out / folder).mkdir(parents=True, exist_ok=True)
            for i, array in enumerate(arrays):
                tifffile.imwrite(out / folder / f"t{i:03d}.tif", array)
        print(f"[demo] {name}: {len(train_images)} training and {len(test_images)} test images in "
              f"{out / 'data'}, object diameter {diameter:g} px")

        result = train(out / "data/train", out / "model", seed=seed, progress=progress, **schedule)
        print(f"[demo] {name}: trained in {time.time() - set_start:.0f} s: {result.checkpoint}")

        # ours with its defaults: nothing but the images (object size and foreground measured on each image);
        # the baseline needs the object diameter
        predicted = {"cellulus-fast": segment(result.checkpoint, out / "data/test", progress=progress),
                     "Otsu + watershed": [otsu_watershed(image, diameter) for image in test_images]}
        (out / "labels").mkdir(exist_ok=True)
        for i, (image, labels) in enumerate(zip(test_images, predicted["cellulus-fast"])):
            tifffile.imwrite(out / "labels" / f"t{i:03d}_labels.tif", labels)
            imsave(out / "labels" / f"t{i:03d}_overlay.png", overlay(image, labels), check_contrast=False)
        results[name] = {}
        for method, labels in predicted.items():
            results[name][method] = evaluate(test_labels, labels)
            folder = "metrics" if method == "cellulus-fast" else "metrics_otsu_watershed"
            write_results(results[name][method], out / folder)
        print(f"[demo] {name}: cellulus-fast on the held-out images\n" + results[name]["cellulus-fast"].format_table())

    summary = ["image set      method              F1@0.5   SEG  objects (predicted / true)"]
    for name, per_method in results.items():
        for method, scores in per_method.items():
            p = scores.pooled
            summary.append(f"{name:<14} {method:<18} {p.at(0.5).f1:7.3f} {p.seg:5.3f}  {p.n_pred} / {p.n_true}")
    text = "\n".join(summary)
    (root / "summary.txt").write_text(text + "\n")
    print(text)
    print(f"[demo] done in {time.time() - start:.0f} s; per set: labels and overlays in <set>/labels, metrics "
          f"in <set>/metrics; summary in {root / 'summary.txt'}")
    return results
