"""Objects of images larger than memory: the three-class mask (a zarr array written block by block by
core/prediction/large.py) decoded into instance ids block by block, with one id per object across block borders.

How an object crossing a block border keeps one id: each block is decoded inside a window that adds ``margin``
pixels of context on every side. An object belongs to the one block whose core holds its *anchor*, the first pixel
(in raster order) of its seed: the connected interior component that the watershed grows it from. A seed that lies
wholly inside two windows is the same set of pixels in both, so both windows agree on its anchor and exactly one
block writes the object, whole, with a global id (blocks take ids in turn). Objects are written only where no
earlier block wrote, so two blocks never share a pixel. An object wider than the margin can touch its window's
edge: it is then written as far as the window reaches (counted in ``cut``; raise the margin). Memory: one window.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
import itertools
from pathlib import Path

import numpy as np

from ..data.io import zarr_to_tiff
from .decode import MIN_SIZE, classes_to_instances
from .targets import INTERIOR, instance_dtype

BLOCK_2D, MARGIN_2D = (2048, 2048), (128, 128)
BLOCK_3D, MARGIN_3D = (64, 512, 512), (16, 64, 64)


@dataclass
class DecodeProgress:
    done: int
    total: int


@dataclass
class DecodedObjects:
    count: int  # objects written (ids 1..count)
    cut: int  # objects wider than the margin, written as far as their window reached


def _anchors(local: np.ndarray, seeds: np.ndarray) -> dict[int, int]:
    """Flat index (in the window) of the first seed pixel of each object; objects without a seed pixel: their first
    pixel."""
    anchors: dict[int, int] = {}
    for source in (np.where(seeds, local, 0).ravel(), local.ravel()):
        nonzero = np.flatnonzero(source)
        ids, first = np.unique(source[nonzero], return_index=True)
        for object_id, index in zip(ids.tolist(), nonzero[first].tolist()):
            anchors.setdefault(object_id, index)
    return anchors


def decode_blocks(classes, out, block: tuple[int, ...] | None = None, margin: tuple[int, ...] | None = None,
                  min_size: int = MIN_SIZE) -> Generator[DecodeProgress, None, DecodedObjects]:
    """Decode the three-class mask ``classes`` (array-like: numpy, zarr) into instance ids in ``out`` (array-like
    of the same shape, zeros, an integer type wide enough: uint32), block by block; yields progress per block."""
    shape = tuple(int(n) for n in classes.shape)
    dims = len(shape)
    block = tuple(block or (BLOCK_2D if dims == 2 else BLOCK_3D))
    margin = tuple(margin or (MARGIN_2D if dims == 2 else MARGIN_3D))
    corners = list(itertools.product(*[range(0, n, b) for n, b in zip(shape, block)]))
    next_id, cut = 1, 0
    for done, corner in enumerate(corners, start=1):
        core = tuple(slice(c, min(c + b, n)) for c, b, n in zip(corner, block, shape))
        window = tuple(slice(max(0, s.start - m), min(n, s.stop + m)) for s, m, n in zip(core, margin, shape))
        window_classes = np.asarray(classes[window])
        local = classes_to_instances(window_classes, min_size=min_size,
                                     origin=tuple(w.start for w in window)).astype(np.int64)
        if local.any():
            window_shape = local.shape
            anchors = _anchors(local, window_classes == INTERIOR)
            inner = [(s.start - w.start, s.stop - w.start) for s, w in zip(core, window)]
            owned = []
            for object_id, flat in anchors.items():
                position = np.unravel_index(flat, window_shape)
                if all(low <= p < high for p, (low, high) in zip(position, inner)):
                    owned.append(object_id)
            if owned:
                edges = np.zeros(window_shape, bool)  # the window's sides that are not the image's border
                for axis, (w, n) in enumerate(zip(window, shape)):
                    index = [slice(None)] * dims
                    if w.start > 0:
                        index[axis] = 0
                        edges[tuple(index)] = True
                    if w.stop < n:
                        index[axis] = -1
                        edges[tuple(index)] = True
                cut += len(np.intersect1d(np.unique(local[edges]), owned))
                new_ids = np.zeros(int(local.max()) + 1, np.int64)
                new_ids[owned] = np.arange(next_id, next_id + len(owned))
                next_id += len(owned)
                relabelled = new_ids[local]
                existing = np.asarray(out[window])
                out[window] = np.where((existing == 0) & (relabelled > 0), relabelled, existing).astype(existing.dtype)
        yield DecodeProgress(done, len(corners))
    return DecodedObjects(next_id - 1, cut)


def zarr_to_instance_tiff(source: Path, target: Path, count: int, tile: int = 512) -> Path:
    """Copy a 2D or 3D instance zarr array into a tiled, compressed TIFF of uint16 (uint32 beyond 65,535 objects),
    one row of tiles in memory at a time, written under a temporary name and renamed when whole."""
    return zarr_to_tiff(source, target, tile=tile, dtype=instance_dtype(count))


def decode_large(classes_zarr: Path, target: Path, block: tuple[int, ...] | None = None,
                 margin: tuple[int, ...] | None = None) -> Generator[DecodeProgress, None, DecodedObjects]:
    """The three-class zarr mask at ``classes_zarr`` decoded block by block into the instance TIFF ``target``
    (through a hidden uint32 zarr beside it, removed at the end)."""
    import shutil

    import zarr

    classes = zarr.open_array(str(classes_zarr), mode="r")
    scratch = Path(target).with_name(f".{Path(target).stem}.objects.zarr")
    if scratch.exists():
        shutil.rmtree(scratch)
    dims = len(classes.shape)
    chunks = tuple(min(b, n) for b, n in zip(block or (BLOCK_2D if dims == 2 else BLOCK_3D), classes.shape))
    out = zarr.open_array(str(scratch), mode="w", shape=classes.shape, dtype=np.uint32, chunks=chunks)
    try:
        decoded = yield from decode_blocks(classes, out, block, margin)
        zarr_to_instance_tiff(scratch, target, decoded.count)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return decoded
