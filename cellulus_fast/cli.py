"""``cellulus-fast`` command line: train, segment, evaluate, demo."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np

from ._validate import check_device, check_output_folder
from .checkpoint import FolderInUseError
from .config import PRESETS, TrainConfig
from .foreground import RULES as FOREGROUND_RULES


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    """One --flag per TrainConfig field, same names (dashes for underscores); unset flags keep the preset's
    (or the TOML file's) value. The help shows the default of the "paper" preset and any other preset's."""
    defaults = TrainConfig()

    def shown(name: str, value: Any) -> str:
        value = list(value) if isinstance(value, tuple) else value
        words = {"steps_per_epoch": "one pass over the images' area", "checkpoint_every": "one epoch",
                 "scale": "from --object-diameter if given, else 1",
                 "object_diameter": "none: scale 1 unless --scale"}.get(name, value) if value is None else value
        others = [f"{preset}: {list(v) if isinstance(v, tuple) else v}" for preset, values in PRESETS.items()
                  if name in values for v in [values[name]]]
        return f"(default {words}" + ("; " + ", ".join(others) if others else "") + ")"

    for field in dataclasses.fields(TrainConfig):
        default = getattr(defaults, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, type=_bool, default=None, metavar="BOOL", help=shown(field.name, default))
        elif isinstance(default, tuple):
            parser.add_argument(flag, type=int, nargs="*", default=None, help=shown(field.name, default))
        elif field.name in ("steps_per_epoch", "checkpoint_every"):
            parser.add_argument(flag, type=int, default=None, help=shown(field.name, default))
        elif field.name in ("scale", "object_diameter"):
            parser.add_argument(flag, type=float, default=None, help=shown(field.name, default))
        elif field.name == "device":
            parser.add_argument(flag, default=None, help="(default: cuda if available, else cpu)")
        else:
            parser.add_argument(flag, type=type(default), default=None, help=shown(field.name, default))


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The preset's options, then the TOML file's, then the flags'."""
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name) is not None}
    base = TrainConfig.preset(args.preset).to_dict()
    if args.config:
        return TrainConfig.from_toml(args.config, base=base, **overrides)
    return TrainConfig.from_dict({**base, **overrides})


def _stem(name: str, index: int, taken: set) -> str:
    """A file-name stem for an input image name such as '/data/a.tif[page 3]' or 'image 2'."""
    base, _, rest = name.partition("[")
    stem = Path(base).stem if base and not base.startswith(("image ", "array")) else f"image_{index:03d}"
    page = re.sub(r"\D+", "_", rest).strip("_")
    stem = f"{stem}_{page}" if page else stem
    while stem in taken:
        stem += f"_{index}"
    taken.add(stem)
    return stem


def _write_tiff(path: Path, array: np.ndarray) -> None:
    import tifffile

    from .checkpoint import plain_file_mode

    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tif")
    os.fchmod(fd, plain_file_mode())
    os.close(fd)
    try:
        tifffile.imwrite(tmp, array)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    result = train(args.images, args.output_dir, config=_train_config(args), overwrite=args.overwrite)
    print(f"checkpoint: {result.checkpoint}")
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:
    from skimage.io import imsave

    from . import checkpoint
    from .data import load_images
    from .overlay import overlay
    from .segment import segment

    out = check_output_folder(args.output_dir)  # these fail before any work, and nothing is written
    check_device(args.device)
    model = checkpoint.load(args.checkpoint)
    images, names = load_images(args.images, return_names=True)
    labels, predictions = segment(model, images, object_diameter=args.object_diameter, bandwidth=args.bandwidth,
                                  threshold=args.threshold, foreground=args.foreground,
                                  num_noise_passes=args.num_noise_passes,
                                  grow=args.grow, shrink=args.shrink, min_size=args.min_size, scale=args.scale,
                                  device=args.device, batch_size=args.batch_size, return_predictions=True)
    out.mkdir(parents=True, exist_ok=True)
    taken: set = set()
    for i, (image, name, label, prediction) in enumerate(zip(images, names, labels, predictions)):
        stem = _stem(name, i, taken)
        hypotheses = label if isinstance(label, list) else [label]
        for k, lab in enumerate(hypotheses):
            suffix = f"_bw{k}" if len(hypotheses) > 1 else ""
            _write_tiff(out / f"{stem}_labels{suffix}.tif", lab)
            if args.overlay:
                imsave(out / f"{stem}_overlay{suffix}.png", overlay(image[0], lab), check_contrast=False)
        if args.save_uncertainty:
            _write_tiff(out / f"{stem}_uncertainty.tif", prediction.uncertainty)
        if args.save_embeddings:
            _write_tiff(out / f"{stem}_embeddings.tif", prediction.embeddings())
        print(f"{name}: {int(hypotheses[0].max())} objects -> {out / (stem + '_labels.tif')}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, load_labels, write_results

    if args.output_dir:
        check_output_folder(args.output_dir, "--output-dir")
    gt, pred = load_labels(args.gt), load_labels(args.pred)  # exactly: uint32 ids >= 2**31 stay apart
    result = evaluate(gt, pred, thresholds=args.thresholds) if args.thresholds else evaluate(gt, pred)
    print(result.format_table())
    if args.output_dir:
        csv_path, json_path = write_results(result, args.output_dir)
        print(f"written: {csv_path}, {json_path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.output_dir, quick=args.quick, overwrite=args.overwrite)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellulus-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model on unlabelled images")
    p.add_argument("images", help="TIFF file, folder, glob pattern or Cell Tracking Challenge folder")
    p.add_argument("output_dir")
    p.add_argument("--config", help="TOML file with training options (flags override it)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                   help="named schedule the other options start from (default: paper; fast: ~5 min on a CPU)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run OUTPUT_DIR holds (its checkpoint.pt / config.toml); without it (or "
                        "--resume true) such a folder is refused")
    _add_train_options(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("segment", help="segment images with a trained model, writing label TIFFs")
    p.add_argument("checkpoint")
    p.add_argument("images")
    p.add_argument("output_dir")
    p.add_argument("--object-diameter", type=float, default=None,
                   help="typical object diameter in px (default: measured on each image)")
    p.add_argument("--bandwidth", type=float, nargs="+", default=None,
                   help="mean-shift bandwidth(s) in px of the network's grid (default: half the diameter; "
                        "several give one label image each)")
    p.add_argument("--threshold", type=float, default=None,
                   help="uncertainty threshold of the foreground (default: Otsu's threshold of each map)")
    p.add_argument("--foreground", choices=FOREGROUND_RULES, default="auto",
                   help="foreground rule (see cellulus_fast.foreground; 'uncertainty' is the paper's rule)")
    p.add_argument("--num-noise-passes", type=int, default=16,
                   help="test-time noise passes per noise value, for the uncertainty (default 16)")
    p.add_argument("--grow", type=float, default=3.0, help="halo correction in px, --foreground uncertainty only (default %(default)s)")
    p.add_argument("--shrink", type=float, default=6.0, help="halo correction in px, --foreground uncertainty only (default %(default)s)")
    p.add_argument("--min-size", type=int, default=None,
                   help="smallest object kept, px (default: 10%% of the area of a disc of the diameter)")
    p.add_argument("--scale", type=float, default=None,
                   help="resize images by this factor first (default: the scale the model was trained at)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles predicted at once (default 4)")
    p.add_argument("--save-uncertainty", action="store_true", help="also write the uncertainty map TIFF")
    p.add_argument("--save-embeddings", action="store_true", help="also write the embeddings TIFF")
    p.add_argument("--overlay", action="store_true", help="also write an overlay PNG per image")
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("evaluate", help="score predicted labels against ground truth")
    p.add_argument("gt")
    p.add_argument("pred")
    p.add_argument("--output-dir", help="write metrics.csv and metrics.json here")
    p.add_argument("--thresholds", type=float, nargs="+", default=None)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("demo", help="generate data, train, segment and evaluate end to end")
    p.add_argument("--output-dir", default="demo_output")
    p.add_argument("--quick", action="store_true", help="a shorter schedule (for tests)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier demo run")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # Bad input, a folder in use, a diverged training run (FloatingPointError): one line, no traceback.
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, PermissionError, FolderInUseError,
            FloatingPointError) as error:
        print(f"cellulus-fast {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
