"""Foreground rules: known answers, the halo case they exist for, and bad input."""
import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import disk

from cellulus_fast.datasets import synthetic_embeddings
from cellulus_fast.evaluate import evaluate
from cellulus_fast.foreground import intensity_foreground, refine_by_intensity, uncertainty_foreground
from cellulus_fast.predict import Prediction
from cellulus_fast.segment import derive_parameters, instances


def test_intensity_foreground_finds_a_bright_disc_with_a_hole():
    truth = np.zeros((64, 64), bool)
    truth[disk((32, 32), 12)] = True
    image = 100 + 900 * truth + np.random.default_rng(0).normal(0, 10, truth.shape)
    image[31:34, 31:34] = 100  # a dark hole inside is filled
    mask = intensity_foreground(image)
    assert (mask & truth).sum() / (mask | truth).sum() > 0.95 and mask[32, 32]
    assert not intensity_foreground(np.full((16, 16), 7.0)).any()


def test_uncertainty_foreground():
    unc = np.array([[1.0, 1.0, 5.0, 5.0]])
    assert uncertainty_foreground(unc).tolist() == [[True, True, False, False]]
    assert uncertainty_foreground(unc, threshold=6.0).all()
    assert not uncertainty_foreground(np.ones((3, 3))).any()


def test_refine_by_intensity_cuts_the_dark_halo_of_each_object():
    truth = np.zeros((60, 90), np.int64)
    truth[disk((30, 25), 10)] = 1
    truth[disk((30, 65), 10)] = 2
    halo = ndimage.grey_dilation(truth, size=9)  # objects grown by 4 px into the dark background
    image = 50 + np.where(truth == 1, 1000, 0) + np.where(truth == 2, 200, 0)  # a bright and a dim object
    refined = refine_by_intensity(halo, image)
    assert evaluate(truth, refined, thresholds=0.9).pooled.at(0.9).f1 == 1.0
    flat = np.zeros_like(halo)
    flat[5:15, 5:15] = 3  # no contrast inside: kept as it is
    assert np.array_equal(refine_by_intensity(flat, np.ones((60, 90))), flat)


@pytest.fixture(scope="module")
def halo_case():
    """Embeddings of a trained network on 40 discs, an uncertainty map low inside the objects *and* a 5 px
    halo around them (as the real maps are), and the intensity image."""
    emb, fg, labels = synthetic_embeddings(size=256, num_cells=40, diameter=24.0, noise=1.0, seed=1)
    grid = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij")).astype(np.float64)
    grown = ndimage.distance_transform_edt(~fg.numpy()) <= 5
    rng = np.random.default_rng(2)
    uncertainty = np.where(grown, 1.0, 4.0) + rng.normal(0, 0.1, grown.shape)
    prediction = Prediction(offsets=(emb.numpy() - grid).astype(np.float32), uncertainty=uncertainty.astype(np.float32))
    image = (0.1 + 0.9 * (labels > 0) + rng.normal(0, 0.05, labels.shape)).astype(np.float32)
    return prediction, image, labels


def test_intensity_rules_remove_the_halo(halo_case):
    prediction, image, labels = halo_case
    params = derive_parameters(24.0, grow=0.0, shrink=0.0)
    f1 = {}
    for rule in ("uncertainty", "intensity", "refined"):
        predicted = instances(prediction, params, foreground=rule, image=image)[0]
        assert predicted.shape == labels.shape
        f1[rule] = evaluate(labels, predicted, thresholds=0.8).pooled.at(0.8).f1
    assert f1["uncertainty"] < 0.5  # a 5 px halo around 24 px discs: IoU ~0.5
    assert f1["intensity"] >= 0.95 and f1["refined"] >= 0.95


def test_bad_rule_and_missing_image(halo_case):
    prediction, image, _ = halo_case
    params = derive_parameters(24.0)
    with pytest.raises(ValueError, match="foreground must be one of"):
        instances(prediction, params, foreground="magic", image=image)
    with pytest.raises(ValueError, match="needs the image"):
        instances(prediction, params, foreground="refined")
