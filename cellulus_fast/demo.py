"""The end-to-end demo: generated cell images -> training -> segmentation -> evaluation.

    python -m cellulus_fast demo --output-dir demo_output

The demo's schedule is short so it runs on a laptop CPU (the paper's defaults would take days there):
a 16-feature-map U-Net, 4 epochs of 100 steps of 4 crops of 128 px, Adam with lr 1e-3 divided by 10
after epoch 3. The cells are ~40 px across, comfortably larger than the 16 px field of view (the paper
rescales real data to reach this regime).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Union

import numpy as np

from .datasets import synthetic

DIAMETER = 40.0
SCHEDULE = dict(epochs=4, steps_per_epoch=100, batch_size=4, crop_size=128, num_fmaps=16,
                learning_rate=1e-3, milestones=(3,))
QUICK_SCHEDULE = dict(SCHEDULE, epochs=2, steps_per_epoch=75, milestones=())


def run_demo(output_dir: Union[str, Path] = "demo_output", *, quick: bool = False, seed: int = 0,
             progress: bool = True):
    """Runs the demo, writing data, model, labels, overlays and metrics under ``output_dir``; returns the
    :class:`~cellulus_fast.evaluate.EvaluationResult` on the held-out images."""
    import tifffile
    from skimage.io import imsave

    from .cli import overlay
    from .evaluate import evaluate, write_results
    from .segment import segment
    from .train import train

    out = Path(output_dir)
    start = time.time()
    train_images, _ = synthetic(num_images=6 if quick else 8, size=256, num_cells=16, diameter=DIAMETER,
                                seed=seed)
    test_images, test_labels = synthetic(num_images=3, size=256, num_cells=16, diameter=DIAMETER,
                                         seed=seed + 1000)
    for folder, arrays in (("data/train", train_images), ("data/test", test_images),
                           ("data/test_gt", test_labels)):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for i, array in enumerate(arrays):
            tifffile.imwrite(out / folder / f"t{i:03d}.tif", array)
    print(f"[demo] data: {len(train_images)} training and {len(test_images)} test images in {out / 'data'}")

    schedule = QUICK_SCHEDULE if quick else SCHEDULE
    result = train(out / "data/train", out / "model", seed=seed, progress=progress, **schedule)
    print(f"[demo] trained in {time.time() - start:.0f} s: {result.checkpoint}")

    labels = segment(result.checkpoint, out / "data/test", object_diameter=DIAMETER, progress=progress)
    (out / "labels").mkdir(exist_ok=True)
    for i, (image, label) in enumerate(zip(test_images, labels)):
        tifffile.imwrite(out / "labels" / f"t{i:03d}_labels.tif", label)
        imsave(out / "labels" / f"t{i:03d}_overlay.png", overlay(image, label), check_contrast=False)
    scores = evaluate(test_labels, labels)
    write_results(scores, out / "metrics")
    print(scores.format_table())
    print(f"[demo] done in {time.time() - start:.0f} s; labels and overlays in {out / 'labels'}, "
          f"metrics in {out / 'metrics'}")
    return scores
