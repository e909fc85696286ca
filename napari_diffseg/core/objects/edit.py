"""Editing an instance mask object by object (the Review panel's Merge, Delete and Split in objects mode): pure
functions from an instance mask (2D or 3D, ids > 0) to a new one of the same shape and dtype; the input is never
changed. A missing id or an edit that would do nothing is an InputError that says what to do instead."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..errors import InputError


def _present(instances: np.ndarray, ids: Iterable[int]) -> list[int]:
    wanted = sorted({int(i) for i in ids})
    if any(i <= 0 for i in wanted):
        raise InputError("0 is the background, not an object: choose object ids of 1 or more")
    found = set(np.unique(instances[np.isin(instances, wanted)]).tolist()) if wanted else set()
    missing = [i for i in wanted if i not in found]
    if missing:
        raise InputError(f"no object with id {', '.join(map(str, missing))} in this mask; pick an object with "
                         "napari's colour picker to see its id")
    return wanted


def merge_ids(instances: np.ndarray, ids: Iterable[int], into: int | None = None) -> np.ndarray:
    """Every object of ``ids`` (at least two) becomes one object with id ``into`` (default: the smallest of them;
    it must be one of ``ids``)."""
    instances = np.asarray(instances)
    wanted = _present(instances, ids)
    if len(wanted) < 2:
        raise InputError("merging needs two different object ids")
    target = wanted[0] if into is None else int(into)
    if target not in wanted:
        raise InputError(f"the merged object keeps one of the ids {wanted}, not {target}")
    merged = instances.copy()
    merged[np.isin(instances, wanted)] = target
    return merged


def delete_id(instances: np.ndarray, object_id: int) -> np.ndarray:
    """Object ``object_id`` becomes background (0)."""
    instances = np.asarray(instances)
    _present(instances, [object_id])
    deleted = instances.copy()
    deleted[instances == object_id] = 0
    return deleted


def split_by_components(instances: np.ndarray, object_id: int) -> np.ndarray:
    """Object ``object_id`` split into its connected pieces (face connectivity: pieces that touch only at a corner
    are apart, so a thin erased line cuts); its largest piece keeps the id, the others get new ids above the
    mask's largest. Erase a line across the object where it should be cut, then split."""
    instances = np.asarray(instances)
    _present(instances, [object_id])
    from scipy import ndimage

    pieces, count = ndimage.label(instances == object_id)  # face connectivity (ndimage's default structure)
    if count < 2:
        raise InputError(f"object {object_id} is in one piece: erase a line across it where it should be cut "
                         "(napari's eraser, E), then split")
    sizes = np.bincount(pieces.ravel())[1:]
    order = np.argsort(-sizes, kind="stable") + 1  # piece labels, largest first
    high = int(instances.max())
    limit = np.iinfo(instances.dtype).max if np.issubdtype(instances.dtype, np.integer) else np.iinfo(np.uint32).max
    if high + count - 1 > limit:
        raise InputError(f"splitting object {object_id} needs ids up to {high + count - 1}, beyond this mask's "
                         f"{instances.dtype}")
    split = instances.copy()
    for rank, piece in enumerate(order[1:], start=1):
        split[pieces == piece] = high + rank
    return split


def changed_pixels(before: np.ndarray, after: np.ndarray) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Where ``after`` differs from ``before`` (the index arrays) and its values there: an edit as napari's Labels
    ``data_setitem`` takes it, so that it joins the layer's undo history."""
    where = np.nonzero(np.asarray(before) != np.asarray(after))
    return where, np.asarray(after)[where]
