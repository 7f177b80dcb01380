"""Tests for the synthetic data generators in cellulus_fast.datasets."""
import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from cellulus_fast.datasets import synthetic


@pytest.fixture(scope="module")
def default_data():
    return synthetic(num_images=2, size=128, num_cells=12, seed=3)


def test_shapes_and_dtypes(default_data):
    images, labels = default_data
    assert len(images) == len(labels) == 2
    for im, lb in zip(images, labels):
        assert im.shape == lb.shape == (128, 128)
        assert im.dtype == np.float32 and lb.dtype == np.int32
        assert np.isfinite(im).all()


def test_non_square_size():
    images, labels = synthetic(num_images=1, size=(64, 96), num_cells=5, seed=0)
    assert images[0].shape == labels[0].shape == (64, 96)


def test_reproducible_for_a_seed(default_data):
    images, labels = synthetic(num_images=2, size=128, num_cells=12, seed=3)
    for a, b in zip(images, default_data[0]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(labels, default_data[1]):
        np.testing.assert_array_equal(a, b)


def test_different_seeds_differ(default_data):
    images, labels = synthetic(num_images=2, size=128, num_cells=12, seed=4)
    assert not np.array_equal(images[0], default_data[0][0])
    assert not np.array_equal(labels[0], default_data[1][0])
    # the images of one call differ from each other too
    assert not np.array_equal(default_data[1][0], default_data[1][1])


def test_labels_consecutive_and_count():
    _, labels = synthetic(num_images=2, size=256, num_cells=40, seed=0)
    for lb in labels:
        ids = np.unique(lb)
        assert ids[0] == 0
        np.testing.assert_array_equal(ids[1:], np.arange(1, lb.max() + 1))
        assert 0.8 * 40 <= lb.max() <= 40


def test_each_label_is_one_connected_cell(default_data):
    for lb in default_data[1]:
        for k, sl in enumerate(ndi.find_objects(lb), start=1):
            assert ndi.label(lb[sl] == k)[1] == 1
            assert (lb == k).sum() > 20


def test_cells_touch_sometimes():
    _, labels = synthetic(num_images=2, size=256, num_cells=40, seed=0)
    touching = 0
    for lb in labels:
        # horizontally / vertically adjacent pixels of two different cells
        for a, b in ((lb[1:], lb[:-1]), (lb[:, 1:], lb[:, :-1])):
            touching += np.count_nonzero((a > 0) & (b > 0) & (a != b))
    assert touching > 0


def test_cells_brighter_than_background(default_data):
    for im, lb in zip(*default_data):
        assert im[lb > 0].mean() > 2 * im[lb == 0].mean()
        # every single cell is brighter than the background on average
        means = ndi.mean(im, lb, index=np.arange(1, lb.max() + 1))
        assert (means > im[lb == 0].mean()).all()


def test_fast():
    synthetic(num_images=1, size=64, num_cells=4, seed=0)  # warm up imports
    start = time.perf_counter()
    synthetic(num_images=4, size=256, num_cells=40, seed=1)
    assert time.perf_counter() - start < 2.0  # < 1 s on an idle machine; slack for loaded CI
