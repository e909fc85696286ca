"""Segmentation metrics on binary foreground (value > 0): Dice, Jaccard, HD95, folder evaluation and a text table.

Conventions: Dice and Jaccard are 1.0 when both masks are empty. HD95 is the 95th percentile of the symmetric
surface distances (the union of the distances from each surface voxel of one mask to the nearest surface voxel
of the other, in both directions, as MedPy's ``hd95``); it is 0.0 when both masks are empty and NaN when exactly
one is. Surfaces are the foreground voxels removed by one binary erosion with the face-connected structuring
element (image borders count as background). ``spacing`` gives the voxel size per axis.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_diffseg.core.errors import InputError
from napari_diffseg.core.data.io import UNCERTAINTY_SUFFIX, list_images, name_stem, read_mask

logger = logging.getLogger(__name__)

POOLED_NAME = "pooled/mean"



def _binary_pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred) > 0, np.asarray(target) > 0
    if p.shape != t.shape:
        raise InputError(f"shape mismatch: prediction {p.shape} vs mask {t.shape}; compare masks of the same size")
    return p, t


def _counts(p: np.ndarray, t: np.ndarray) -> tuple[int, int, int]:
    """(intersection, |pred|, |target|)."""
    return int(np.count_nonzero(p & t)), int(np.count_nonzero(p)), int(np.count_nonzero(t))


def _dice_from_counts(inter: int, n_pred: int, n_target: int) -> float:
    total = n_pred + n_target
    return 1.0 if total == 0 else float(2.0 * inter / total)


def _jaccard_from_counts(inter: int, n_pred: int, n_target: int) -> float:
    union = n_pred + n_target - inter
    return 1.0 if union == 0 else float(inter / union)


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient 2|P & T| / (|P| + |T|) of the foregrounds (> 0); 1.0 when both are empty."""
    return _dice_from_counts(*_counts(*_binary_pair(pred, target)))


def jaccard(pred: np.ndarray, target: np.ndarray) -> float:
    """Jaccard index |P & T| / |P | T| of the foregrounds (> 0); 1.0 when both are empty."""
    return _jaccard_from_counts(*_counts(*_binary_pair(pred, target)))


def _spacing_tuple(spacing: float | Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if np.isscalar(spacing):
        return (float(spacing),) * ndim
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim:
        raise ValueError(f"spacing {values} must have one entry per axis ({ndim})")
    if any(v <= 0 for v in values):
        raise ValueError(f"spacing {values} must be positive")
    return values


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = ndi.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndi.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(
    pred: np.ndarray, target: np.ndarray, spacing: float | Sequence[float] | None = None
) -> np.ndarray:
    """Distances from every surface voxel of each mask to the nearest surface voxel of the other (both directions).

    Both masks must be non-empty. Only the bounding box of the union is processed (exact, since outside it both
    masks are background).
    """
    p, t = _binary_pair(pred, target)
    sampling = _spacing_tuple(spacing, p.ndim)
    box = ndi.find_objects((p | t).astype(np.uint8))[0]
    p, t = p[box], t[box]
    surf_p, surf_t = _surface(p), _surface(t)
    to_t = ndi.distance_transform_edt(~surf_t, sampling=sampling)[surf_p]
    to_p = ndi.distance_transform_edt(~surf_p, sampling=sampling)[surf_t]
    return np.concatenate([to_t, to_p])


def hd95(pred: np.ndarray, target: np.ndarray, spacing: float | Sequence[float] | None = None) -> float:
    """95th percentile of the symmetric surface distances; 0.0 if both are empty, NaN if exactly one is."""
    p, t = _binary_pair(pred, target)
    has_p, has_t = bool(p.any()), bool(t.any())
    if not has_p and not has_t:
        return 0.0
    if has_p != has_t:
        return math.nan
    return float(np.percentile(surface_distances(p, t, spacing), 95))


def evaluate_folders(pred_dir: Path, mask_dir: Path) -> list[dict]:
    """Compare predictions with ground-truth masks matched by file name stem.

    Returns one row {name, dice, jaccard, hd95} per matched image (sorted by name) and a last row named
    ``"pooled/mean"`` with Dice and Jaccard pooled over all pixels of all images and the NaN-mean of HD95.
    InputError when nothing matches or a pair differs in shape.
    """
    pred_dir, mask_dir = Path(pred_dir), Path(mask_dir)
    preds = {name_stem(p): p for p in list_images(pred_dir) if not name_stem(p).endswith(UNCERTAINTY_SUFFIX)}
    masks = {name_stem(p): p for p in list_images(mask_dir)}
    names = sorted(set(preds) & set(masks))
    if not names:
        raise InputError(
            f"no prediction in {pred_dir} has the name stem of a mask in {mask_dir}; "
            "name each prediction like its ground-truth mask"
        )
    for label, missing in (("predictions without a mask", set(preds) - set(masks)),
                           ("masks without a prediction", set(masks) - set(preds))):
        if missing:
            logger.warning("%d %s are ignored: %s", len(missing), label, ", ".join(sorted(missing)[:10]))
    rows: list[dict] = []
    totals = [0, 0, 0]
    for name in names:
        p = read_mask(preds[name]) > 0
        t = read_mask(masks[name]) > 0
        if p.shape != t.shape:
            raise InputError(
                f"shape mismatch for {name}: prediction {preds[name]} is {p.shape} but mask {masks[name]} is "
                f"{t.shape}; predict on the same images as the masks"
            )
        counts = _counts(p, t)
        totals = [a + b for a, b in zip(totals, counts)]
        rows.append(
            {"name": name, "dice": _dice_from_counts(*counts), "jaccard": _jaccard_from_counts(*counts),
             "hd95": hd95(p, t)}
        )
    distances = [r["hd95"] for r in rows if not math.isnan(r["hd95"])]
    rows.append(
        {"name": POOLED_NAME, "dice": _dice_from_counts(*totals), "jaccard": _jaccard_from_counts(*totals),
         "hd95": float(np.mean(distances)) if distances else math.nan}
    )
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """Markdown-style table with columns name, dice, jaccard, hd95 (4 decimals), columns aligned."""
    header = ("name", "dice", "jaccard", "hd95")

    def cell(value: object) -> str:
        if isinstance(value, (float, np.floating)):
            return "nan" if math.isnan(value) else f"{value:.4f}"
        if isinstance(value, (int, np.integer)):
            return f"{float(value):.4f}"
        return str(value)

    body = [[str(r.get("name", ""))] + [cell(r.get(k, math.nan)) for k in header[1:]] for r in rows]
    widths = [max(len(header[i]), *(len(line[i]) for line in body)) if body else len(header[i]) for i in range(4)]

    def line(values: Sequence[str]) -> str:
        cells = [values[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(values[1:], widths[1:])]
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(b) for b in body)])


THRESHOLDS = np.round(np.arange(0.1, 0.91, 0.05), 2)


def best_threshold(foreground_probs: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> tuple[float, float]:
    """Sweep the foreground threshold on validation images; returns (threshold, pooled Dice) of the best one."""
    probs = np.concatenate([p.ravel() for p in foreground_probs])
    truth = np.concatenate([(t > 0).ravel() for t in targets])
    truth_sum = truth.sum()
    best = (0.5, -1.0)
    for threshold in THRESHOLDS:
        pred = probs > threshold
        denominator = pred.sum() + truth_sum
        score = 1.0 if denominator == 0 else 2.0 * np.logical_and(pred, truth).sum() / denominator
        if score > best[1] + 1e-9:
            best = (float(threshold), float(score))
    return best
