"""The command line: train (flags and TOML), segment, evaluate; errors exit with code 2."""
import json
import os

import numpy as np
import tifffile

from cellulus_fast.cli import main
from cellulus_fast.datasets import synthetic


def test_train_segment_evaluate(tmp_path, capsys):
    images, labels = synthetic(num_images=2, size=96, num_cells=6, diameter=30.0, seed=4)
    for folder, arrays in (("img", images), ("gt", labels)):
        (tmp_path / folder).mkdir()
        for i, a in enumerate(arrays):
            tifffile.imwrite(tmp_path / folder / f"t{i:03d}.tif", a)
    config = tmp_path / "train.toml"
    config.write_text("epochs = 1\nsteps_per_epoch = 2\nbatch_size = 2\ncrop_size = 64\nnum_fmaps = 8\n"
                      "kappa = 5.0\nmilestones = []\n")
    assert main(["train", str(tmp_path / "img"), str(tmp_path / "run"), "--config", str(config),
                 "--num-fmaps", "4", "--learning-rate", "0.001"]) == 0
    written = (tmp_path / "run" / "config.toml").read_text()
    assert "num_fmaps = 4" in written and "steps_per_epoch = 2" in written
    # preset < TOML < flags
    assert main(["train", str(tmp_path / "img"), str(tmp_path / "fast"), "--preset", "fast", "--config",
                 str(config), "--epochs", "2"]) == 0
    written = (tmp_path / "fast" / "config.toml").read_text()
    assert "num_fmaps = 8" in written and "learning_rate = 0.0003" in written and "epochs = 2" in written
    assert main(["segment", str(tmp_path / "run" / "checkpoint.pt"), str(tmp_path / "img"), str(tmp_path / "seg"),
                 "--object-diameter", "30", "--num-noise-passes", "2", "--overlay", "--save-uncertainty",
                 "--save-embeddings"]) == 0
    names = sorted(p.name for p in (tmp_path / "seg").iterdir())
    assert names == ["t000_embeddings.tif", "t000_labels.tif", "t000_overlay.png", "t000_uncertainty.tif",
                     "t001_embeddings.tif", "t001_labels.tif", "t001_overlay.png", "t001_uncertainty.tif"]
    assert (tmp_path / "seg" / "t000_labels.tif").stat().st_mode & 0o777 == 0o666 & ~_umask()
    label = tifffile.imread(tmp_path / "seg" / "t000_labels.tif")
    assert label.shape == (96, 96) and label.dtype == np.uint16
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "gt"), str(tmp_path / "gt"), "--output-dir", str(tmp_path / "m")]) == 0
    table = capsys.readouterr().out
    assert "threshold" in table and "SEG 1.000" in table
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics  # perfect self-match written
    assert (tmp_path / "m" / "metrics.csv").read_text().startswith("threshold")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_errors_exit_2_and_write_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    assert "error" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main(["segment", str(tmp_path / "nope.pt"), str(tmp_path / "empty"), str(tmp_path / "seg")]) == 2
    assert not (tmp_path / "seg").exists()
    a, b = np.zeros((10, 10), np.uint16), np.zeros((12, 10), np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", a)
    tifffile.imwrite(tmp_path / "b.tif", b)
    assert main(["evaluate", str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]) == 2
    assert "shape" in capsys.readouterr().err


def test_demo_refuses_a_non_empty_output_dir(tmp_path, capsys):
    (tmp_path / "earlier.txt").write_text("a finished run")
    assert main(["demo", "--output-dir", str(tmp_path), "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "overwrite" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier.txt"]
