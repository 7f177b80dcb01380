"""A training run's folder: never overwritten unasked, locked while written, config.toml written with the
first checkpoint, resume refused when it would not continue the same run, divergence stopped."""
import importlib
import math
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from cellulus_fast import checkpoint
from cellulus_fast.checkpoint import FolderInUseError, locked_folder
from cellulus_fast.config import TrainConfig
from cellulus_fast.train import TrainingDiverged, train

train_module = importlib.import_module("cellulus_fast.train")  # the package exports the function train


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_folder_holding_a_run_is_refused_unless_overwrite(tiny_images, tmp_path, tiny):
    images, _ = tiny_images
    run = tmp_path / "run"
    train(images, run, **tiny, progress=False)
    before = _snapshot(run)
    with pytest.raises(FileExistsError, match="holds a run .*checkpoint.pt.*overwrite=True"):
        train(images, run, **{**tiny, "learning_rate": 5e-4}, progress=False)
    assert _snapshot(run) == before
    with pytest.raises(ValueError, match="not both"):
        train(images, run, **tiny, resume=True, overwrite=True, progress=False)
    # config.toml alone (a run written by an older version, say) also marks the folder as holding a run
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "config.toml").write_text("epochs = 1\n")
    with pytest.raises(FileExistsError, match="config.toml"):
        train(images, lone, **tiny, progress=False)
    result = train(images, run, **{**tiny, "learning_rate": 5e-4}, overwrite=True, progress=False)
    assert TrainConfig.from_toml(run / "config.toml").learning_rate == 5e-4
    assert checkpoint.read(run)["config"]["learning_rate"] == 5e-4 and len(result.losses) == 3
    assert (run / "loss.png").exists()


class _Interrupt(BaseException):
    """Stands for a kill / Ctrl-C in the middle of training."""


def _interrupt_at(monkeypatch, call):
    real, calls = train_module.oce_loss, []

    def oce_loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise _Interrupt()
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "oce_loss", oce_loss)


def test_a_run_stopped_before_its_first_checkpoint_leaves_the_folder_as_it_was(tiny_images, tmp_path, tiny,
                                                                             monkeypatch):
    images, _ = tiny_images
    old = tmp_path / "old"
    train(images, old, **tiny, progress=False)
    before = _snapshot(old)
    _interrupt_at(monkeypatch, 2)  # the first checkpoint is at step 3 (the end of epoch 1)
    with pytest.raises(_Interrupt):
        train(images, old, **{**tiny, "learning_rate": 5e-4}, overwrite=True, progress=False)
    assert _snapshot(old) == before  # not the new config beside the old checkpoint
    _interrupt_at(monkeypatch, 2)
    with pytest.raises(_Interrupt):
        train(images, tmp_path / "new", **tiny, progress=False)
    assert not (tmp_path / "new").exists()


def test_config_toml_is_written_with_the_first_checkpoint(tiny_images, tmp_path, tiny, monkeypatch):
    seen = []
    real = checkpoint.save_atomic

    def save_atomic(state, path):
        seen.append((path.parent / "config.toml").exists())
        return real(state, path)

    monkeypatch.setattr(checkpoint, "save_atomic", save_atomic)
    train(tiny_images[0], tmp_path / "run", **{**tiny, "epochs": 2}, progress=False)
    assert seen == [False, True]  # not there before the first checkpoint, there from it on


def test_a_locked_folder_is_refused(tiny_images, tmp_path, tiny):
    images, _ = tiny_images
    run = tmp_path / "run"
    run.mkdir()
    with locked_folder(run):  # a second lock in the same process conflicts too (flock per open file)
        with pytest.raises(FolderInUseError, match=str(run)):
            train(images, run, **tiny, progress=False)
        with pytest.raises(FolderInUseError):  # found before the images are read (these do not exist)
            train(tmp_path / "no-such-images", run, **tiny, progress=False)
    assert list(run.iterdir()) == []
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from cellulus_fast.checkpoint import locked_folder
        with locked_folder({str(run)!r}):
            print("locked", flush=True)
            time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUseError, match="another cellulus-fast run"):
            train(images, run, **tiny, progress=False)
    finally:
        holder.kill()  # the operating system releases the lock of a killed process
        holder.wait()
    assert list(run.iterdir()) == []
    train(images, run, **tiny, progress=False)
    assert (run / "checkpoint.pt").exists()


def test_resume_refuses_a_smaller_total_and_changed_options(tiny_images, tmp_path, tiny):
    images, _ = tiny_images
    run = tmp_path / "run"
    train(images, run, **{**tiny, "epochs": 2}, progress=False)  # 6 steps
    before = _snapshot(run)
    with pytest.raises(ValueError, match="at step 6, past the 3 steps"):
        train(images, run, **tiny, resume=True, progress=False)
    with pytest.raises(ValueError, match=r"steps_per_epoch 3 -> 2"):
        train(images, run, **{**tiny, "epochs": 4, "steps_per_epoch": 2}, resume=True, progress=False)
    with pytest.raises(ValueError, match=r"batch_size 2 -> 3, learning_rate 0.001 -> 0.01, seed 0 -> 1"):
        train(images, run, **{**tiny, "epochs": 3, "learning_rate": 1e-2, "batch_size": 3, "seed": 1},
              resume=True, progress=False)
    with pytest.raises(ValueError, match="images"):
        train(images[:3], run, **{**tiny, "epochs": 3}, resume=True, progress=False)
    assert _snapshot(run) == before
    # extending the run and changing where / how it is computed is allowed, and recorded
    result = train(images, run, **{**tiny, "epochs": 3}, num_workers=1, checkpoint_every=2, device="cpu",
                   resume=True, progress=False)
    assert len(result.losses) == 9
    record = TrainConfig.from_toml(run / "config.toml")
    assert (record.epochs, record.num_workers, record.checkpoint_every, record.resume) == (3, 1, 2, True)


def test_divergence_stops_at_the_first_non_finite_loss_and_keeps_the_last_finite_checkpoint(
        tiny_images, tmp_path, tiny):
    images, _ = tiny_images
    with pytest.raises(TrainingDiverged, match=r"the loss is nan at step \d+ \(the checkpoint of step \d+ is kept\)") \
            as error:  # at step 2 here: Adam's first step moves every weight by ~1e6
        train(images, tmp_path / "run", **{**tiny, "learning_rate": 1e6}, checkpoint_every=1, progress=False)
    assert issubclass(TrainingDiverged, FloatingPointError)
    step, kept = map(int, re.findall(r"step (\d+)", str(error.value)))
    state = checkpoint.read(tmp_path / "run")
    assert state["step"] == kept == step - 1 and all(math.isfinite(v) for v in state["losses"])
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    with pytest.raises(TrainingDiverged, match="no checkpoint was written"):
        train(images, tmp_path / "none", **{**tiny, "learning_rate": 1e6}, progress=False)
    assert not (tmp_path / "none").exists()


def test_non_finite_weights_are_never_saved(tiny_images, tmp_path, tiny, monkeypatch):
    real, calls = torch.optim.Adam.step, []

    def step(self, *args, **kwargs):  # the last step (3) follows a finite loss but overflows the weights
        out = real(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    with pytest.raises(TrainingDiverged, match="weights are not finite at step 3"):
        train(tiny_images[0], tmp_path / "run", **tiny, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_of_another_version_is_named_so(tiny_images, tmp_path, tiny):
    train(tiny_images[0], tmp_path / "run", **tiny, progress=False)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    for name, model_config in (("extra", {**state["model_config"], "kernel": 3}),
                               ("missing", {k: v for k, v in state["model_config"].items() if k != "depth"})):
        checkpoint.save_atomic({**state, "model_config": model_config}, tmp_path / f"{name}.pt")
        with pytest.raises(ValueError, match="not a cellulus-fast checkpoint of this version"):
            checkpoint.load(tmp_path / f"{name}.pt")
    checkpoint.save_atomic({k: v for k, v in state.items() if k != "optimizer"}, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(ValueError, match="of this version: it lacks optimizer"):
        train(tiny_images[0], tmp_path / "run", **{**tiny, "epochs": 2}, resume=True, progress=False)
