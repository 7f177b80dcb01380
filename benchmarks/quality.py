"""The quality benchmark: CELLULUS next to the classical baselines a user tries first, on the same images.

    bash .ci/quality            # full run (writes benchmarks/QUALITY.md, quality.json, quality/*.png)
    bash .ci/quality --quick    # tiny sizes, every method end to end; checks shapes only (CI)
    bash .ci/quality --models DIR   # trained models kept in DIR and reused (segmentation changes: ~30 min)

For every condition of the synthetic data zoo (:mod:`cellulus_fast.datasets`) a model is trained on its
training images with the ``"fast"`` preset of :func:`cellulus_fast.train` (``SCHEDULE``), then every method
segments the held-out images (generated with another seed) and is scored against the exact labels. ``real_nuclei`` is the hand-labelled
nuclear-stain set of the ``mnfinder`` wheel (training + validation folders; its test folder is never read),
used unsupervised: trained on its 33 images, evaluated on the central 512 x 512 px of each (prediction
with test-time noise is the slow part), reported per cell line. Scores are pooled over the images of a
condition (object counts summed); ± is the standard deviation over seeds (ddof = 0).

Methods. ``d`` is the condition's nominal diameter (for ``real_nuclei`` the median equivalent diameter of
its labelled nuclei, what a user measuring a few nuclei would say); every method but the first is given it:
  * ``cellulus-fast``: ``segment(model, images)`` with its defaults and nothing else: the ``"auto"``
    foreground and the object diameter measured on each image (the table "Diameter" compares the
    measurement with the truth);
  * on the same prediction, with ``d`` given: the ``"auto"`` foreground, the paper's ``"uncertainty"`` rule
    (with its halo correction), ``"intensity"`` and ``"refined"`` (:mod:`cellulus_fast.foreground`);
  * ``reference rule``: the public CELLULUS pipeline's rule on the same prediction: foreground = uncertainty
    below Otsu's threshold, scikit-learn's ``MeanShift`` of the embeddings (bandwidth d / 2, fitted on 10%
    of the foreground), grow 3 / shrink 6 px, minimum size: the paper rule's row up to pixels lying halfway,
    to the last bit, between two centres. Synthetic conditions only (scikit-learn needs ~8 min on the real
    crops, and the paper-rule row gives the same answer);
  * ``Otsu + components`` and ``Otsu + watershed`` (:mod:`cellulus_fast.baselines`);
  * ``oracle foreground`` (a diagnostic, not a method: it uses the true foreground): mean-shift of our
    embeddings inside the true foreground, i.e. how good the embeddings are when the foreground is right.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cellulus_fast.baselines import otsu_components, otsu_watershed  # noqa: E402
from cellulus_fast import checkpoint  # noqa: E402
from cellulus_fast.config import PRESETS, TrainConfig  # noqa: E402
from cellulus_fast.data import normalize  # noqa: E402
from cellulus_fast.datasets import CONDITIONS, zoo  # noqa: E402
from cellulus_fast.evaluate import evaluate  # noqa: E402
from cellulus_fast.ops import mean_shift_labels  # noqa: E402
from cellulus_fast.reference import sklearn_mean_shift_labels  # noqa: E402
from cellulus_fast.segment import (derive_parameters, equivalent_diameter, estimate_diameter, instances,  # noqa: E402
                                   segment, size_filter)
from cellulus_fast.train import train  # noqa: E402

# The schedule a CPU user gets: train(preset="fast") (the paper's defaults take days on a CPU).
SCHEDULE = dict(PRESETS["fast"])
SYNTHETIC = dict(num_train=4, num_test=3, size=320)
QUICK_SCHEDULE = dict(SCHEDULE, epochs=1, steps_per_epoch=3, batch_size=2, num_fmaps=4, milestones=())
QUICK_SYNTHETIC = dict(num_train=1, num_test=1, size=128)
REAL_EVAL_CROP = 512  # real_nuclei: side of the evaluated central crop of each image
NOISE_PASSES = 16  # segment()'s default
# per synthetic condition (mean ± std over seeds); real_nuclei has one fixed image set: one seed. One by
# default: a "fast" training takes ~5 min on 2 cores, and 3 seeds of 7 conditions would take ~2 h.
SEEDS = 1
# Our rows: the defaults (foreground and diameter automatic), then each foreground rule of segment() on the
# same prediction with the nominal diameter given.
OURS = {"cellulus-fast": "auto", "cellulus-fast, given d": "auto",
        "cellulus-fast, paper (uncertainty) fg": "uncertainty", "cellulus-fast, intensity fg": "intensity",
        "cellulus-fast, refined fg": "refined"}
CLASSICAL = ("Otsu + components", "Otsu + watershed")  # what the goal compares against
BASELINES = ("reference rule",) + CLASSICAL
METHODS = tuple(OURS) + BASELINES + ("oracle foreground",)


def foreground_iou(gt: Sequence[np.ndarray], pred: Sequence[np.ndarray]) -> float:
    inter = sum(int(((g > 0) & (p > 0)).sum()) for g, p in zip(gt, pred))
    union = sum(int(((g > 0) | (p > 0)).sum()) for g, p in zip(gt, pred))
    return inter / union if union else 1.0


def scores(gt: Sequence[np.ndarray], pred: Sequence[np.ndarray]) -> Dict[str, float]:
    result = evaluate(list(gt), list(pred), thresholds=(0.5, 0.7)).pooled
    return {"f1_50": result.at(0.5).f1, "f1_70": result.at(0.7).f1, "seg": result.seg,
            "mean_iou": result.at(0.5).mean_matched_iou, "fg_iou": foreground_iou(gt, pred), "n_images": len(gt),
            "n_true": result.n_true, "n_pred": result.n_pred}


def oracle_foreground(prediction, gt: np.ndarray, diameter: float) -> np.ndarray:
    params = derive_parameters(diameter)
    emb = torch.from_numpy(prediction.embeddings())
    labels = mean_shift_labels(emb, torch.from_numpy(gt > 0), params.bandwidths[0], fit_fraction=0.1,
                               generator=torch.Generator().manual_seed(0)).numpy()
    return size_filter(labels, params.min_size)


def run_methods(model, images: List[np.ndarray], gt: List[np.ndarray], diameter: float,
                noise_passes: int, reference: bool = True) -> Dict[str, List]:
    """Labels of every method for every image (``reference=False``: no scikit-learn row), and under
    ``"measured diameters"`` the diameter segment() measured on each image."""
    ours, predictions = segment(model, list(images), num_noise_passes=noise_passes,
                                progress=False, return_predictions=True, device="cpu")
    params = derive_parameters(diameter)
    out: Dict[str, List] = {m: [] for m in METHODS}
    out["measured diameters"] = []
    for i, (image, labels, prediction) in enumerate(zip(images, gt, predictions)):
        out["cellulus-fast"].append(np.asarray(ours[i]))
        normalised = normalize(np.asarray(image, np.float32)[None])
        out["measured diameters"].append(prediction.object_diameter)  # what segment() measured and used
        for method, rule in list(OURS.items())[1:]:
            out[method].append(instances(prediction, params, foreground=rule, image=normalised)[0])
        if reference:
            out["reference rule"].append(instances(prediction, params, foreground="uncertainty",
                                                   clusterer=sklearn_mean_shift_labels)[0])
        out["Otsu + components"].append(otsu_components(image, diameter))
        out["Otsu + watershed"].append(otsu_watershed(image, diameter))
        out["oracle foreground"].append(oracle_foreground(prediction, labels, diameter))
    for method in METHODS:
        for l, image in zip(out[method], images):
            assert l.shape == image.shape, f"{method}: labels {l.shape} for an image {image.shape}"
    return out


def thumbnail(path: Path, image: np.ndarray, gt: np.ndarray, labels: Dict[str, List[np.ndarray]],
              box: int = 320) -> None:
    """image with the true labels | ours | Otsu + watershed, one crop of at most box x box px."""
    from skimage.io import imsave

    from cellulus_fast.overlay import overlay

    h, w = image.shape
    y, x = (h - min(h, box)) // 2, (w - min(w, box)) // 2
    crop = (slice(y, y + min(h, box)), slice(x, x + min(w, box)))
    gap = np.full((min(h, box), 4, 3), 255, np.uint8)
    panels = [overlay(image[crop], gt[crop]), gap, overlay(image[crop], labels["cellulus-fast"][0][crop]), gap,
              overlay(image[crop], labels["Otsu + watershed"][0][crop])]
    imsave(path, np.hstack(panels), check_contrast=False)


def trained(images: List[np.ndarray], run_dir: Path, seed: int, quick: bool):
    """The model trained on ``images`` with the benchmark's schedule into ``run_dir``; a finished run already
    there with the same configuration is loaded instead (``--models``: a change to segmentation alone is
    measured again without retraining; training is deterministic, so the model is the one it would train)."""
    schedule = QUICK_SCHEDULE if quick else SCHEDULE
    path = run_dir / "checkpoint.pt"
    if path.exists():
        state = checkpoint.read(path)
        expected = TrainConfig.preset("fast").replace(seed=seed, **schedule).run_options()
        if TrainConfig.from_dict(state["config"]).run_options() == expected and state["step"] == state["steps_per_epoch"] * expected["epochs"]:
            return checkpoint.load(path)
        raise SystemExit(f"{run_dir} holds another run; remove it or choose another --models folder")
    return train(images, run_dir, seed=seed, progress=False, **schedule).model


def synthetic_condition(name: str, seed: int, quick: bool, workdir: Path, noise_passes: int):
    sizes = QUICK_SYNTHETIC if quick else SYNTHETIC
    train_data = zoo(name, num_images=sizes["num_train"], size=sizes["size"], seed=seed)
    test_data = zoo(name, num_images=sizes["num_test"], size=sizes["size"], seed=seed + 1000)
    model = trained(train_data.images, workdir / f"{name}-{seed}", seed, quick)
    labels = run_methods(model, test_data.images, test_data.labels, test_data.diameter, noise_passes)
    return {name: (test_data.images, test_data.labels, labels, test_data.diameter)}, model


def real_condition(seed: int, quick: bool, workdir: Path, noise_passes: int):
    import real_nuclei

    data = real_nuclei.load(max_images=1 if quick else 0)
    diameter = equivalent_diameter([d.labels for d in data])
    model = trained([d.image for d in data], workdir / f"real-{seed}", seed, quick)
    # Evaluated on the central crop of every image: prediction with test-time noise costs ~1 min per
    # megapixel on 2 CPU cores, and all 33 images in full would take most of the benchmark's time.
    side = 160 if quick else REAL_EVAL_CROP
    crops = [tuple(slice((n - min(n, side)) // 2, (n - min(n, side)) // 2 + min(n, side)) for n in d.image.shape)
             for d in data]
    images = [d.image[c] for d, c in zip(data, crops)]
    gt = [d.labels[c] for d, c in zip(data, crops)]
    labels = run_methods(model, images, gt, diameter, noise_passes, reference=False)
    out = {"real_nuclei": (images, gt, labels, diameter)}
    for line in sorted({d.cell_line for d in data}):
        idx = [i for i, d in enumerate(data) if d.cell_line == line]
        out[f"real_nuclei/{line}"] = ([images[i] for i in idx], [gt[i] for i in idx],
                                      {m: [l[i] for i in idx] if l else [] for m, l in labels.items()}, diameter)
    return out, model


def cost(model, quick: bool) -> List[Dict]:
    """segment()'s time per stage at its defaults, on one generated fluo_nuclei image per size: prediction
    (noise passes), the diameter measurement, the final clustering and foreground; plus the prediction alone
    with the paper's 64-feature-map network (untrained: its time does not depend on the weights)."""
    from cellulus_fast.models import UNet
    from cellulus_fast.predict import predict

    rows = []
    for size in ((96,) if quick else (512, 1024)):
        image = normalize(zoo("fluo_nuclei", num_images=1, size=size, seed=7).images[0][None].astype(np.float32))
        t0 = time.perf_counter()
        prediction = predict(model, image, num_noise_passes=2 if quick else NOISE_PASSES, device="cpu")
        t1 = time.perf_counter()
        diameter = estimate_diameter(prediction, image) or 32.0
        t2 = time.perf_counter()
        instances(prediction, derive_parameters(diameter), image=image)
        t3 = time.perf_counter()
        paper = UNet(num_fmaps=64).eval()
        predict(paper, image, num_noise_passes=2 if quick else NOISE_PASSES, device="cpu")
        t4 = time.perf_counter()
        rows.append(dict(size=size, predict=t1 - t0, diameter=t2 - t1, segment=t3 - t2, total=t3 - t0,
                         predict_paper=t4 - t3))
    return rows


def fmt(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}"


def render(results: Dict, meta: Dict) -> str:
    lines = ["# Quality", "",
             "CELLULUS (`cellulus-fast`) next to the baselines a user tries first, on the same held-out images.",
             f"Generated by `{meta['command']}` on {meta['date']} ({meta['machine']}; {meta['minutes']:.0f} min).",
             "Do not edit by hand: rerun the command. How it works: the docstring of `benchmarks/quality.py`;",
             "the conditions: `docs/datasets.md`.", "",
             f"Schedule (every condition, fixed): `{meta['schedule']}`; synthetic sizes: `{meta['sizes']}`; "
             f"{meta['noise_passes']} noise passes per value; seeds per synthetic condition: {meta['seeds']} "
             "(mean ± std over seeds, each seed new data and a new model; `real_nuclei`: one model). "
             f"`real_nuclei`: one model trained on its images, scored on the central {meta['real_crop']} px "
             "of each. Scores pooled over a condition's images; ± = std over seeds (ddof = 0).", "",
             "Columns: F1 at IoU 0.5 and 0.7, Cell Tracking Challenge SEG, mean IoU of the matched pairs at 0.5, "
             "IoU of the predicted with the true foreground, predicted / true objects (first seed). "
             "`oracle foreground` uses the true foreground: a diagnostic of the embeddings, not a method.", "",
             "| condition | images per seed | d (px) | method | F1@0.5 | F1@0.7 | SEG | mean IoU | fg IoU | objects |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    losses, margins, diameters = [], {}, []
    for condition, per_method in results.items():
        for method in METHODS:
            if method not in per_method:
                continue
            runs = per_method[method]
            cells = [fmt([r[k] for r in runs]) for k in ("f1_50", "f1_70", "seg", "mean_iou", "fg_iou")]
            name = f"**{method}**" if method in OURS else method
            lines.append(f"| {condition} | {runs[0]['n_images']} | {runs[0]['diameter']:.0f} | {name} | " +
                         " | ".join(cells) +
                         f" | {runs[0]['n_pred']} / {runs[0]['n_true']} |")
        ours = np.mean([r["f1_50"] for r in per_method["cellulus-fast"]])
        best = max(CLASSICAL, key=lambda m: np.mean([r["f1_50"] for r in per_method[m]]))
        best_f1 = np.mean([r["f1_50"] for r in per_method[best]])
        margins[condition] = (ours, best_f1, best)
        runs = per_method["cellulus-fast"]
        true_d = np.mean([r["true_diameter"] for r in runs])
        true_w = np.mean([r["true_weighted_diameter"] for r in runs])
        measured = [r["measured_diameter"] for r in runs if r.get("measured_diameter") is not None]
        diameters.append(f"| {condition} | {runs[0]['diameter']:.1f} | {true_d:.1f} | {true_w:.1f} | " +
                         (f"{fmt(measured)} | {100 * (np.mean(measured) / true_w - 1):+.0f}% |" if measured
                          else "none found | |"))
        if ours < best_f1:
            oracle = np.mean([r["f1_50"] for r in per_method["oracle foreground"]])
            losses.append(f"- {condition}: F1@0.5 {ours:.2f} against {best_f1:.2f} ({best}); with the true "
                          f"foreground our embeddings give {oracle:.2f}.")
    lines += ["", "## Goal: defaults vs the best classical baseline (F1@0.5)", "",
              "Goal (issue 12): ours >= best classical + 0.05 on every condition; median over the zoo >= 0.9.", "",
              "| condition | cellulus-fast (defaults) | best classical | margin |", "|---|---|---|---|"]
    for condition, (ours, best_f1, best) in margins.items():
        lines.append(f"| {condition} | {ours:.2f} | {best_f1:.2f} ({best}) | {ours - best_f1:+.2f} |")
    zoo_f1 = [m[0] for c, m in margins.items() if c in CONDITIONS]
    if zoo_f1:
        lines += ["", f"Median F1@0.5 of the defaults over the zoo conditions: {np.median(zoo_f1):.2f}."]
    lines += ["", "## Diameter: measured by segment() vs the truth", "",
              "Nominal d (what the table's given-d rows use); the true median equivalent diameter of the held-out "
              "objects, plain and area-weighted (each object counted with its area: what segment() measures, "
              "see `estimate_diameter`); the median of segment()'s per-image measurements (± over seeds) and its "
              "error against the area-weighted truth.", "",
              "| condition | nominal d | true | true, area-weighted | measured | error |",
              "|---|---|---|---|---|---|"] + diameters
    lines += ["", "## Where cellulus-fast loses (F1@0.5 below the best classical baseline)", ""]
    lines += losses or ["- nowhere"]
    if meta.get("cost"):
        lines += ["", "## Cost of segment() at its defaults (2 CPU cores, seconds per image)", "",
                  f"The benchmark's network (16 feature maps), {meta['noise_passes']} noise passes per value (each "
                  "pass predicts the image once per noise value; the uncertainty the foreground needs comes from "
                  "them), a generated fluo_nuclei image; last column: the prediction alone with the paper's "
                  "64-feature-map network.", "",
                  "| image | prediction | diameter measurement | clustering + foreground | total | prediction, 64 fmaps |",
                  "|---|---|---|---|---|---|"]
        for r in meta["cost"]:
            lines.append(f"| {r['size']} x {r['size']} | {r['predict']:.1f} | {r['diameter']:.1f} | "
                         f"{r['segment']:.1f} | {r['total']:.1f} | {r['predict_paper']:.1f} |")
    lines += ["", "## Thumbnails", "", "Left: image with the true labels; middle: cellulus-fast; right: Otsu + "
              "watershed (one crop of the first held-out image, label boundaries in yellow).", ""]
    for condition in results:
        if "/" not in condition:
            lines += [f"**{condition}**", "", f"![{condition}](quality/{condition}.png)", ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes; checks that every method runs")
    parser.add_argument("--out", type=Path, default=None,
                        help="where QUALITY.md etc. go (default: benchmarks/ for a full run; partial and quick "
                             "runs need --out, so they never replace the committed page)")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"seeds per synthetic condition (default {SEEDS}; 1 with --quick)")
    parser.add_argument("--models", type=Path, default=None,
                        help="keep the trained models in this folder and reuse those found there (default: a "
                             "temporary folder, trained afresh)")
    parser.add_argument("--conditions", nargs="*", default=list(CONDITIONS) + ["real_nuclei"])
    args = parser.parse_args(argv)
    unknown = set(args.conditions) - set(CONDITIONS) - {"real_nuclei"}
    if unknown or (args.seeds is not None and args.seeds < 1):
        parser.error(f"unknown conditions {sorted(unknown)}" if unknown else "--seeds must be >= 1")
    full = not args.quick and args.seeds is None and args.conditions == parser.get_default("conditions")
    if args.out is None and not full:
        parser.error("a quick or partial run needs --out DIR (the default, benchmarks/, holds the full run)")
    args.out = args.out or ROOT / "benchmarks"
    noise_passes = 2 if args.quick else NOISE_PASSES
    start = time.time()
    results: Dict[str, Dict[str, List[Dict]]] = {}
    thumbs, costs = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.models or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for condition in args.conditions:
            count = args.seeds or (1 if args.quick else SEEDS)
            seeds = range(count if condition != "real_nuclei" else 1)
            for seed in seeds:
                t = time.time()
                if condition == "real_nuclei":
                    out, model = real_condition(seed, args.quick, workdir, noise_passes)
                else:
                    out, model = synthetic_condition(condition, seed, args.quick, workdir, noise_passes)
                if not costs:  # timed once, with the first model, while nothing else runs
                    costs = cost(model, args.quick)
                for name, (images, gt, labels, diameter) in out.items():
                    measured = [m for m in labels["measured diameters"] if m is not None]
                    sizes = dict(diameter=diameter, true_diameter=equivalent_diameter(gt),
                                 true_weighted_diameter=equivalent_diameter(gt, weighted=True),
                                 measured_diameter=float(np.median(measured)) if measured else None, seed=seed)
                    for method in METHODS:
                        if labels[method]:  # the reference row is absent on real_nuclei
                            row = dict(scores(gt, labels[method]), **sizes)
                            results.setdefault(name, {}).setdefault(method, []).append(row)
                    if seed == 0:
                        thumbs[name] = (images[0], gt[0], {m: l[:1] for m, l in labels.items()})
                ours = results[condition]["cellulus-fast"][-1]
                wat = results[condition]["Otsu + watershed"][-1]
                print(f"[quality] {condition} seed {seed}: {time.time() - t:.0f} s; F1@0.5 ours {ours['f1_50']:.2f}, "
                      f"Otsu + watershed {wat['f1_50']:.2f}", flush=True)
    meta = {"command": " ".join(["bash .ci/quality"] + list(sys.argv[1:] if argv is None else argv)),
            "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
                       f"torch {torch.__version__}",
            "minutes": (time.time() - start) / 60, "schedule": QUICK_SCHEDULE if args.quick else SCHEDULE,
            "sizes": QUICK_SYNTHETIC if args.quick else SYNTHETIC, "noise_passes": noise_passes,
            "real_crop": 160 if args.quick else REAL_EVAL_CROP,
            "seeds": args.seeds or (1 if args.quick else SEEDS), "cost": costs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality").mkdir(exist_ok=True)
    for name, (image, gt, labels) in thumbs.items():
        if "/" not in name:
            thumbnail(args.out / "quality" / f"{name}.png", image, gt, labels)
    (args.out / "quality.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    (args.out / "QUALITY.md").write_text(render(results, meta))
    print(f"[quality] done in {meta['minutes']:.1f} min: {args.out / 'QUALITY.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
