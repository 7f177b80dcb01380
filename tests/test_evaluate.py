"""evaluate: matching scores and SEG on hand-built cases with hand-computed values, empty cases, pooling,
3-D, optimal vs greedy assignment, a brute-force cross-check, bad input, and the result writers."""
import csv
import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from cellulus_fast.evaluate import (DEFAULT_THRESHOLDS, ROW_FIELDS, EvaluationResult, Scores, ThresholdScores,
                                    evaluate, write_results)


def image(shape, *objects):
    """A label image; objects are (label, slices) painted in order."""
    img = np.zeros(shape, dtype=np.int32)
    for label, where in objects:
        img[where] = label
    return img


def sq(y, x, size=10):
    return np.s_[y:y + size, x:x + size]


def cols(a, b, rows=5):
    """Full-height stripe over columns [a, b) of a `rows`-row image: IoUs are ratios of column counts."""
    return np.s_[0:rows, a:b]


def check_row(row: ThresholdScores, tp, fp, fn, precision, recall, accuracy, f1, mean_iou):
    assert (row.tp, row.fp, row.fn) == (tp, fp, fn)
    assert row.precision == pytest.approx(precision, abs=1e-12)
    assert row.recall == pytest.approx(recall, abs=1e-12)
    assert row.accuracy == pytest.approx(accuracy, abs=1e-12)
    assert row.f1 == pytest.approx(f1, abs=1e-12)
    assert row.mean_matched_iou == pytest.approx(mean_iou, abs=1e-12)


# ---------------------------------------------------------------------------------------------- hand-built cases

def test_perfect_match():
    gt = image((40, 40), (1, sq(0, 0)), (2, sq(15, 15)), (3, sq(28, 5, 8)))
    pred = image((40, 40), (7, sq(0, 0)), (3, sq(15, 15)), (5, sq(28, 5, 8)))  # other labels, same objects
    r = evaluate(gt, pred)
    assert isinstance(r, EvaluationResult)
    assert r.thresholds == DEFAULT_THRESHOLDS
    assert len(r.per_image) == 1 and r.per_image[0] == r.pooled
    assert (r.pooled.n_true, r.pooled.n_pred) == (3, 3)
    assert [row.threshold for row in r.pooled.table] == list(DEFAULT_THRESHOLDS)
    for row in r.pooled.table:
        check_row(row, 3, 0, 0, 1, 1, 1, 1, 1)
    assert r.seg == 1.0 and r.pooled.seg == 1.0


def test_split_into_equal_halves():
    # GT 10x10 (100 px), predicted as two 10x5 halves: each half has IoU 50/100 = 0.5 exactly.
    gt = image((12, 12), (1, sq(0, 0)))
    pred = image((12, 12), (1, np.s_[0:10, 0:5]), (2, np.s_[0:10, 5:10]))
    r = evaluate(gt, pred, thresholds=(0.3, 0.5, 0.6))
    for thr in (0.3, 0.5):  # IoU 0.5 >= 0.5: one half matches, the other is a FP
        check_row(r.pooled.at(thr), tp=1, fp=1, fn=0, precision=0.5, recall=1.0, accuracy=0.5, f1=2 / 3,
                  mean_iou=0.5)
    check_row(r.pooled.at(0.6), tp=0, fp=2, fn=1, precision=0, recall=0, accuracy=0, f1=0, mean_iou=0)
    # Each half covers exactly 50% of the GT object, not more than 50%: SEG 0.
    assert r.seg == 0.0


def test_split_60_40():
    # Halves of 60 px (IoU 0.6) and 40 px (IoU 0.4): the assignment keeps the better one.
    gt = image((12, 12), (1, sq(0, 0)))
    pred = image((12, 12), (1, np.s_[0:10, 0:6]), (2, np.s_[0:10, 6:10]))
    r = evaluate(gt, pred, thresholds=(0.3, 0.5, 0.7))
    check_row(r.pooled.at(0.3), 1, 1, 0, 0.5, 1, 0.5, 2 / 3, 0.6)
    check_row(r.pooled.at(0.5), 1, 1, 0, 0.5, 1, 0.5, 2 / 3, 0.6)
    check_row(r.pooled.at(0.7), 0, 2, 1, 0, 0, 0, 0, 0)
    assert r.seg == pytest.approx(0.6)  # covered 60% by the 60 px half: SEG is that IoU


def test_merge():
    # Two 10x5 GT objects predicted as one 10x10 object: IoU 50/100 = 0.5 each.
    gt = image((12, 12), (1, np.s_[0:10, 0:5]), (2, np.s_[0:10, 5:10]))
    pred = image((12, 12), (1, sq(0, 0)))
    r = evaluate(gt, pred, thresholds=(0.5, 0.6))
    check_row(r.pooled.at(0.5), tp=1, fp=0, fn=1, precision=1, recall=0.5, accuracy=0.5, f1=2 / 3, mean_iou=0.5)
    check_row(r.pooled.at(0.6), tp=0, fp=1, fn=2, precision=0, recall=0, accuracy=0, f1=0, mean_iou=0)
    # The merged object covers all of each GT object: each scores its IoU 0.5.
    assert r.seg == pytest.approx(0.5)


def test_shifted_squares():
    # 10x10 squares shifted by 2 px: intersection 10x8 = 80, union 120, IoU 2/3.
    gt = image((40, 40), (1, sq(0, 0)), (2, sq(20, 0)), (3, sq(0, 20)))
    pred = image((40, 40), (1, sq(0, 2)), (2, sq(22, 0)), (3, sq(0, 18)))
    r = evaluate(gt, pred, thresholds=(0.6, 2 / 3, 0.7))
    check_row(r.pooled.at(0.6), 3, 0, 0, 1, 1, 1, 1, 2 / 3)
    check_row(r.pooled.at(2 / 3), 3, 0, 0, 1, 1, 1, 1, 2 / 3)  # IoU >= threshold, boundary included
    check_row(r.pooled.at(0.7), 0, 3, 3, 0, 0, 0, 0, 0)
    assert r.seg == pytest.approx(2 / 3)  # 80 of 100 px covered


def test_diagonal_shift():
    # Shifted by (2, 2): intersection 8x8 = 64, union 136, IoU 8/17 (about 0.47); 64% covered.
    gt = image((20, 20), (1, sq(0, 0)))
    pred = image((20, 20), (1, sq(2, 2)))
    r = evaluate(gt, pred, thresholds=(0.4, 0.5))
    check_row(r.pooled.at(0.4), 1, 0, 0, 1, 1, 1, 1, 8 / 17)
    check_row(r.pooled.at(0.5), 0, 1, 1, 0, 0, 0, 0, 0)
    assert r.seg == pytest.approx(8 / 17)


def test_seg_needs_more_than_half_coverage():
    # Shifted by 6 px: intersection 40 (40% of the GT), union 160, IoU 0.25: a match at 0.2 but SEG 0.
    gt = image((20, 20), (1, sq(0, 0)))
    pred = image((20, 20), (1, sq(0, 6)))
    r = evaluate(gt, pred, thresholds=(0.2, 0.3))
    check_row(r.pooled.at(0.2), 1, 0, 0, 1, 1, 1, 1, 0.25)
    check_row(r.pooled.at(0.3), 0, 1, 1, 0, 0, 0, 0, 0)
    assert r.seg == 0.0


def test_seg_counts_only_gt_objects():
    # Two GT objects, one predicted exactly, one missed; plus two false positives that SEG ignores.
    gt = image((40, 40), (1, sq(0, 0)), (2, sq(20, 20)))
    pred = image((40, 40), (4, sq(0, 0)), (5, sq(0, 25)), (6, sq(25, 0)))
    r = evaluate(gt, pred, thresholds=0.5)
    check_row(r.pooled.at(0.5), 1, 2, 1, 1 / 3, 1 / 2, 1 / 4, 2 / 5, 1.0)
    assert r.seg == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------- empty cases

def test_empty_prediction():
    gt = image((30, 30), (1, sq(0, 0)), (2, sq(15, 15)))
    r = evaluate(gt, np.zeros_like(gt))
    for row in r.pooled.table:  # precision: 0 / 0 with GT objects present -> 0.0
        check_row(row, tp=0, fp=0, fn=2, precision=0, recall=0, accuracy=0, f1=0, mean_iou=0)
    assert r.seg == 0.0


def test_empty_gt():
    pred = image((30, 30), (1, sq(0, 0)), (2, sq(15, 15)))
    r = evaluate(np.zeros_like(pred), pred)
    for row in r.pooled.table:  # recall: 0 / 0 with predictions present -> 0.0
        check_row(row, tp=0, fp=2, fn=0, precision=0, recall=0, accuracy=0, f1=0, mean_iou=0)
    assert r.seg == 0.0  # no GT objects but a non-empty prediction


def test_both_empty():
    z = np.zeros((16, 16), dtype=np.uint8)
    r = evaluate(z, z)
    for row in r.pooled.table:  # nothing to find, nothing found; no matches -> mean IoU 0.0
        check_row(row, tp=0, fp=0, fn=0, precision=1, recall=1, accuracy=1, f1=1, mean_iou=0)
    assert r.seg == 1.0
    json.loads(r.to_json())  # strict JSON: no NaN anywhere


def test_zero_size_images():
    r = evaluate(np.zeros((0, 5), np.int32), np.zeros((0, 5), np.int32))
    assert r.pooled.at(0.5).f1 == 1.0 and r.seg == 1.0


# ------------------------------------------------------------------------------------------------------ labels

def random_labels(rng, shape=(10, 12), max_objects=5, max_label=1000):
    """Random overlapping rectangles painted over each other with random labels (not consecutive)."""
    img = np.zeros(shape, dtype=np.int64)
    for _ in range(rng.integers(0, max_objects + 1)):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        h, w = rng.integers(2, 7, size=2)
        img[y:y + h, x:x + w] = rng.integers(1, max_label)
    return img


def consecutive(img):
    """The same objects labelled 1..K."""
    values, inverse = np.unique(img, return_inverse=True)
    out = inverse.reshape(img.shape)
    return out if values[0] == 0 else out + 1


@pytest.mark.parametrize("seed", range(5))
def test_non_consecutive_labels_give_the_same_result(seed):
    rng = np.random.default_rng(seed)
    gt, pred = random_labels(rng, (24, 24), 8), random_labels(rng, (24, 24), 8)
    expected = evaluate(consecutive(gt), consecutive(pred)).to_dict()
    assert evaluate(gt, pred).to_dict() == expected
    # Huge labels (the sort-based relabelling instead of the lookup table), other dtypes.
    big = evaluate((gt * 1_000_003).astype(np.uint64), (pred * 7_919 + (pred > 0) * 2**40).astype(np.int64))
    assert big.to_dict() == expected
    assert evaluate(gt.astype(np.uint16), pred.astype(np.int16)).to_dict() == expected


@pytest.mark.parametrize("labels", [(5, 9), (10**6, 10**6 + 1)])
def test_no_background_pixels(labels):
    # Every pixel belongs to an object: the smallest label must not be mistaken for background.
    gt = image((6, 6), (labels[0], np.s_[:, :3]), (labels[1], np.s_[:, 3:]))
    pred = image((6, 6), (1, np.s_[:, :3]), (2, np.s_[:, 3:]))
    r = evaluate(gt, pred)
    assert (r.pooled.n_true, r.pooled.n_pred) == (2, 2)
    check_row(r.pooled.at(0.9), 2, 0, 0, 1, 1, 1, 1, 1)


def test_torch_bool_and_float_inputs():
    gt = image((20, 20), (3, sq(0, 0)), (9, sq(10, 10, 6)))
    pred = image((20, 20), (1, sq(0, 2)), (2, sq(10, 10, 6)))
    expected = evaluate(gt, pred).to_dict()
    assert evaluate(torch.from_numpy(gt), torch.from_numpy(pred)).to_dict() == expected
    assert evaluate(torch.from_numpy(gt), pred).to_dict() == expected
    assert evaluate(gt.astype(np.float32), torch.from_numpy(pred).double()).to_dict() == expected
    # bool: True is one object, False background.
    as_bool = evaluate(gt == 3, pred == 1).to_dict()
    assert as_bool == evaluate((gt == 3).astype(np.uint8), (pred == 1).astype(np.uint8)).to_dict()
    assert as_bool["pooled"]["n_true"] == 1


# ------------------------------------------------------------------------------------------------ dataset, 3-D

def test_pooled_vs_per_image():
    a_gt = image((20, 20), (1, sq(0, 0)))
    a_pred = a_gt.copy()  # perfect: 1 TP with IoU 1
    b_gt = image((40, 40), (1, sq(0, 0)), (2, sq(20, 0)), (3, sq(0, 20)))
    b_pred = image((40, 40), (1, sq(0, 2)), (2, sq(22, 0)), (3, sq(0, 18)), (4, sq(28, 28, 5)))  # 3 TP at 2/3, 1 FP
    c_gt = image((20, 20), (1, sq(0, 0, 5)), (2, sq(10, 10, 5)))
    c_pred = np.zeros_like(c_gt)  # 2 FN
    r = evaluate([a_gt, b_gt, c_gt], [a_pred, b_pred, c_pred], thresholds=[0.5])
    assert len(r.per_image) == 3
    a, b, c = (s.at(0.5) for s in r.per_image)
    check_row(a, 1, 0, 0, 1, 1, 1, 1, 1)
    check_row(b, 3, 1, 0, 3 / 4, 1, 3 / 4, 6 / 7, 2 / 3)
    check_row(c, 0, 0, 2, 0, 0, 0, 0, 0)
    assert [s.seg for s in r.per_image] == pytest.approx([1, 2 / 3, 0])
    # Pooled: sums of the counts (4 TP, 1 FP, 2 FN), then the ratios; mean IoU over all 4 TP pairs.
    check_row(r.pooled.at(0.5), 4, 1, 2, 4 / 5, 4 / 6, 4 / 7, 8 / 11, (1 + 3 * 2 / 3) / 4)
    assert r.pooled.at(0.5).mean_matched_iou != pytest.approx(np.mean([a.mean_matched_iou, b.mean_matched_iou]))
    assert (r.pooled.n_true, r.pooled.n_pred) == (6, 5)
    assert r.seg == pytest.approx((1 + 3 * 2 / 3 + 0) / 6)  # over all GT objects, not a mean of image SEGs


def test_pooled_both_empty_uses_dataset_totals():
    z = np.zeros((8, 8), np.int32)
    one = image((8, 8), (1, sq(0, 0, 4)))
    r = evaluate([z, one], [z, one], thresholds=0.5)
    check_row(r.per_image[0].at(0.5), 0, 0, 0, 1, 1, 1, 1, 0)
    check_row(r.pooled.at(0.5), 1, 0, 0, 1, 1, 1, 1, 1)
    r = evaluate([z, one], [z, z], thresholds=0.5)
    check_row(r.pooled.at(0.5), 0, 0, 1, 0, 0, 0, 0, 0)
    assert r.seg == 0.0 and r.per_image[0].seg == 1.0


def test_3d():
    # A 6x6x6 cube predicted exactly, another shifted by 1 voxel in z: IoU (5*36) / (7*36) = 5/7.
    gt = np.zeros((10, 20, 20), np.int32)
    pred = np.zeros_like(gt)
    gt[0:6, 0:6, 0:6] = 1
    pred[0:6, 0:6, 0:6] = 1
    gt[2:8, 10:16, 10:16] = 2
    pred[3:9, 10:16, 10:16] = 2
    r = evaluate(gt, pred, thresholds=(0.7, 0.75))
    check_row(r.pooled.at(0.7), 2, 0, 0, 1, 1, 1, 1, (1 + 5 / 7) / 2)
    check_row(r.pooled.at(0.75), 1, 1, 1, 0.5, 0.5, 1 / 3, 0.5, 1)
    assert r.seg == pytest.approx((1 + 5 / 7) / 2)
    # A list of 2-D slices is scored as a dataset, not as one volume.
    r2 = evaluate(list(gt), list(pred), thresholds=0.5)
    assert len(r2.per_image) == 10


# ------------------------------------------------------------------------------------------------- assignment

def greedy_tp(gt, pred, thr):
    """Matches taken by decreasing IoU while both objects are free (what the optimal assignment must beat)."""
    gl, pl = [l for l in np.unique(gt) if l], [l for l in np.unique(pred) if l]
    pairs = sorted(((iou_of(gt == g, pred == p), g, p) for g in gl for p in pl), reverse=True)
    used_g, used_p = set(), set()
    for iou, g, p in pairs:
        if iou >= thr and g not in used_g and p not in used_p:
            used_g.add(g)
            used_p.add(p)
    return len(used_g)


def iou_of(a, b):
    return (a & b).sum() / (a | b).sum()


def test_optimal_assignment_beats_greedy():
    # Stripes: G1 = [0,10), G2 = [10,20); P1 = [4,14), P2 = [0,4).
    # IoU(G1,P1) = 6/14, IoU(G1,P2) = 4/10, IoU(G2,P1) = 4/16, IoU(G2,P2) = 0.
    # Greedy takes G1-P1 (the largest IoU) and leaves G2 and P2 unmatched; the optimum is G1-P2, G2-P1.
    gt = image((5, 20), (1, cols(0, 10)), (2, cols(10, 20)))
    pred = image((5, 20), (1, cols(4, 14)), (2, cols(0, 4)))
    assert greedy_tp(gt, pred, 0.1) == 1
    r = evaluate(gt, pred, thresholds=(0.1, 0.2, 0.3, 0.5))
    check_row(r.pooled.at(0.1), 2, 0, 0, 1, 1, 1, 1, (4 / 10 + 4 / 16) / 2)
    check_row(r.pooled.at(0.2), 2, 0, 0, 1, 1, 1, 1, (4 / 10 + 4 / 16) / 2)
    # At 0.3 only G1 has candidates (P1 and P2): one match, the one with the larger IoU.
    check_row(r.pooled.at(0.3), 1, 1, 1, 0.5, 0.5, 1 / 3, 0.5, 6 / 14)
    check_row(r.pooled.at(0.5), 0, 2, 2, 0, 0, 0, 0, 0)
    # SEG: P1 covers 6 of G1's 10 px (IoU 6/14) but only 4 of G2's.
    assert r.seg == pytest.approx((6 / 14 + 0) / 2)


def test_most_matches_first_then_largest_iou():
    # G1 = [0,10), G2 = [10,20); P1 = [1,12), P2 = [0,1).
    # IoU(G1,P1) = 9/12, IoU(G2,P1) = 2/19, IoU(G1,P2) = 1/10, IoU(G2,P2) = 0.
    # At 0.1, {G1-P2, G2-P1} has 2 matches (summed IoU 0.205) and {G1-P1} 1 match (summed IoU 0.75): the
    # number of matches comes first. (Maximising the summed IoU alone, cost -IoU [IoU >= thr], gives 1.)
    gt = image((5, 20), (1, cols(0, 10)), (2, cols(10, 20)))
    pred = image((5, 20), (1, cols(1, 12)), (2, cols(0, 1)))
    iou = np.array([[9 / 12, 1 / 10], [2 / 19, 0]])
    cost = -np.where(iou >= 0.1, iou, 0)
    i, j = linear_sum_assignment(cost)
    assert np.count_nonzero(iou[i, j] >= 0.1) == 1
    r = evaluate(gt, pred, thresholds=(0.1, 0.2))
    check_row(r.pooled.at(0.1), 2, 0, 0, 1, 1, 1, 1, (1 / 10 + 2 / 19) / 2)
    check_row(r.pooled.at(0.2), 1, 1, 1, 0.5, 0.5, 1 / 3, 0.5, 9 / 12)


def brute_force(gt, pred, thresholds):
    """Per-pair masks; every one-to-one assignment enumerated; best = most matches, then largest summed IoU."""
    gl, pl = [l for l in np.unique(gt) if l], [l for l in np.unique(pred) if l]
    iou = np.zeros((len(gl), len(pl)))
    seg = 0.0
    for a, g in enumerate(gl):
        for b, p in enumerate(pl):
            iou[a, b] = iou_of(gt == g, pred == p)
            if 2 * ((gt == g) & (pred == p)).sum() > (gt == g).sum():
                seg += iou[a, b]
    n = max(len(gl), len(pl))
    out = []
    for thr in thresholds:
        best = (0, 0.0)
        for perm in itertools.permutations(range(n)):  # GT a <-> pred perm[a]; indices past the end: unmatched
            ious = [iou[a, b] for a, b in enumerate(perm) if a < len(gl) and b < len(pl) and iou[a, b] >= thr]
            best = max(best, (len(ious), sum(ious)))
        out.append(best)
    seg = seg / len(gl) if gl else (1.0 if not pl else 0.0)
    return out, seg, len(gl), len(pl)


@pytest.mark.parametrize("seed", range(40))
def test_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    gt, pred = random_labels(rng), random_labels(rng)
    thresholds = (0.05, 0.1, 0.25, 1 / 3, 0.5, 0.75, 1.0)
    best, seg, n_true, n_pred = brute_force(gt, pred, thresholds)
    r = evaluate(gt, pred, thresholds)
    assert (r.pooled.n_true, r.pooled.n_pred) == (n_true, n_pred)
    for row, (tp, iou_sum) in zip(r.pooled.table, best):
        assert row.tp == tp
        assert row.mean_matched_iou == pytest.approx(iou_sum / tp if tp else 0.0, abs=1e-12)
    assert r.seg == pytest.approx(seg, abs=1e-12)


def test_many_objects_finishes():
    # 45 x 45 = 2025 squares of 20x20 px in a 1024x1024 image, predicted shifted by 1 px with other labels:
    # IoU (20*19) / (20*21) = 19/21 for every object. Only checks that it finishes and is right, not its time.
    n, step = 45, 22
    yy, xx = np.mgrid[:1024, :1024]
    by, bx = yy // step, xx // step
    inside = (yy % step >= 1) & (yy % step <= 20) & (xx % step >= 1) & (xx % step <= 20) & (by < n) & (bx < n)
    gt = np.where(inside, by * n + bx + 1, 0)
    pred = np.roll(gt, 1, axis=1)
    pred = np.where(pred > 0, (pred * 7919) % 100_003, 0)
    r = evaluate(gt, pred)
    assert (r.pooled.n_true, r.pooled.n_pred) == (2025, 2025)
    for row in r.pooled.table:
        check_row(row, 2025, 0, 0, 1, 1, 1, 1, 19 / 21)
    assert r.seg == pytest.approx(19 / 21)


# -------------------------------------------------------------------------------------------------- bad input

def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(5, 4\)"):
        evaluate(np.zeros((4, 5), int), np.zeros((5, 4), int))
    with pytest.raises(ValueError, match=r"gt\[1\].*\(3, 3\).*\(3, 4\)"):
        evaluate([np.zeros((2, 2), int), np.zeros((3, 3), int)], [np.zeros((2, 2), int), np.zeros((3, 4), int)])


@pytest.mark.parametrize("bad, message", [
    (np.array([[0.0, 1.5]]), "non-integer"),
    (np.array([[0.0, np.nan]]), "non-finite"),
    (np.array([[0, -1]]), "negative"),
    (np.array([[0.0, -2.0]]), "negative"),
    (np.array([[1 + 1j, 0]]), "integer labels"),
    (np.array([["a", "b"]]), "integer labels"),
    (np.zeros(5, int), "2-D or 3-D"),
    (np.zeros((2, 2, 2, 2), int), "2-D or 3-D"),
    (torch.tensor([[0, -3]]), "negative"),
])
def test_bad_labels(bad, message):
    good = np.zeros(tuple(bad.shape) if bad.ndim in (2, 3) else (2, 2), dtype=np.int32)
    with pytest.raises(ValueError, match=message):
        evaluate(bad, good)
    with pytest.raises(ValueError, match=f"pred.*{message}"):
        evaluate(good, bad)


def test_bad_lists():
    a = np.zeros((3, 3), int)
    with pytest.raises(ValueError, match="same length.*2 and 1"):
        evaluate([a, a], [a])
    with pytest.raises(ValueError, match="single image"):
        evaluate(a, [a])
    with pytest.raises(ValueError, match="empty"):
        evaluate([], [])


@pytest.mark.parametrize("thresholds", [0.0, 1.5, -0.1, float("nan"), (), (0.5, 0.5)])
def test_bad_thresholds(thresholds):
    a = np.zeros((3, 3), int)
    with pytest.raises(ValueError):
        evaluate(a, a, thresholds=thresholds)


# --------------------------------------------------------------------------------------------- result objects

@pytest.fixture
def two_images():
    gt = [image((20, 20), (1, sq(0, 0)), (2, sq(10, 10, 8))), image((20, 20), (1, sq(2, 2)))]
    pred = [image((20, 20), (5, sq(0, 2)), (6, sq(10, 10, 8))), np.zeros((20, 20), np.int32)]
    return evaluate(gt, pred, thresholds=(0.5, 0.7, 0.9))


def test_rows_dict_and_json(two_images):
    r = two_images
    rows = r.to_rows()
    assert [tuple(row) for row in rows] == [ROW_FIELDS] * 3
    assert rows[1] == {"threshold": 0.7, "tp": 1, "fp": 1, "fn": 2, "precision": 0.5, "recall": 1 / 3,
                       "accuracy": 0.25, "f1": 0.4, "mean_matched_iou": 1.0}
    d = r.to_dict()
    assert d["thresholds"] == [0.5, 0.7, 0.9] and d["num_images"] == 2
    assert d["pooled"]["table"] == rows and d["pooled"]["seg"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert [img["image"] for img in d["per_image"]] == [0, 1]
    assert d["per_image"][1]["table"][0]["fn"] == 1
    assert json.loads(r.to_json()) == d
    assert isinstance(r.pooled, Scores)
    with pytest.raises(KeyError):
        r.pooled.at(0.6)


def test_format_table(two_images):
    lines = two_images.format_table().splitlines()
    assert len(lines) == 1 + 3 + 1
    assert lines[0].split() == ["threshold", "precision", "recall", "accuracy", "F1", "mean", "IoU"]
    assert lines[2].split() == ["0.7", "0.500", "0.333", "0.250", "0.400", "1.000"]
    assert lines[-1].startswith("SEG 0.556")


def test_write_results(tmp_path, two_images):
    out = tmp_path / "run" / "eval"
    csv_path, json_path = write_results(two_images, out)
    assert (csv_path, json_path) == (out / "metrics.csv", out / "metrics.json")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.json"]  # no temporary files left
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [tuple(row) for row in rows] == [ROW_FIELDS] * 3
    for got, want in zip(rows, two_images.to_rows()):
        for key, value in want.items():
            assert math.isclose(float(got[key]), value, rel_tol=0, abs_tol=0)  # written at full precision
    assert json.loads(json_path.read_text()) == two_images.to_dict()
    # Overwrites an earlier result in place.
    other = evaluate(np.zeros((4, 4), int), np.zeros((4, 4), int), thresholds=0.5)
    write_results(other, out)
    assert json.loads(json_path.read_text()) == other.to_dict()
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.json"]


def test_load_labels_reads_files_exactly(tmp_path):
    import tifffile

    from cellulus_fast.evaluate import load_labels

    big = np.zeros((8, 8), np.uint32)
    big[:4], big[4:] = 2**31 + 1, 2**31 + 2
    tifffile.imwrite(tmp_path / "big.tif", big)
    (read,) = load_labels(tmp_path / "big.tif")
    assert read.dtype == np.uint32 and np.array_equal(read, big)  # not through float32 (which merges them)
    stack = np.stack([big % 3, big // 2**30, big % 2]).astype(np.uint16)  # ImageJ stores no uint32
    tifffile.imwrite(tmp_path / "ij.tif", stack, imagej=True)  # tifffile declares a 3-D ImageJ array CYX
    assert [a.tolist() for a in load_labels(tmp_path / "ij.tif")] == [a.tolist() for a in stack]
    tifffile.imwrite(tmp_path / "whole.tif", big.astype(np.float32) % 7)
    assert load_labels(tmp_path / "whole.tif")[0].dtype == np.int64
    tifffile.imwrite(tmp_path / "intensity.tif", np.full((8, 8), 0.5, np.float32))
    with pytest.raises(ValueError, match="intensity.tif has non-integer values"):
        load_labels(tmp_path / "intensity.tif")
