"""Foreground rules: known answers, the halo case they exist for, and bad input."""
import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.draw import disk

from cellulus_fast.datasets import synthetic_embeddings
from cellulus_fast.evaluate import evaluate
from cellulus_fast.data import rescale
from cellulus_fast.foreground import (intensity_foreground, judge_detections, noise_sigma, refine_by_intensity,
                                     smoothed_noise, uncertainty_foreground)
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
    halo around them (as the real maps are), and the intensity image. As the trained network does (its
    loss pulls background within kappa towards objects), halo pixels embed with their nearest object."""
    emb, fg, labels = synthetic_embeddings(size=256, num_cells=40, diameter=24.0, noise=1.0, seed=1)
    grid = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij")).astype(np.float64)
    distance, (iy, ix) = ndimage.distance_transform_edt(~fg.numpy(), return_indices=True)
    grown = distance <= 5
    emb = emb.numpy()
    emb[:, grown] = emb[:, iy[grown], ix[grown]]  # the embedding of the nearest object pixel
    emb = torch.from_numpy(emb)
    rng = np.random.default_rng(2)
    uncertainty = np.where(grown, 1.0, 4.0) + rng.normal(0, 0.1, grown.shape)
    prediction = Prediction(offsets=(emb.numpy() - grid).astype(np.float32), uncertainty=uncertainty.astype(np.float32))
    image = (0.1 + 0.9 * (labels > 0) + rng.normal(0, 0.05, labels.shape)).astype(np.float32)
    return prediction, image, labels


def test_intensity_rules_remove_the_halo(halo_case):
    prediction, image, labels = halo_case
    params = derive_parameters(24.0, grow=0.0, shrink=0.0)
    f1 = {}
    for rule in ("uncertainty", "intensity", "refined", "auto"):
        predicted = instances(prediction, params, foreground=rule, image=image)[0]
        assert predicted.shape == labels.shape
        f1[rule] = evaluate(labels, predicted, thresholds=0.8).pooled.at(0.8).f1
    assert f1["uncertainty"] < 0.5  # a 5 px halo around 24 px discs: IoU ~0.5
    assert f1["intensity"] >= 0.95 and f1["refined"] >= 0.95 and f1["auto"] >= 0.95


def test_bad_rule_and_missing_image(halo_case):
    prediction, image, _ = halo_case
    params = derive_parameters(24.0)
    with pytest.raises(ValueError, match="foreground must be one of"):
        instances(prediction, params, foreground="magic", image=image)
    with pytest.raises(ValueError, match="needs the image"):
        instances(prediction, params, foreground="refined")


def test_noise_sigma_measures_the_noise_not_the_edges():
    rng = np.random.default_rng(0)
    clean = np.zeros((200, 200))
    clean[disk((100, 100), 60)] = 1000.0  # a strong edge
    clean += np.linspace(0, 300, 200)[None]  # and a ramp: neither is noise
    image = clean + rng.normal(0, 20.0, clean.shape)
    lo, hi = np.percentile(image, (1, 99.8))  # grey() normalises so
    assert noise_sigma(image) == pytest.approx(20.0 / (hi - lo), rel=0.05)
    assert noise_sigma(clean) < 0.02 * noise_sigma(image)


def _scene(rng):
    """Detections as the uncertainty rule gives them on a 200 x 300 image, each with its true object:
    1 a bright nucleus plus a 5 px dark halo (-> cut to the nucleus), 2 a membrane-stained cell: bright
    rim, interior as dark as the background (-> kept whole), 3 a cell filled with cytoplasm, dimmer at the
    rim (-> kept whole), 4 a patch of background (-> dropped)."""
    shape = (200, 300)
    labels, truth = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    image = np.full(shape, 100.0)
    rr, cc = disk((50, 50), 12, shape=shape)
    truth[rr, cc] = 1
    image[rr, cc] = 600.0
    labels[ndimage.distance_transform_edt(truth != 1) <= 5] = 1
    cell = np.zeros(shape, bool)
    cell[disk((50, 150), 22, shape=shape)] = True
    labels[cell], truth[cell] = 2, 2
    image[cell & (ndimage.distance_transform_edt(cell) <= 3)] = 700.0
    cyto = np.zeros(shape, bool)
    cyto[disk((140, 80), 25, shape=shape)] = True
    labels[cyto], truth[cyto] = 3, 3
    image[cyto] = 400.0 + 8.0 * np.minimum(ndimage.distance_transform_edt(cyto), 20)[cyto]
    labels[120:160, 200:260] = 4
    image = ndimage.gaussian_filter(image, 1.0) + rng.normal(0, 10.0, shape)
    return labels, truth, image


def test_judge_detections_cuts_halos_keeps_cells_drops_background():
    labels, truth, image = _scene(np.random.default_rng(1))
    judged = judge_detections(labels, image)
    assert set(np.unique(judged)) == {0, 1, 2, 3}  # the background patch is gone
    for k in (1, 2, 3):
        iou = ((judged == k) & (truth == k)).sum() / ((judged == k) | (truth == k)).sum()
        assert iou > 0.9, (k, iou)
    # the refined rule cuts the membrane cell to its rim
    refined = refine_by_intensity(labels, image)
    assert ((refined == 2) & (truth == 2)).sum() / (truth == 2).sum() < 0.5


def test_judge_detections_without_background_keeps_whole_cells():
    # packed tissue: no pixel outside the detections, nothing is background-like, nothing is cut
    labels, truth, image = _scene(np.random.default_rng(2))
    labels = np.where(labels == 4, 0, labels)
    full = ndimage.grey_dilation(labels, size=61)  # detections grown to tile the image
    full[full == 0] = 5
    judged = judge_detections(full, image)
    assert ((judged == 1) & (truth == 1)).sum() == (truth == 1).sum()  # whole, halo included
    assert (judged == 1).sum() > 1.5 * (truth == 1).sum()


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_smoothed_noise_follows_resampling(scale):
    rng = np.random.default_rng(3)
    image = 100.0 + rng.normal(0, 10.0, (1, 200, 200))
    image[0, 50:150, 50:150] += 500.0  # an object: grey() normalises to the image's range
    from cellulus_fast.foreground import grey

    smooth = ndimage.gaussian_filter(grey(rescale(image.astype(np.float32), scale)), 1.0)
    m = int(20 * scale)
    background = smooth[m:int(45 * scale), m:-m]  # a background strip, away from object and borders
    assert smoothed_noise(image, scale) == pytest.approx(background.std(), rel=0.15)


def test_background_detections_are_dropped_on_a_resized_image():
    rng = np.random.default_rng(4)
    image = rescale(rng.normal(100.0, 10.0, (1, 120, 120)).astype(np.float32), 2.0)  # pure noise, upsampled
    labels = np.zeros(image.shape[1:], np.int64)
    labels[20:80, 20:80], labels[120:200, 120:200] = 1, 2  # two clusters of background
    assert judge_detections(labels, image).max() > 0  # noise measured on the resampled image: too low
    noise = smoothed_noise(rng.normal(100.0, 10.0, (1, 120, 120)), 2.0)
    assert judge_detections(labels, image, noise=noise).max() == 0
