"""Object-level scores as the field reports them (StarDist's ``matching``, cellpose's ``average_precision``, the
DSB 2018 score): ground-truth and predicted objects are matched one-to-one at an IoU threshold (maximum
matching; for thresholds >= 0.5 a pair above the threshold is unique anyway); then

- AP at a threshold = TP / (TP + FP + FN) (StarDist calls it "accuracy", cellpose and the DSB 2018 "average
  precision"), its mean over IoU 0.5, 0.55, ..., 0.95 is the DSB 2018 score;
- object F1 = 2 TP / (2 TP + FP + FN); precision TP / (TP + FP), recall TP / (TP + FN);
- count error = predicted objects - true objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.5 .. 0.95


@dataclass
class Matching:
    threshold: float
    tp: int
    fp: int
    fn: int

    @property
    def ap(self) -> float:
        total = self.tp + self.fp + self.fn
        return self.tp / total if total else 1.0

    @property
    def f1(self) -> float:
        total = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / total if total else 1.0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def iou_pairs(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """(true ids, predicted ids, IoU) of every overlapping pair, and the object counts (ids > 0, any values)."""
    truth = np.asarray(truth).ravel().astype(np.int64)
    pred = np.asarray(pred).ravel().astype(np.int64)
    if truth.shape != pred.shape:
        raise ValueError(f"shapes differ: {truth.shape} vs {pred.shape}")
    true_ids, true_index = np.unique(truth, return_inverse=True)
    pred_ids, pred_index = np.unique(pred, return_inverse=True)
    true_sizes = np.bincount(true_index)
    pred_sizes = np.bincount(pred_index)
    pairs, overlap = np.unique(true_index * len(pred_ids) + pred_index, return_counts=True)
    t, p = np.divmod(pairs, len(pred_ids))
    keep = (true_ids[t] > 0) & (pred_ids[p] > 0)
    t, p, overlap = t[keep], p[keep], overlap[keep]
    iou = overlap / (true_sizes[t] + pred_sizes[p] - overlap)
    n_true = int((true_ids > 0).sum())
    n_pred = int((pred_ids > 0).sum())
    return true_ids[t], pred_ids[p], iou, n_true, n_pred


def _matched(true_ids: np.ndarray, pred_ids: np.ndarray, iou: np.ndarray, threshold: float) -> int:
    """The size of a maximum one-to-one matching among pairs with IoU >= threshold."""
    from scipy.optimize import linear_sum_assignment

    candidates = iou >= threshold
    if not candidates.any():
        return 0
    t, p = true_ids[candidates], pred_ids[candidates]
    if len(np.unique(t)) == len(t) and len(np.unique(p)) == len(p):
        return int(len(t))  # every candidate pair is already unique (always so above 0.5)
    rows, t_index = np.unique(t, return_inverse=True)
    cols, p_index = np.unique(p, return_inverse=True)
    score = np.zeros((len(rows), len(cols)))
    score[t_index, p_index] = 1.0 + iou[candidates]  # most matches first, then the higher IoU
    r, c = linear_sum_assignment(score, maximize=True)
    return int((score[r, c] > 0).sum())


def match(truth: np.ndarray, pred: np.ndarray, thresholds=THRESHOLDS) -> list[Matching]:
    """TP / FP / FN of the instance masks ``truth`` and ``pred`` at each IoU threshold."""
    true_ids, pred_ids, iou, n_true, n_pred = iou_pairs(truth, pred)
    result = []
    for threshold in thresholds:
        tp = _matched(true_ids, pred_ids, iou, float(threshold))
        result.append(Matching(float(threshold), tp, n_pred - tp, n_true - tp))
    return result


def object_scores(truth: np.ndarray, pred: np.ndarray) -> dict:
    """AP@0.5, AP averaged over 0.5:0.95, F1@0.5, precision and recall @0.5, the count error and the counts."""
    matchings = match(truth, pred)
    at_half = matchings[0]
    return {"ap50": at_half.ap, "ap_50_95": float(np.mean([m.ap for m in matchings])), "f1": at_half.f1,
            "precision": at_half.precision, "recall": at_half.recall,
            "count_error": (at_half.tp + at_half.fp) - (at_half.tp + at_half.fn),
            "n_true": at_half.tp + at_half.fn, "n_pred": at_half.tp + at_half.fp}


def pooled_scores(pairs) -> dict:
    """Scores over many images: TP / FP / FN summed per threshold (StarDist's ``matching_dataset`` by image
    pooling), mean absolute count error per image."""
    totals = None
    count_errors = []
    for truth, pred in pairs:
        matchings = match(truth, pred)
        count_errors.append(matchings[0].fp - matchings[0].fn)
        if totals is None:
            totals = [[m.tp, m.fp, m.fn] for m in matchings]
        else:
            for row, m in zip(totals, matchings):
                row[0] += m.tp
                row[1] += m.fp
                row[2] += m.fn
    if totals is None:
        raise ValueError("no image pairs to score")
    pooled = [Matching(t, *row) for t, row in zip(THRESHOLDS, totals)]
    return {"ap50": pooled[0].ap, "ap_50_95": float(np.mean([m.ap for m in pooled])), "f1": pooled[0].f1,
            "precision": pooled[0].precision, "recall": pooled[0].recall,
            "count_error_abs": float(np.mean(np.abs(count_errors))),
            "count_error": float(np.mean(count_errors)), "images": len(count_errors)}


def evaluate_folders(pred_dir, mask_dir) -> list[dict]:
    """Object scores of the instance masks in ``pred_dir`` against those in ``mask_dir`` (matched by name stem):
    one row per image {name, ap50, ap_50_95, f1, count_error, n_true, n_pred} and a last row ``"pooled"`` with the
    TP / FP / FN summed over the images and the mean absolute count error. InputError when nothing matches or a
    pair differs in shape. One-value masks are split into objects by connected components (warned)."""
    from pathlib import Path

    from ..data.io import UNCERTAINTY_SUFFIX, list_images, name_stem
    from ..errors import InputError
    from .files import read_instances

    pred_dir, mask_dir = Path(pred_dir), Path(mask_dir)
    preds = {name_stem(p): p for p in list_images(pred_dir) if not name_stem(p).endswith(UNCERTAINTY_SUFFIX)}
    masks = {name_stem(p): p for p in list_images(mask_dir)}
    names = sorted(set(preds) & set(masks))
    if not names:
        raise InputError(f"no prediction in {pred_dir} has the name stem of a mask in {mask_dir}; name each "
                         "prediction like its ground-truth mask")
    rows, pairs = [], []
    for name in names:
        pred, truth = read_instances(preds[name]), read_instances(masks[name])
        if pred.shape != truth.shape:
            raise InputError(f"shape mismatch for {name}: prediction {pred.shape}, mask {truth.shape}")
        scores = object_scores(truth, pred)
        rows.append({"name": name, **{key: scores[key] for key in ("ap50", "ap_50_95", "f1", "count_error",
                                                                   "n_true", "n_pred")}})
        pairs.append((truth, pred))
    pooled = pooled_scores(pairs)
    rows.append({"name": "pooled", "ap50": pooled["ap50"], "ap_50_95": pooled["ap_50_95"], "f1": pooled["f1"],
                 "count_error": pooled["count_error_abs"], "n_true": sum(r["n_true"] for r in rows),
                 "n_pred": sum(r["n_pred"] for r in rows)})
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows of :func:`evaluate_folders` as aligned text (the pooled row's count error is the mean absolute)."""
    header = ("image", "AP@0.5", "AP 0.5:0.95", "F1", "count err", "true", "predicted")
    cells = [header] + [(r["name"], f"{r['ap50']:.3f}", f"{r['ap_50_95']:.3f}", f"{r['f1']:.3f}",
                         f"{r['count_error']:+g}" if r["name"] != "pooled" else f"|{r['count_error']:.2f}|",
                         str(r["n_true"]), str(r["n_pred"])) for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    return "\n".join("  ".join([line[0].ljust(widths[0]), *(v.rjust(w) for v, w in zip(line[1:], widths[1:]))])
                     for line in cells)
