"""The command line: train (flags and TOML), segment, evaluate; errors exit with code 2."""
import json
import os

import numpy as np
import tifffile
import torch

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


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("cellulus-fast "), err
    for word in words:
        assert word in err, (word, err)
    return err


def test_bad_train_input_is_one_line_exit_2_before_any_work(tmp_path, capsys):
    images = tmp_path / "img"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", synthetic(num_images=1, size=96, num_cells=6, diameter=30.0, seed=4)[0][0])
    out = tmp_path / "out"
    toml = tmp_path / "device.toml"
    toml.write_text("device = 0\n")
    cases = [(["--device", "banana"], "device must be 'cpu', 'cuda' or 'cuda:N'"),
             (["--config", str(toml)], "device must be a string"),
             (["--seed", str(2**64)], "seed must be an integer in [0, 2**63)")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "no CUDA GPU is available"))
    for flags, message in cases:
        assert main(["train", str(images), str(out), *flags]) == 2, flags
        _one_line_error(capsys, message)
        assert not out.exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", str(tmp_path / "no-such-images"), str(blocker)]) == 2  # the output is checked first
    _one_line_error(capsys, "is an existing file, not a folder")
    assert blocker.read_text() == "x"


def test_train_refuses_a_finished_run_unless_overwrite_and_reports_divergence(tmp_path, capsys):
    images = tmp_path / "img"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", synthetic(num_images=1, size=96, num_cells=6, diameter=30.0, seed=4)[0][0])
    flags = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--crop-size", "64", "--num-fmaps",
             "4", "--kappa", "5", "--milestones"]
    run = str(tmp_path / "run")
    assert main(["train", str(images), run, *flags]) == 0
    capsys.readouterr()
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    assert main(["train", str(images), run, *flags, "--learning-rate", "0.01"]) == 2
    _one_line_error(capsys, "holds a run", "--overwrite")
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before
    assert main(["train", str(images), run, *flags, "--learning-rate", "0.01", "--overwrite"]) == 0
    assert "learning_rate = 0.01" in (tmp_path / "run" / "config.toml").read_text()
    capsys.readouterr()
    assert main(["train", str(images), str(tmp_path / "diverged"), *flags, "--learning-rate", "1e6",
                 "--checkpoint-every", "1"]) == 2
    err = capsys.readouterr().err  # the progress bar, then one line
    assert "Traceback" not in err and err.splitlines()[-1].startswith(
        "cellulus-fast train: error: training diverged: the loss is nan at step "), err


def test_bad_segment_and_evaluate_outputs_are_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    # the checkpoint and images do not exist either: the output folder (and device) are checked first
    assert main(["segment", str(tmp_path / "nope.pt"), str(tmp_path / "img"), str(blocker)]) == 2
    _one_line_error(capsys, "output_dir", "existing file")
    assert main(["segment", str(tmp_path / "nope.pt"), str(tmp_path / "img"), str(tmp_path / "seg"),
                 "--device", "banana"]) == 2
    _one_line_error(capsys, "device must be")
    assert not (tmp_path / "seg").exists()
    assert main(["evaluate", str(tmp_path / "gt"), str(tmp_path / "gt"), "--output-dir", str(blocker / "m")]) == 2
    _one_line_error(capsys, "--output-dir", "existing file")
    assert blocker.read_text() == "x"


def test_evaluate_reads_labels_exactly(tmp_path, capsys):
    gt = np.zeros((32, 32), np.uint32)
    gt[:16], gt[16:] = 2**31 + 1, 2**31 + 2  # two objects whose ids float32 would merge
    pred = np.zeros((32, 32), np.uint16)
    pred[:16], pred[16:] = 1, 2
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    tifffile.imwrite(tmp_path / "pred.tif", pred)
    assert main(["evaluate", str(tmp_path / "gt.tif"), str(tmp_path / "pred.tif")]) == 0
    assert "SEG 1.000" in capsys.readouterr().out
    tifffile.imwrite(tmp_path / "float_labels.tif", pred.astype(np.float32))  # whole numbers: labels
    assert main(["evaluate", str(tmp_path / "gt.tif"), str(tmp_path / "float_labels.tif")]) == 0
    capsys.readouterr()
    tifffile.imwrite(tmp_path / "intensity.tif", pred.astype(np.float32) + 0.25)  # not labels: refused
    assert main(["evaluate", str(tmp_path / "gt.tif"), str(tmp_path / "intensity.tif")]) == 2
    _one_line_error(capsys, "intensity.tif has non-integer values")
