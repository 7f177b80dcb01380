"""Instance segmentation scores: object matching by IoU (precision, recall, accuracy, F1 and mean matched IoU at
a set of IoU thresholds, as in StarDist's ``matching``) and the Cell Tracking Challenge SEG score, per image and
pooled over a dataset.

Matching. Ground-truth (GT) and predicted objects are paired one-to-one; a pair is a true positive (TP) iff its
IoU >= threshold. Among all one-to-one assignments we take one with the most TPs and, among those, the largest
summed IoU of its TPs (the semantics of StarDist's current ``matching``, which uses the cost
``-[IoU >= thr] - IoU / (2 min(n_true, n_pred))``). Unmatched predictions are false positives (FP), unmatched GT
objects false negatives (FN):

    precision = TP / (TP + FP)      recall = TP / (TP + FN)
    accuracy  = TP / (TP + FP + FN) F1     = 2 TP / (2 TP + FP + FN)
    mean matched IoU = mean IoU of the TP pairs

Pooled over a dataset: TP, FP and FN are summed over the images and the ratios taken of the sums; the pooled
mean matched IoU is the mean over all TP pairs of all images (not a mean of per-image means).

SEG (Cell Tracking Challenge). A GT object G scores IoU(P, G) if a predicted object P covers more than half of
it (|P & G| > 0.5 |G|; at most one P can), else 0. SEG is the mean over GT objects; pooled, the sum over all GT
objects of the dataset divided by their number.

Empty cases (a denominator of 0) are defined, never NaN:
  * precision, recall, accuracy, F1: 1.0 if there are neither GT nor predicted objects (nothing to find, nothing
    found), else 0.0. E.g. an empty prediction of a non-empty GT has precision 0.0 (and recall 0.0).
  * mean matched IoU: 0.0 when there are no TP matches (including when both are empty).
  * SEG with no GT objects: 1.0 if the prediction is empty too, else 0.0.
Pooled scores apply the same rules to the dataset's totals.

Label images: 2-D or 3-D numpy arrays or torch tensors of non-negative integer labels, 0 = background. Labels
need not be consecutive. bool images are one object (True) on background (False); float images are accepted
when every value is a non-negative integer.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .checkpoint import write_text_atomic
from .data import read_arrays
from .ops._checks import check_real

__all__ = ["DEFAULT_THRESHOLDS", "ROW_FIELDS", "ThresholdScores", "Scores", "EvaluationResult", "evaluate",
           "write_results", "load_labels"]

# Literals, not 0.1 * k: an IoU that is exactly 3/10 must compare >= 0.3 (0.1 * 3 == 0.30000000000000004).
DEFAULT_THRESHOLDS: Tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# Columns of to_rows() / metrics.csv.
ROW_FIELDS: Tuple[str, ...] = ("threshold", "tp", "fp", "fn", "precision", "recall", "accuracy", "f1",
                               "mean_matched_iou")

LabelImage = Union[np.ndarray, torch.Tensor]


@dataclass(frozen=True)
class ThresholdScores:
    """Matching scores at one IoU threshold (see the module docstring for the empty-case values)."""
    threshold: float
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    accuracy: float
    f1: float
    mean_matched_iou: float

    def to_row(self) -> Dict[str, Union[int, float]]:
        """A flat dict with the columns ROW_FIELDS."""
        return {name: getattr(self, name) for name in ROW_FIELDS}


@dataclass(frozen=True)
class Scores:
    """The scores of one image, or pooled over a dataset.

    n_true, n_pred: numbers of GT and predicted objects; seg: the CTC SEG score; table: one ThresholdScores per
    threshold, in the order the thresholds were given.
    """
    n_true: int
    n_pred: int
    seg: float
    table: Tuple[ThresholdScores, ...]

    def at(self, threshold: float) -> ThresholdScores:
        """The scores at `threshold` (one of the evaluated thresholds)."""
        for row in self.table:
            if math.isclose(row.threshold, threshold, rel_tol=0, abs_tol=1e-12):
                return row
        raise KeyError(f"threshold {threshold} was not evaluated; thresholds: {[r.threshold for r in self.table]}")

    def to_rows(self) -> List[Dict[str, Union[int, float]]]:
        """One flat dict per threshold with the columns ROW_FIELDS (for CSV)."""
        return [row.to_row() for row in self.table]

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready: n_true, n_pred, seg and the rows."""
        return {"n_true": self.n_true, "n_pred": self.n_pred, "seg": self.seg, "table": self.to_rows()}


@dataclass(frozen=True)
class EvaluationResult:
    """Scores per image (in input order; one entry for a single image) and pooled over all images."""
    thresholds: Tuple[float, ...]
    per_image: Tuple[Scores, ...]
    pooled: Scores

    @property
    def seg(self) -> float:
        """The pooled SEG score."""
        return self.pooled.seg

    def to_rows(self) -> List[Dict[str, Union[int, float]]]:
        """The pooled scores, one flat dict per threshold with the columns ROW_FIELDS (for CSV)."""
        return self.pooled.to_rows()

    def to_dict(self) -> Dict[str, Any]:
        """Everything, JSON-ready: thresholds, pooled scores and per-image scores."""
        return {"thresholds": list(self.thresholds), "num_images": len(self.per_image),
                "pooled": self.pooled.to_dict(),
                "per_image": [dict(image=i, **s.to_dict()) for i, s in enumerate(self.per_image)]}

    def to_json(self, indent: int | None = 2) -> str:
        """to_dict() as strict JSON (no value is ever NaN or infinite)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def format_table(self, digits: int = 3) -> str:
        """The pooled scores as a text table: one row per threshold with precision, recall, accuracy, F1 and
        mean matched IoU, then a line with SEG and the object counts."""
        header = ("threshold", "precision", "recall", "accuracy", "F1", "mean IoU")
        body = [[f"{r.threshold:g}"] + [f"{v:.{digits}f}" for v in
                                        (r.precision, r.recall, r.accuracy, r.f1, r.mean_matched_iou)]
                for r in self.pooled.table]
        widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
        lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
        lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in body]
        p = self.pooled
        n = len(self.per_image)
        lines.append(f"SEG {p.seg:.{digits}f}  (GT objects: {p.n_true}, predicted objects: {p.n_pred}, "
                     f"images: {n})")
        return "\n".join(lines)


@dataclass
class _Counts:
    """What pools over images: sums, from which every score is a ratio."""
    n_true: int
    n_pred: int
    tp: np.ndarray  # (num_thresholds,) int64
    iou_sum: np.ndarray  # (num_thresholds,) float64: summed IoU of the TP pairs
    seg_sum: float  # summed SEG contributions of the GT objects

    def __add__(self, other: "_Counts") -> "_Counts":
        return _Counts(self.n_true + other.n_true, self.n_pred + other.n_pred, self.tp + other.tp,
                       self.iou_sum + other.iou_sum, self.seg_sum + other.seg_sum)


def evaluate(gt: Union[LabelImage, Sequence[LabelImage]], pred: Union[LabelImage, Sequence[LabelImage]],
             thresholds: Union[float, Sequence[float]] = DEFAULT_THRESHOLDS) -> EvaluationResult:
    """Score predicted against ground-truth instance labels.

    Args:
        gt, pred: one label image each (2-D or 3-D numpy array or torch tensor of non-negative integer labels,
            0 = background), or two lists/tuples of them of the same length (a dataset, images paired by
            position). A 3-D array is one volume: pass a list to score a stack of 2-D images separately.
        thresholds: IoU threshold(s) in (0, 1] at which to match objects.

    Returns:
        An EvaluationResult with per-image and pooled Scores (see the module docstring for the definitions and
        the values of the empty cases).

    Raises:
        ValueError: mismatched shapes, lists of different lengths, non-integer or negative labels, arrays that
            are not 2-D or 3-D, an empty dataset, thresholds outside (0, 1] or repeated.
    """
    thr = _check_thresholds(thresholds)
    gt_is_list, pred_is_list = isinstance(gt, (list, tuple)), isinstance(pred, (list, tuple))
    if gt_is_list != pred_is_list:
        what = lambda is_list, x: f"a list of {len(x)} images" if is_list else "a single image"
        raise ValueError(f"gt is {what(gt_is_list, gt)} but pred is {what(pred_is_list, pred)}")
    if gt_is_list:
        if len(gt) != len(pred):
            raise ValueError(f"gt and pred must be lists of the same length, got {len(gt)} and {len(pred)} images")
        if len(gt) == 0:
            raise ValueError("gt and pred are empty lists: nothing to evaluate")
        pairs = [(g, p, f"[{i}]") for i, (g, p) in enumerate(zip(gt, pred))]
    else:
        pairs = [(gt, pred, "")]

    counts = []
    for g, p, index in pairs:
        g = _as_labels(g, f"gt{index}")
        p = _as_labels(p, f"pred{index}")
        if g.shape != p.shape:
            raise ValueError(f"gt{index} and pred{index} must have the same shape, got gt{index} {g.shape} and "
                             f"pred{index} {p.shape}")
        counts.append(_image_counts(g, p, thr))
    pooled = counts[0]
    for c in counts[1:]:
        pooled = pooled + c
    return EvaluationResult(thresholds=thr, per_image=tuple(_scores(c, thr) for c in counts),
                            pooled=_scores(pooled, thr))


def write_results(result: EvaluationResult, out_dir: Union[str, os.PathLike]) -> Tuple[Path, Path]:
    """Write `out_dir`/metrics.csv (the pooled rows, columns ROW_FIELDS) and `out_dir`/metrics.json (to_dict()),
    creating `out_dir`. Each file is written to a temporary file and renamed over the target, so a reader never
    sees a half-written file. Returns the two paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=ROW_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(result.to_rows())
    csv_path, json_path = out / "metrics.csv", out / "metrics.json"
    write_text_atomic(csv_path, buf.getvalue())
    write_text_atomic(json_path, result.to_json() + "\n")
    return csv_path, json_path


def load_labels(source: Any) -> List[np.ndarray]:
    """The label images in ``source`` (anything :func:`cellulus_fast.data.load_images` reads), read exactly:
    integer images as they are (not through float32, which merges ids above 2**24), float images only if
    every value is a non-negative integer (the rules of :func:`evaluate`). Multi-page files give one 2-D
    image per page, and so do channels (labels have none: a file declaring some, such as a 3-D ImageJ
    TIFF written by tifffile, holds a stack). ValueError naming the file for anything else."""
    labels = []
    for name, image in read_arrays(source):
        for c, channel in enumerate(image):
            labels.append(_as_labels(channel, f"{name}[channel {c}]" if len(image) > 1 else name))
    return labels


def _check_thresholds(thresholds: Union[float, Sequence[float]]) -> Tuple[float, ...]:
    values = [thresholds] if isinstance(thresholds, (int, float, np.number)) else list(thresholds)
    if not values:
        raise ValueError("thresholds must not be empty")
    # > 0: with IoU >= 0 every pair, even one that does not overlap, would count as a match.
    out = tuple(check_real(f"thresholds[{i}]", float(v) if isinstance(v, np.number) else v, low=0.0, high=1.0,
                           low_open=True) for i, v in enumerate(values))
    if len(set(out)) != len(out):
        raise ValueError(f"thresholds must not repeat, got {list(out)}")
    return out


def _as_labels(x: Any, name: str) -> np.ndarray:
    """A non-negative integer numpy array of 2 or 3 dimensions, or a ValueError naming `name`."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):  # numpy has no bfloat16
            x = x.float()
        x = x.numpy()
    a = np.asarray(x)
    if a.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2-D or 3-D label image, got an array of shape {a.shape}")
    if a.dtype == np.bool_:
        return a.view(np.uint8)  # True = object 1, False = background
    if np.issubdtype(a.dtype, np.integer):
        if np.issubdtype(a.dtype, np.signedinteger) and a.size and a.min() < 0:
            raise ValueError(f"{name} has negative labels (min {a.min()}); labels must be >= 0, 0 = background")
        return a
    if np.issubdtype(a.dtype, np.floating):
        if a.size and not np.isfinite(a).all():
            raise ValueError(f"{name} has non-finite values; labels must be non-negative integers")
        if a.size and a.min() < 0:
            raise ValueError(f"{name} has negative labels (min {a.min()}); labels must be >= 0, 0 = background")
        if (a != np.floor(a)).any():
            raise ValueError(f"{name} has non-integer values (dtype {a.dtype}); labels must be integers")
        if a.size and a.max() >= 2.0 ** 63:
            raise ValueError(f"{name} has labels too large for int64 (max {a.max()})")
        return a.astype(np.int64)
    raise ValueError(f"{name} must hold integer labels, got dtype {a.dtype}")


def _relabel(a: np.ndarray) -> Tuple[np.ndarray, int]:
    """Flattened labels mapped to 0 (background) and 1..K (the objects, in label order), and K."""
    flat = a.reshape(-1)
    if flat.size == 0:
        return np.zeros(0, dtype=np.intp), 0
    top = int(flat.max())
    if top <= 4 * flat.size + 1024:
        # Small labels: a lookup table is O(pixels), no sort.
        idx = flat.astype(np.intp, copy=False)
        present = np.bincount(idx, minlength=top + 1) > 0
        present[0] = True  # background keeps index 0 whether or not it occurs
        lut = np.cumsum(present) - 1
        return lut[idx], int(lut[-1])
    values, inverse = np.unique(flat, return_inverse=True)
    inverse = inverse.reshape(-1)
    if values[0] == 0:
        return inverse, len(values) - 1
    return inverse + 1, len(values)


def _image_counts(gt: np.ndarray, pred: np.ndarray, thresholds: Tuple[float, ...]) -> _Counts:
    g, n_true = _relabel(gt)
    p, n_pred = _relabel(pred)
    area_g = np.bincount(g, minlength=n_true + 1)
    area_p = np.bincount(p, minlength=n_pred + 1)
    # All pairwise intersections from one contingency table over the pixel pairs (gt label, pred label). Dense
    # bincount while the table is small, else the sparse way (sort of the keys).
    cols = n_pred + 1
    key = g.astype(np.int64) * cols + p
    if (n_true + 1) * cols <= max(4 * key.size, 1 << 22):
        table = np.bincount(key, minlength=(n_true + 1) * cols)
        key = np.flatnonzero(table)
        inter = table[key]
    else:
        key, inter = np.unique(key, return_counts=True)
    gi, pj = np.divmod(key, cols)
    both = (gi > 0) & (pj > 0)  # pairs of objects, not background
    gi, pj, inter = gi[both] - 1, pj[both] - 1, inter[both]
    size_g = area_g[1:][gi]
    iou = inter / (size_g + area_p[1:][pj] - inter)
    # SEG: a GT object's score is the IoU with the prediction covering more than half of it (at most one does).
    seg_sum = float(iou[2 * inter > size_g].sum())
    tp = np.zeros(len(thresholds), dtype=np.int64)
    iou_sum = np.zeros(len(thresholds), dtype=np.float64)
    for k, thr in enumerate(thresholds):
        tp[k], iou_sum[k] = _match(gi, pj, iou, thr)
    return _Counts(n_true, n_pred, tp, iou_sum, seg_sum)


def _match(gi: np.ndarray, pj: np.ndarray, iou: np.ndarray, threshold: float) -> Tuple[int, float]:
    """The number of TP pairs of an assignment with the most pairs with IoU >= threshold (ties: the largest
    summed IoU), and their summed IoU. Only overlapping pairs are given: the others have IoU 0 < threshold."""
    keep = iou >= threshold
    gi, pj, iou = gi[keep], pj[keep], iou[keep]
    if gi.size == 0:
        return 0, 0.0
    # Pairs whose GT and prediction are in no other candidate pair are matched as they are. That is every pair
    # for threshold > 0.5 (each object then has at most one partner) and most pairs below.
    lone = (np.bincount(gi)[gi] == 1) & (np.bincount(pj)[pj] == 1)
    tp, total = int(lone.sum()), float(iou[lone].sum())
    gi, pj, iou = gi[~lone], pj[~lone], iou[~lone]
    if gi.size == 0:
        return tp, total
    # The rest: each connected component of the bipartite graph of candidate pairs is an independent (small)
    # assignment problem; one dense assignment over all objects would be O(n^3).
    rows, gl = np.unique(gi, return_inverse=True)
    _, pl = np.unique(pj, return_inverse=True)
    n_nodes = len(rows) + int(pl.max()) + 1
    graph = coo_matrix((np.ones(gl.size), (gl, pl + len(rows))), shape=(n_nodes, n_nodes))
    _, component = connected_components(graph, directed=False)
    edge_component = component[gl]
    order = np.argsort(edge_component, kind="stable")
    starts = np.flatnonzero(np.diff(edge_component[order])) + 1
    for edges in np.split(order, starts):
        _, r = np.unique(gl[edges], return_inverse=True)
        _, c = np.unique(pl[edges], return_inverse=True)
        nr, nc = int(r.max()) + 1, int(c.max()) + 1
        if nr == 1 or nc == 1:  # a star: one match, the best one
            tp += 1
            total += float(iou[edges].max())
            continue
        # Weight 1 + IoU / (2 m) per candidate pair, 0 otherwise: the summed IoU of any matching is at most m/2 of
        # extra weight < 1, so the maximum weight matching has the most pairs first, the largest IoU second.
        m = min(nr, nc)
        scores = np.zeros((nr, nc))
        scores[r, c] = iou[edges]
        weight = np.zeros((nr, nc))
        weight[r, c] = 1.0 + iou[edges] / (2 * m)
        ri, ci = linear_sum_assignment(weight, maximize=True)
        chosen = weight[ri, ci] > 0
        tp += int(chosen.sum())
        total += float(scores[ri, ci][chosen].sum())
    return tp, total


def _ratio(num: int, den: int, empty: float) -> float:
    return num / den if den else empty


def _scores(c: _Counts, thresholds: Tuple[float, ...]) -> Scores:
    # The empty-case conventions of the module docstring.
    empty = 1.0 if c.n_true == 0 and c.n_pred == 0 else 0.0
    table = []
    for k, thr in enumerate(thresholds):
        tp = int(c.tp[k])
        fp, fn = c.n_pred - tp, c.n_true - tp
        table.append(ThresholdScores(
            threshold=thr, tp=tp, fp=fp, fn=fn,
            precision=_ratio(tp, tp + fp, empty), recall=_ratio(tp, tp + fn, empty),
            accuracy=_ratio(tp, tp + fp + fn, empty), f1=_ratio(2 * tp, 2 * tp + fp + fn, empty),
            mean_matched_iou=float(c.iou_sum[k]) / tp if tp else 0.0))
    seg = c.seg_sum / c.n_true if c.n_true else (1.0 if c.n_pred == 0 else 0.0)
    return Scores(n_true=int(c.n_true), n_pred=int(c.n_pred), seg=float(seg), table=tuple(table))
