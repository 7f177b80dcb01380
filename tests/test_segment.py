"""Prediction tiling, post-processing known answers, segment() contract and errors."""
import math
import warnings

import numpy as np
import pytest
import torch

import cellulus_fast
from cellulus_fast import checkpoint
from cellulus_fast.models import UNet
from cellulus_fast.predict import Prediction, predict
from cellulus_fast.data import normalize
from cellulus_fast.datasets import synthetic_embeddings
from cellulus_fast.evaluate import evaluate
from cellulus_fast.segment import (derive_parameters, equivalent_diameter, estimate_diameter, halo_correction,
                                   instances, segment, size_advice, size_filter)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return UNet(num_fmaps=4).eval()


@pytest.mark.parametrize("shape", [(101, 77), (64, 64), (130, 40)])
def test_tiled_equals_whole_image(model, shape):
    image = np.random.default_rng(1).random((1,) + shape).astype(np.float32)
    whole = predict(model, image, num_noise_passes=0, tile_size=1024)
    tiled = predict(model, image, num_noise_passes=0, tile_size=32, batch_size=3)
    np.testing.assert_allclose(tiled.offsets, whole.offsets, atol=1e-5)
    # and both equal one direct pass over the reflect-padded image where its size is valid
    h, w = (s // 2 * 2 for s in shape)
    direct = model(torch.from_numpy(np.pad(image[:, :h, :w], ((0, 0), (8, 8), (8, 8)), mode="reflect"))[None])
    crop = predict(model, image[:, :h, :w], num_noise_passes=0, tile_size=32)
    np.testing.assert_allclose(crop.offsets, direct[0].detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("size, tile_size, expected", [(320, 256, 160), (384, 256, 192), (100, 256, 100),
                                                       (101, 256, 102), (869, 256, 218), (256, 256, 256)])
def test_tiles_split_axes_evenly(model, size, tile_size, expected):
    from cellulus_fast.predict import _tile_shape, _tiles

    tile = _tile_shape(model, (size, 64), tile_size)
    assert tile == (expected, 64)
    padded = max(expected, -(-size // 2) * 2)
    tiles = list(_tiles((padded, 64), tile))
    covered = np.zeros(padded, int)
    for t in tiles:
        covered[t[0]] += 1
    assert covered.min() == 1 and len(tiles) == -(-size // tile_size)  # covered, fewest tiles


def test_noise_passes_give_uncertainty(model):
    image = np.random.default_rng(2).random((1, 48, 48)).astype(np.float32)
    a = predict(model, image, num_noise_passes=3, seed=5)
    b = predict(model, image, num_noise_passes=3, seed=5)
    clean = predict(model, image, num_noise_passes=0)
    assert np.array_equal(a.offsets, b.offsets) and a.uncertainty.shape == (48, 48)
    assert (a.uncertainty >= 0).all() and a.uncertainty.max() > 0 and clean.uncertainty.max() == 0
    emb = clean.embeddings()
    np.testing.assert_allclose(emb[0] - clean.offsets[0], np.arange(48)[:, None] * np.ones((1, 48)))


def test_derive_parameters_rule():
    p = derive_parameters(30.0)
    assert p.bandwidths == [15.0] and p.min_size == int(0.1 * math.pi * 900 / 4) and (p.grow, p.shrink) == (3, 6)
    p = derive_parameters(30.0, scale=2.0, bandwidth=[4, 8])
    assert p.bandwidths == [4.0, 8.0] and p.min_size == 4 * int(0.1 * math.pi * 900 / 4)
    for bad in (dict(object_diameter=0), dict(object_diameter=10, bandwidth=-1), dict(object_diameter=10, scale=0)):
        with pytest.raises(ValueError):
            derive_parameters(**bad)


def test_halo_correction_known_answer():
    labels = np.zeros((40, 40), np.int64)
    labels[10:30, 10:20] = 1
    labels[10:30, 20:30] = 2  # touching
    out = halo_correction(labels, grow=3, shrink=6)
    # grown by 3 then everything within 6 of the grown border cleared: a net erosion of 3 px outside
    assert out[13:27, 13:20].min() == 1 and out[13:27, 20:27].min() == 2
    assert (out[:13] == 0).all() and (out[:, :13] == 0).all() and (out[27:] == 0).all()
    assert (out[:, 27:] == 0).all()
    assert np.array_equal(halo_correction(labels, 3, 0), labels)


def test_size_filter_splits_drops_and_relabels():
    labels = np.zeros((20, 20), np.int64)
    labels[0:5, 0:5] = 7       # 25 px
    labels[10:12, 10:12] = 7   # a detached 4-px piece of the same label
    labels[15:20, 15:20] = 3   # 25 px
    out = size_filter(labels, min_size=5)
    assert sorted(np.unique(out)) == [0, 1, 2] and out[10, 10] == 0
    assert (out[0:5, 0:5] > 0).all() and (out[15:20, 15:20] > 0).all()


def test_empty_foreground_warns_and_returns_zeros(model):
    prediction = Prediction(offsets=np.zeros((2, 32, 32), np.float32), uncertainty=np.ones((32, 32), np.float32))
    with pytest.warns(UserWarning, match="constant"):
        out = instances(prediction, derive_parameters(10.0), image=np.ones((1, 32, 32), np.float32))
    assert out[0].shape == (32, 32) and out[0].max() == 0
    image = np.random.default_rng(3).random((40, 40)).astype(np.float32)
    with pytest.warns(UserWarning, match="empty foreground"):
        labels = segment(model, image, threshold=0.0, num_noise_passes=1, progress=False)
    assert labels.shape == (40, 40) and labels.dtype == np.uint16 and labels.max() == 0


def test_segment_contract_on_trained_demo_model(demo_run):
    _, out = demo_run
    from cellulus_fast.datasets import synthetic

    model_dir = out / "cells" / "model"
    images, truth = synthetic(num_images=2, size=(150, 170), num_cells=8, diameter=40.0, seed=9)
    labels = segment(model_dir / "checkpoint.pt", images, object_diameter=40.0, num_noise_passes=4,
                     progress=False)
    assert isinstance(labels, list) and [l.shape for l in labels] == [(150, 170)] * 2
    assert all(l.dtype == np.uint16 and l.max() >= 4 for l in labels)
    one = segment(model_dir, images[0], object_diameter=40.0, num_noise_passes=4, progress=False)
    assert isinstance(one, np.ndarray) and np.array_equal(one, labels[0])
    several = segment(model_dir, images[0], object_diameter=40.0, num_noise_passes=4, bandwidth=[10, 20],
                      progress=False)
    assert len(several) == 2 and all(s.shape == (150, 170) for s in several)
    scaled = segment(model_dir, images[0], object_diameter=40.0, num_noise_passes=4, scale=0.75,
                     progress=False)
    assert scaled.shape == (150, 170) and scaled.max() >= 4
    # the defaults: diameter measured on the image, "auto" foreground
    auto, prediction = segment(model_dir, images[0], num_noise_passes=4, progress=False, return_predictions=True)
    true = equivalent_diameter(truth[0])
    measured = estimate_diameter(prediction, normalize(images[0][None].astype(np.float32)))
    assert abs(measured / true - 1) < 0.2, (measured, true)
    assert evaluate(truth[0], auto, thresholds=0.5).pooled.at(0.5).f1 >= 0.8


def test_estimate_diameter_of_discs():
    for diameter in (16.0, 30.0):
        emb, fg, labels = synthetic_embeddings(size=256, num_cells=30, diameter=diameter, noise=1.0, seed=4)
        grid = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
        uncertainty = np.where(fg.numpy(), 1.0, 4.0).astype(np.float32)
        prediction = Prediction(offsets=(emb.numpy() - grid).astype(np.float32), uncertainty=uncertainty)
        image = np.where(labels > 0, 1.0, 0.1) + np.random.default_rng(5).normal(0, 0.05, labels.shape)
        measured = estimate_diameter(prediction, image[None].astype(np.float32))
        assert abs(measured / equivalent_diameter(labels) - 1) < 0.1, (diameter, measured)
    empty = Prediction(offsets=np.zeros((2, 32, 32), np.float32), uncertainty=np.ones((32, 32), np.float32))
    with pytest.warns(UserWarning):
        assert estimate_diameter(empty, np.zeros((1, 32, 32), np.float32)) is None
    with pytest.raises(ValueError, match="passes"):
        estimate_diameter(prediction, image[None], passes=0)
    # objects below the first pass's minimum size (80 px): found on the retry from half the start
    emb, fg, labels = synthetic_embeddings(size=128, num_cells=30, diameter=8.0, noise=0.5, seed=6)
    grid = np.stack(np.meshgrid(np.arange(128), np.arange(128), indexing="ij"))
    small = Prediction(offsets=(emb.numpy() - grid).astype(np.float32),
                       uncertainty=np.where(fg.numpy(), 1.0, 4.0).astype(np.float32))
    image = np.where(labels > 0, 1.0, 0.1) + np.random.default_rng(7).normal(0, 0.05, labels.shape)
    measured = estimate_diameter(small, image[None].astype(np.float32))
    assert abs(measured / equivalent_diameter(labels) - 1) < 0.15, measured


def test_size_advice_names_the_diameter_to_train_with():
    assert size_advice(16, 1.0, 16) is None and size_advice(64, 1.0, 16) is None
    assert "object_diameter=100" in size_advice(100, 1.0, 16)
    assert "object_diameter=20" in size_advice(10, 0.5, 16)  # 10 px on a grid resized by 0.5: 20 px images


def test_equivalent_diameter():
    labels = np.zeros((50, 50), np.int64)
    labels[:10, :10] = 1  # 100 px
    labels[20:40, 20:40] = 2  # 400 px
    labels[45:49, 45:49] = 3  # 16 px
    assert equivalent_diameter(labels) == pytest.approx(2 * np.sqrt(100 / np.pi))
    assert equivalent_diameter([labels, np.zeros((5, 5), np.int64)]) == equivalent_diameter(labels)
    assert equivalent_diameter(np.zeros((5, 5), np.int64)) is None and equivalent_diameter([]) is None
    # area-weighted: half of the 516 object pixels lie in the 400 px object
    assert equivalent_diameter(labels, weighted=True) == pytest.approx(2 * np.sqrt(400 / np.pi))
    assert equivalent_diameter(np.zeros((5, 5), np.int64), weighted=True) is None


def test_segment_errors(model, tmp_path):
    image = np.random.rand(40, 40).astype(np.float32)
    for bad, match in ((dict(num_noise_passes=-1), "num_noise_passes"), (dict(batch_size=0), "batch_size"),
                       (dict(fit_fraction=0.0), "fit_fraction"), (dict(object_diameter=-5), "object_diameter"),
                       (dict(foreground="magic"), "foreground"), (dict(bandwidth=-1.0), "bandwidth"),
                       (dict(min_size=-1), "min_size"), (dict(scale=0.0), "scale")):
        with pytest.raises(ValueError, match=match):
            segment(model, image, progress=False, **bad)
    # each message names the parameter (before: numpy/ufunc internals, "cannot convert float NaN")
    for bad, error, match in ((dict(bandwidth=np.ones((2, 2))), TypeError, "bandwidth"),
                              (dict(bandwidth=[]), ValueError, "bandwidth"),
                              (dict(threshold="0.5"), TypeError, "threshold"),
                              (dict(threshold=float("nan")), ValueError, "threshold"),
                              (dict(min_size=float("nan")), TypeError, "min_size"),
                              (dict(grow=float("nan")), ValueError, "grow"),
                              (dict(shrink=float("inf")), ValueError, "shrink"),
                              (dict(scale="2"), ValueError, "scale"), (dict(seed=-1), ValueError, "seed"),
                              (dict(num_noise_passes=0), ValueError, "num_noise_passes=0")):
        with pytest.raises(error, match=match):
            segment(model, image, progress=False, **bad)
    with pytest.raises(TypeError, match="model_or_checkpoint"):
        segment(object(), image, progress=False)
    # numpy scalars and 1-D arrays are numbers and lists of numbers
    params = derive_parameters(np.float32(20), bandwidth=np.array([4.0, 5.0]), min_size=np.int64(3))
    assert params.bandwidths == [4.0, 5.0] and params.min_size == 3
    assert derive_parameters(np.float32(20)).bandwidths == [10.0]
    with pytest.raises(ValueError, match="min_size|smaller|10"):
        segment(model, np.random.rand(10, 10).astype(np.float32), progress=False)
    with pytest.raises(ValueError, match="channel"):
        segment(model, [np.random.rand(2, 40, 40).astype(np.float32)], axes="CYX", progress=False)
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint"):
        segment(bogus, np.random.rand(40, 40), progress=False)
    # a checkpoint whose weights do not fit its model configuration
    state = {"model": UNet(num_fmaps=8).state_dict(), "model_config": UNet(num_fmaps=4).config.to_dict()}
    checkpoint.save_atomic(state, tmp_path / "incompatible.pt")
    with pytest.raises(ValueError, match="does not match"):
        cellulus_fast.load(tmp_path / "incompatible.pt")
    with pytest.raises(FileNotFoundError):
        cellulus_fast.load(tmp_path / "missing.pt")
