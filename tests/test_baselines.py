import numpy as np
import pytest
from skimage.draw import disk

from cellulus_fast.baselines import intensity_foreground, otsu_components, otsu_watershed
from cellulus_fast.evaluate import evaluate


def discs(centres, radius=12, shape=(96, 128)):
    labels = np.zeros(shape, np.int32)
    for k, c in enumerate(centres, start=1):
        labels[disk(c, radius, shape=shape)] = k
    return labels


def render(labels, seed=0):
    rng = np.random.default_rng(seed)
    return (100 + 1000 * (labels > 0) + rng.normal(0, 20, labels.shape)).astype(np.float32)


def test_separate_objects_found_by_both():
    gt = discs([(30, 30), (60, 90)])
    for method in (otsu_components, otsu_watershed):
        result = evaluate(gt, method(render(gt), object_diameter=24), thresholds=0.9)
        assert result.pooled.n_pred == 2 and result.pooled.at(0.9).f1 == 1.0


def test_touching_objects_split_by_watershed_only():
    gt = discs([(48, 50), (48, 73)])  # centres 23 px apart: the discs overlap, one blob
    image = render(gt)
    assert otsu_components(image, object_diameter=24).max() == 1
    split = otsu_watershed(image, object_diameter=24)
    assert split.max() == 2
    assert evaluate(gt, split, thresholds=0.7).pooled.at(0.7).f1 == 1.0


def test_min_size_and_holes():
    gt = discs([(48, 60)], radius=15)
    image = render(gt)
    image[46:50, 58:62] = 100  # a dark hole inside the object is filled
    image[5:7, 5:7] = 2000      # a 4-pixel speck is below 10% of a disc of diameter 30
    assert intensity_foreground(image)[48, 60]
    for method in (otsu_components, otsu_watershed):
        labels = method(image, object_diameter=30)
        assert labels.max() == 1 and labels[6, 6] == 0 and labels[48, 60] == 1


def test_constant_and_channels():
    assert otsu_components(np.ones((40, 40)), 10).max() == 0
    gt = discs([(30, 30)])
    two_channels = np.stack([render(gt), render(gt, seed=1)])
    assert otsu_watershed(two_channels, 24).max() == 1


@pytest.mark.parametrize("bad", [0, -3.0, float("nan")])
def test_bad_diameter(bad):
    with pytest.raises(ValueError, match="object_diameter"):
        otsu_watershed(np.zeros((32, 32)), bad)


@pytest.mark.parametrize("shape", [(32,), (32, 32, 3), (2, 3, 32, 32)])
def test_bad_shape(shape):
    with pytest.raises(ValueError, match="2-D"):  # channels-last RGB is refused, not misread
        otsu_components(np.zeros(shape), 10)
