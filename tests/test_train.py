"""Training: quality on synthetic cells, exact resume, DDP, config round trip, bad input."""
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import tifffile
import torch

import cellulus_fast
from cellulus_fast import checkpoint
from cellulus_fast.config import PRESETS, TrainConfig, scale_for_diameter
from cellulus_fast.data import normalize
from cellulus_fast.datasets import synthetic
from cellulus_fast.predict import predict
from cellulus_fast.train import train


def embedding_spread(model, image, labels):
    """(mean over cells of the median distance of a cell's pixel embeddings to their median,
        mean over cells of the distance from a cell's median embedding to the nearest other cell's)."""
    emb = predict(model, normalize(image[None]), num_noise_passes=0).embeddings()
    centres, spreads = [], []
    for cell in range(1, labels.max() + 1):
        e = emb[:, labels == cell]
        centres.append(np.median(e, 1))
        spreads.append(np.median(np.linalg.norm(e - centres[-1][:, None], axis=0)))
    centres = np.array(centres)
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.diag([np.inf] * len(centres))
    return float(np.mean(spreads)), float(gaps.min(1).mean())


def test_loss_decreases_and_cells_embed_tightly(demo_run):
    _, out = demo_run
    losses = np.loadtxt(out / "cells" / "model" / "loss.csv", delimiter=",", skiprows=1)[:, 2]
    assert losses[-20:].mean() < 0.97 * losses[:20].mean()
    trained = cellulus_fast.load(out / "cells" / "model")
    untrained = cellulus_fast.UNet(**{k: v for k, v in trained.config.to_dict().items()})
    images, labels = synthetic(num_images=1, size=256, num_cells=16, diameter=40.0, seed=77)
    before, _ = embedding_spread(untrained, images[0], labels[0])
    after, gap = embedding_spread(trained, images[0], labels[0])
    # pixels of one cell move towards one point (an untrained net leaves them at their coordinates) ...
    assert after < 0.7 * before, (before, after)
    # ... and one cell's embeddings are far tighter than the distance to the next cell's
    assert after < 0.25 * gap, (after, gap)


def test_resume_reproduces_uninterrupted_run(tiny_images, tmp_path, tiny):
    images, _ = tiny_images
    full = train(images, tmp_path / "full", **{**tiny, "epochs": 2}, progress=False)
    train(images, tmp_path / "resumed", **tiny, progress=False)  # stops after epoch 1 (3 steps)
    assert TrainConfig.from_toml(tmp_path / "resumed" / "config.toml").epochs == 1
    state = checkpoint.read(tmp_path / "resumed")
    assert state["step"] == 3 and set(state) >= {"model", "optimizer", "scheduler", "config", "torch_rng_state"}
    resumed = train(images, tmp_path / "resumed", **{**tiny, "epochs": 2}, resume=True, progress=False)
    assert len(full.losses) == len(resumed.losses) == 6
    assert full.losses == resumed.losses  # exactly, not approximately
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    # config.toml records the run as it went on: 2 epochs, resumed
    assert TrainConfig.from_toml(tmp_path / "resumed" / "config.toml") == TrainConfig(**tiny).replace(
        epochs=2, resume=True)


def test_outputs_and_load(tiny_images, tmp_path, tiny):
    images, _ = tiny_images
    result = train(images, tmp_path, **tiny, checkpoint_every=1, progress=False)
    assert {p.name for p in tmp_path.iterdir()} >= {"checkpoint.pt", "loss.csv", "loss.png", "config.toml"}
    assert not list(tmp_path.glob("*.tmp*"))
    rows = (tmp_path / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,loss" and len(rows) == 4
    model = cellulus_fast.load(result.checkpoint)
    x = torch.rand(1, 1, 64, 64)
    assert torch.equal(model(x), result.model(x))
    assert TrainConfig.from_toml(tmp_path / "config.toml") == TrainConfig(**{**tiny, "checkpoint_every": 1})


def test_config_toml_round_trip_and_errors(tmp_path):
    config = TrainConfig(epochs=3, milestones=(1, 2), nonlinearity="gaussian", detach_reference=True,
                         device="cpu", learning_rate=1e-3)
    path = tmp_path / "c.toml"
    path.write_text(config.to_toml())
    assert TrainConfig.from_toml(path) == config
    assert TrainConfig.from_toml(path, epochs=7).epochs == 7
    path.write_text("epochs = 2\nbogus = 1\n")
    with pytest.raises(ValueError, match="bogus"):
        TrainConfig.from_toml(path)
    for bad, match in (({"epochs": 0}, "epochs"), ({"density": 2.0}, "density"), ({"kappa": 0.5}, "kappa"),
                       ({"learning_rate": -1.0}, "learning_rate"), ({"nonlinearity": "x"}, "nonlinearity"),
                       ({"batch_size": 1.5}, "batch_size"), ({"resume": 1}, "resume")):
        with pytest.raises((ValueError, TypeError), match=match):
            TrainConfig(**bad)


def test_option_types_are_checked_with_messages_naming_them():
    for bad, error, match in (({"milestones": "20"}, TypeError, "milestones must be a list of epoch numbers"),
                              ({"milestones": 20}, TypeError, "milestones must be a list"),
                              ({"milestones": ("a",)}, TypeError, "milestones must be a list"),
                              ({"milestones": (0,)}, ValueError, r"integers >= 1\), got \(0,\)"),
                              ({"epochs": 2.0}, TypeError, "epochs must be an integer >= 1, got 2.0"),
                              ({"num_references": 2.5}, TypeError, "num_references must be an integer"),
                              ({"seed": 2**64}, ValueError, r"seed must be an integer in \[0, 2\*\*63\)"),
                              ({"seed": -1}, ValueError, "seed"),
                              ({"learning_rate": "1e-3"}, TypeError, "learning_rate must be a number > 0"),
                              ({"device": "banana"}, ValueError, "device must be 'cpu', 'cuda' or 'cuda:N'"),
                              ({"device": 0}, TypeError, "device must be a string"),
                              ({"device": "mps"}, ValueError, "device must be")):
        with pytest.raises(error, match=match):
            TrainConfig(**bad)
    # numpy scalars are numbers like any other, and are stored as plain Python ones
    config = TrainConfig(epochs=np.int64(3), learning_rate=np.float32(0.5), kappa=np.float64(5),
                         milestones=[np.int32(2)], device="cuda:1")  # checked for syntax, not for a GPU
    assert (config.epochs, config.learning_rate, config.kappa, config.milestones) == (3, 0.5, 5.0, (2,))
    assert type(config.epochs) is int and type(config.learning_rate) is float
    assert "epochs = 3\n" in config.to_toml()


def test_presets(tmp_path, tiny_images):
    assert TrainConfig.preset("paper") == TrainConfig()
    fast = TrainConfig.preset("fast", epochs=3)
    assert (fast.num_fmaps, fast.steps_per_epoch, fast.epochs, fast.learning_rate) == (16, 100, 3, 3e-4)
    path = tmp_path / "c.toml"
    path.write_text("batch_size = 2\n")
    from_file = TrainConfig.from_toml(path, base=PRESETS["fast"], epochs=5)
    assert (from_file.num_fmaps, from_file.batch_size, from_file.epochs) == (16, 2, 5)
    with pytest.raises(ValueError, match="preset must be one of"):
        TrainConfig.preset("slow")
    with pytest.raises(ValueError, match="preset must be one of"):
        train(tiny_images[0], tmp_path / "a", preset="slow")
    with pytest.raises(ValueError, match="not both"):
        train(tiny_images[0], tmp_path / "b", preset="fast", config=TrainConfig())
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    result = train(tiny_images[0], tmp_path / "run", preset="fast", epochs=1, steps_per_epoch=2, crop_size=64,
                   milestones=(), kappa=5.0, progress=False)
    written = TrainConfig.from_toml(tmp_path / "run" / "config.toml")
    assert written.num_fmaps == 16 and written.learning_rate == 3e-4 and len(result.losses) == 2
    with pytest.warns(UserWarning, match=r"milestones \[15\] are not before the last epoch"):
        train(tiny_images[0], tmp_path / "late", preset="fast", epochs=2, steps_per_epoch=1, crop_size=64,
              kappa=5.0, progress=False)


def test_scale_is_trained_recorded_and_reapplied(tiny_images, tmp_path, tiny):
    images, _ = tiny_images
    result = train(images, tmp_path / "run", scale=0.75, progress=False, **tiny)
    assert result.model.training_scale == 0.75
    assert TrainConfig.from_toml(tmp_path / "run" / "config.toml").scale == 0.75
    loaded = checkpoint.load(tmp_path / "run")
    assert loaded.training_scale == 0.75
    labels, prediction = cellulus_fast.segment(loaded, images[0], object_diameter=30.0, num_noise_passes=1,
                                               progress=False, return_predictions=True)
    assert labels.shape == images[0].shape  # back on the input grid
    assert prediction.uncertainty.shape == (72, 72)  # predicted on the training grid: 96 px x 0.75
    with pytest.warns(UserWarning, match="trained at scale 0.75"):
        cellulus_fast.segment(loaded, images[0], object_diameter=30.0, num_noise_passes=1, scale=1.0,
                              progress=False)
    for bad in (0, -1.0, float("nan"), 100, "2", True):
        with pytest.raises(ValueError, match="scale must be"):
            TrainConfig(scale=bad)
        with pytest.raises(ValueError, match="scale must be"):
            cellulus_fast.segment(loaded, images[0], scale=bad, progress=False)
    with pytest.raises(ValueError, match="field of view"):
        train(images, tmp_path / "small", scale=0.1, progress=False, **tiny)
    assert not (tmp_path / "small").exists()


def test_object_diameter_chooses_the_scale(tiny_images, tmp_path, tiny):
    # objects of 1-4x the 16 px field of view stay as they are; others are brought to the nearest end
    assert [scale_for_diameter(d) for d in (8, 16, 40, 64, 128)] == [2.0, 1.0, 1.0, 1.0, 0.5]
    assert scale_for_diameter(1000) == pytest.approx(0.064) and scale_for_diameter(0.5) == 16.0
    assert TrainConfig(object_diameter=128).training_scale == 0.5
    assert TrainConfig(object_diameter=128, scale=0.75).training_scale == 0.75  # a given scale wins
    assert TrainConfig().training_scale == 1.0
    assert TrainConfig.preset("fast").replace(object_diameter=8).training_scale == 2.0
    for bad, error in ((0, ValueError), (-3.0, ValueError), (float("nan"), ValueError), ("20", TypeError)):
        with pytest.raises(error, match="object_diameter"):
            TrainConfig(object_diameter=bad)
    images, _ = tiny_images  # 96 px images: at scale 0.5, 48 px (still above the field of view)
    result = train(images, tmp_path / "run", object_diameter=128.0, progress=False, **tiny)
    assert result.model.training_scale == 0.5
    recorded = TrainConfig.from_toml(tmp_path / "run" / "config.toml")
    assert recorded.object_diameter == 128.0 and recorded.training_scale == 0.5
    assert checkpoint.load(tmp_path / "run").training_scale == 0.5
    labels, prediction = cellulus_fast.segment(result.model, images[0], object_diameter=30.0, num_noise_passes=1,
                                               progress=False, return_predictions=True)
    assert labels.shape == images[0].shape and prediction.uncertainty.shape == (48, 48)
    # the scale as used decides the run: resuming it with scale=0.5 given directly continues it
    more = train(images, tmp_path / "run", scale=0.5, resume=True, progress=False, **dict(tiny, epochs=2))
    assert len(more.losses) == 2 * tiny["steps_per_epoch"]
    with pytest.raises(ValueError, match="scale 0.5 -> 1.0"):
        train(images, tmp_path / "run", resume=True, progress=False, **dict(tiny, epochs=3))


def test_outputs_are_readable_as_the_umask_allows_and_logs_are_throttled(tiny_images, tmp_path, tiny):
    from cellulus_fast._progress import LOG_INTERVAL, progress_bar

    old = os.umask(0o022)
    try:
        train(tiny_images[0], tmp_path / "run", progress=False, **tiny)
    finally:
        os.umask(old)
    for name in ("checkpoint.pt", "config.toml", "loss.csv"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o644, name
    import io

    bar = progress_bar(range(3), file=io.StringIO())  # stderr is not a terminal under pytest
    assert bar.mininterval == LOG_INTERVAL
    bar.close()


def _bad_sources(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    text = tmp_path / "notes.tif"
    text.write_text("not an image")
    nan = np.random.rand(64, 64).astype(np.float32)
    nan[3, 3] = np.nan
    return [(empty, None, (FileNotFoundError, ValueError), "empty|no .*found|match"),
            (text, None, ValueError, "notes.tif"),
            ([np.random.rand(1, 64, 64), np.random.rand(2, 64, 64)], "CYX", ValueError, "channel"),
            ([nan], None, ValueError, "NaN|nan|finite"),
            ([np.ones((64, 64))], None, ValueError, "constant"),
            ([np.random.rand(10, 10)], None, ValueError, "10")]


def test_bad_input_fails_before_writing(tmp_path, tiny):
    for i, (source, axes, error, match) in enumerate(_bad_sources(tmp_path)):
        out = tmp_path / f"out{i}"
        with pytest.raises(error, match=match):
            train(source, out, axes=axes, **tiny, progress=False)
        assert not out.exists()


def test_constant_images_are_skipped_with_a_warning(tiny_images, tmp_path, tiny):
    images, _ = tiny_images
    with pytest.warns(UserWarning, match="constant"):
        train(images + [np.zeros((96, 96), np.float32)], tmp_path, **tiny, progress=False)


def test_an_output_dir_that_is_a_file_is_refused_before_any_work(tiny_images, tmp_path, tiny):
    blocker = tmp_path / "file"
    blocker.write_text("")
    missing_images = tmp_path / "no-such-images"  # would fail too, but only once the images are read
    with pytest.raises(FileExistsError, match="is inside .*file, which is an existing file"):
        train(missing_images, blocker / "out", **tiny, progress=False)
    with pytest.raises(FileExistsError, match="file is an existing file, not a folder"):
        train(missing_images, blocker, **tiny, progress=False)
    assert blocker.read_text() == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_device_that_is_not_there_is_refused_before_any_work(tmp_path, tiny):
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        train(tmp_path / "no-such-images", tmp_path / "out", **tiny, device="cuda", progress=False)
    assert not (tmp_path / "out").exists()


def test_resume_refuses_a_different_model(tiny_images, tmp_path, tiny):
    images, _ = tiny_images
    train(images, tmp_path, **tiny, progress=False)
    with pytest.raises(ValueError, match="different model"):
        train(images, tmp_path, **{**tiny, "num_fmaps": 8}, resume=True, progress=False)


def test_ddp_two_cpu_processes_hold_identical_weights(tiny_images, tmp_path, tiny):
    images, _ = tiny_images
    data = tmp_path / "data"
    data.mkdir()
    for i, image in enumerate(images):
        tifffile.imwrite(data / f"{i}.tif", image)
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import os, torch
        from cellulus_fast.train import train
        result = train({str(data)!r}, {str(tmp_path / 'out')!r}, progress=False, device="cpu", **{tiny!r})
        torch.save(result.model.state_dict(), {str(tmp_path)!r} + f"/rank{{os.environ['RANK']}}.pt")
        torch.distributed.destroy_process_group()
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    "29517", str(script)], check=True, env=env, capture_output=True, timeout=300)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    initial = cellulus_fast.UNet(num_fmaps=tiny["num_fmaps"]).state_dict()
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name])
    assert any(not torch.equal(ranks[0][n], initial[n].to(ranks[0][n].dtype)) for n in ranks[0])  # it trained
    assert (tmp_path / "out" / "checkpoint.pt").exists()


def test_num_workers_and_amp(tiny_images, tmp_path, tiny):
    images, _ = tiny_images
    serial = train(images, tmp_path / "a", **tiny, progress=False)
    workers = train(images, tmp_path / "b", **tiny, num_workers=2, progress=False)
    assert serial.losses == workers.losses  # batches are a function of (seed, step), wherever they are made
    mixed = train(images, tmp_path / "c", **tiny, amp=True, progress=False)  # bfloat16 autocast on CPU
    assert all(np.isfinite(mixed.losses)) and len(mixed.losses) == 3
