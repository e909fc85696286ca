"""Training targets of objects mode: instance ids -> three classes (0 background, 1 object interior, 2 object
boundary), and semantic masks -> instance ids by connected components.

Why three classes: a two-class network sees two touching nuclei as one blob; a boundary class drawn on the
inside of every object leaves a gap of background-or-boundary between the interiors of touching objects, so the
connected interiors are one seed per object, and a seeded watershed gives the boundary pixels back to their
objects (the 3-label targets of the DSB 2018 U-Net entries and of CellProfiler / ilastik boundary workflows).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import InputError

logger = logging.getLogger(__name__)

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
NUM_CLASSES = 3
DEFAULT_BOUNDARY_WIDTH = 1  # pixels (voxels) on the inside of each object's outline


def _ball(ndim: int, radius: int) -> np.ndarray:
    grid = np.indices((2 * radius + 1,) * ndim) - radius
    return (grid ** 2).sum(axis=0) <= radius ** 2


def instance_dtype(count: int) -> np.dtype:
    """uint16 for up to 65,535 objects, uint32 above."""
    return np.dtype(np.uint16) if count <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


def as_instances(mask: np.ndarray, *, name: str | Path | None = None) -> np.ndarray:
    """Instance ids (uint16 / uint32, 0 = background) from a label image as read from disk or a Labels layer.

    A mask with more than one id keeps its ids. A mask whose only non-zero value is 1 (or a boolean one) is a
    semantic mask: it is split into objects by connected components (full connectivity), with a warning when that
    gives more than one object. Negative or non-integer values raise InputError.
    """
    mask = np.asarray(mask)
    label = f"{name}: " if name else ""
    if mask.ndim not in (2, 3):
        raise InputError(f"{label}instance mask has {mask.ndim} dimension(s) {mask.shape}; expected (Y, X) or (Z, Y, X)")
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    if not np.issubdtype(mask.dtype, np.number) or np.iscomplexobj(mask):
        raise InputError(f"{label}instance mask has unsupported pixel type {mask.dtype}; save it as uint16 or uint32")
    if np.issubdtype(mask.dtype, np.floating):
        if not np.isfinite(mask).all() or not np.array_equal(mask, np.round(mask)):
            raise InputError(f"{label}instance mask has non-integer, NaN or infinite values; save whole-number ids")
    if mask.size and mask.min() < 0:
        raise InputError(f"{label}instance mask has negative values; ids must be 0 (background) or positive")
    high = int(mask.max()) if mask.size else 0
    if high > np.iinfo(np.uint32).max:
        raise InputError(f"{label}instance mask has id {high}, beyond uint32")
    if high == 1:
        from skimage import measure

        split, count = measure.label(mask > 0, return_num=True, connectivity=mask.ndim)
        if count > 1:
            logger.warning("%sa mask with one label value (a semantic mask) was split into %d objects by connected "
                           "components; touching objects stay one object: paint one id per object instead",
                           label, count)
        return split.astype(instance_dtype(count))
    return mask.astype(instance_dtype(high))


def instances_to_classes(instances: np.ndarray, boundary_width: int = DEFAULT_BOUNDARY_WIDTH) -> np.ndarray:
    """uint8 three-class target (0 background, 1 interior, 2 boundary) of an instance mask, 2D or 3D.

    A pixel of an object is boundary when a pixel within ``boundary_width`` (a disc / ball) has another id,
    background included, so touching objects are separated by a band of 2 x ``boundary_width``. An object too thin
    to keep an interior keeps the pixels farthest from its outline as interior, so it still gets a seed.
    """
    from scipy import ndimage

    instances = np.asarray(instances)
    if boundary_width < 1:
        raise ValueError(f"boundary_width must be at least 1, got {boundary_width}")
    ids = instances.astype(np.int64, copy=False)
    footprint = _ball(ids.ndim, int(boundary_width))
    high = ndimage.grey_dilation(ids, footprint=footprint, mode="nearest")
    low = ndimage.grey_erosion(ids, footprint=footprint, mode="nearest")
    foreground = ids > 0
    edge = foreground & ((high != ids) | (low != ids))
    target = np.zeros(ids.shape, np.uint8)
    target[foreground] = INTERIOR
    target[edge] = BOUNDARY
    present = np.unique(ids[foreground])
    with_interior = np.unique(ids[target == INTERIOR])
    lost = np.setdiff1d(present, with_interior)
    if lost.size:  # thin objects: their deepest pixels become the interior (a seed)
        region = np.isin(ids, lost)
        inner = np.where(region, ids, 0)
        one = _ball(ids.ndim, 1)
        rim = region & ((ndimage.grey_dilation(ids, footprint=one, mode="nearest") != ids)
                        | (ndimage.grey_erosion(ids, footprint=one, mode="nearest") != ids))
        core = region & ~rim
        distance = ndimage.distance_transform_edt(core)  # 0 outside the cores; the rims part touching objects
        deepest = np.zeros(int(lost.max()) + 1)
        deepest[lost] = ndimage.maximum(distance, inner, lost)
        seeded = core & (distance >= deepest[inner])
        target[seeded] = INTERIOR
        tiny = np.setdiff1d(lost, np.unique(inner[seeded]))
        target[np.isin(ids, tiny)] = INTERIOR  # objects of one or two pixels across: all of them is the seed
    return target


def classes_of_mask(mask: np.ndarray, boundary_width: int = DEFAULT_BOUNDARY_WIDTH, *,
                    name: str | Path | None = None) -> np.ndarray:
    """The three-class target of a label image as read (instance ids, or a semantic mask split into objects)."""
    return instances_to_classes(as_instances(mask, name=name), boundary_width)
