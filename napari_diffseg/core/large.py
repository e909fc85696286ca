"""Out-of-core prediction: images larger than memory are read block by block (TIFF memory-mapped or through
tifffile's zarr view, zarr arrays as they are, PNG and JPEG decoded once) and their masks written block by block
to a zarr array, then copied tile by tile into a tiled TIFF. Each block is predicted with a halo of context around
it that is cropped away, so block borders do not show; intensities are normalised with ranges taken from a regular
subsample of the whole image, so every block sees the same mapping. Memory is bounded by a block, not by the image
(a PNG or JPEG adds its decoded pixels).

A finished zarr output carries ``attrs["diffseg"]["complete"] = True``, written last: an output without it was
interrupted (cancelled, killed) and is not claimed complete; the TIFF is written under a temporary name and renamed
once whole.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
import itertools
import mmap
import os
from pathlib import Path
import shutil

import numpy as np

from .errors import InputError
from .io import ZARR_SUFFIX, check_finite, intensity_ranges, normalise_channels, read_image, spatial_shape
from .model import SegmentationModel
from .predict import run_to_completion

LARGE_IMAGE_PIXELS = 4096 * 4096  # images with more spatial pixels than this are predicted block by block
BLOCK_2D = (2048, 2048)
HALO_2D = (128, 128)
BLOCK_3D = (64, 512, 512)
HALO_3D = (16, 64, 64)
RANGE_SAMPLES = 4_000_000  # pixels of the regular subsample that the intensity ranges are taken from
TIFF_TILE = 512
COMPLETE_ATTR = "diffseg"
DECODED_SUFFIXES = (".png", ".jpg", ".jpeg")  # formats without random access: decoded whole, then cut into blocks
OVERVIEW_PIXELS = 4096 * 4096  # an overview of a large image (what the viewer holds in memory) has at most this many


@dataclass
class BlockProgress:
    done: int
    total: int
    region: tuple[slice, ...] | None = None  # the spatial part of the output this block wrote (None: not known)


def overview_step(shape: tuple[int, ...]) -> int:
    """The power-of-two step, the same on every spatial axis, of an overview of ``shape`` with at most
    OVERVIEW_PIXELS pixels (voxels)."""
    step = 1
    while np.prod([-(-n // step) for n in shape], dtype=np.float64) > OVERVIEW_PIXELS:
        step *= 2
    return step


def overview_shape(shape: tuple[int, ...], step: int) -> tuple[int, ...]:
    return tuple(-(-int(n) // step) for n in shape)


def overview_of_region(array, region: tuple[slice, ...], step: int) -> tuple[tuple[slice, ...], np.ndarray]:
    """Every ``step``-th pixel (on the overview's grid, 0, step, 2 step, ...) of ``array[region]`` along the spatial
    axes, and where it goes in the overview; channels after the spatial axes come along."""
    first = [-(-s.start // step) * step for s in region]
    sampled = tuple(slice(f, s.stop, step) for f, s in zip(first, region))
    target = tuple(slice(f // step, -(-s.stop // step)) for f, s in zip(first, region))
    return target, np.asarray(array[sampled])


def output_zarr(target: Path) -> Path:
    """The zarr mask that :func:`predict_file` writes block by block before the TIFF ``target``."""
    return Path(target).with_suffix(ZARR_SUFFIX)


def open_lazy(path: Path):
    """A lazily read array of an image on disk: a zarr array (a ``.zarr`` folder), a memory-mapped TIFF (uncompressed,
    contiguous) or tifffile's zarr view of any other TIFF (read strip by strip or tile by tile). A PNG or JPEG has no
    random access: it is decoded once (its pixels, as stored, in memory) and then cut into blocks like the others, so
    that what a prediction holds beyond the pixels is bounded by a block, as for a TIFF."""
    import tifffile
    import zarr

    path = Path(path)
    if path.suffix.lower() in DECODED_SUFFIXES:
        return read_image(path)
    if path.is_dir():
        try:
            found = zarr.open(str(path), mode="r")
        except Exception as error:  # zarr raises several types for a folder that is not a zarr store
            raise InputError(f"{path}: not a zarr array ({type(error).__name__}: {error})") from None
        if isinstance(found, zarr.Group):
            arrays = sorted(found.array_keys())
            if not arrays:
                raise InputError(f"{path}: a zarr group without arrays")
            found = found[arrays[0]]  # OME-Zarr: "0" is full resolution
        return found
    try:
        return tifffile.memmap(str(path), mode="r")
    except (ValueError, OSError):  # compressed, tiled or otherwise not contiguous: read through the zarr view
        pass
    try:
        store = tifffile.imread(str(path), aszarr=True)
        found = zarr.open(store, mode="r")
    except Exception as error:
        raise InputError(f"{path}: cannot be read as a TIFF ({type(error).__name__}: {error})") from None
    if isinstance(found, zarr.Group):  # pyramidal TIFF: level 0 is full resolution
        found = found[sorted(found.array_keys())[0]]
    return found


class _ShapeOnly:
    """An object with only a shape, for the layout rules of core.io (no pixel is read)."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(shape)


def pixel_count(path: Path) -> int:
    """Spatial pixels of a TIFF, PNG, JPEG or zarr image, from its header; 0 for what cannot be read."""
    path = Path(path)
    if path.suffix.lower() in DECODED_SUFFIXES:
        try:
            from PIL import Image

            with Image.open(path) as image:  # reads the header only
                width, height = image.size
            return int(width) * int(height)
        except Exception:  # not an image: reading it says why
            return 0
    if not (path.is_dir() or path.suffix.lower() in (".tif", ".tiff")):
        return 0
    try:
        return int(np.prod(spatial_shape(_ShapeOnly(open_lazy(path).shape))))
    except InputError:
        return 0


def subsample_ranges(image, spatial_dims: int, max_samples: int = RANGE_SAMPLES) -> list[tuple[float, float]]:
    """Per-channel intensity ranges from a regular subsample (every s-th pixel along each spatial axis, s chosen so
    that at most ``max_samples`` pixels are read into memory; s = 1, i.e. exact, for images up to that size)."""
    spatial = tuple(image.shape[:spatial_dims])
    stride = 1
    while int(np.prod([-(-n // stride) for n in spatial])) > max_samples:
        stride += 1
    index = tuple(slice(None, None, stride) for _ in spatial)
    return intensity_ranges(np.asarray(image[index]))


def block_corners(shape: tuple[int, ...], block: tuple[int, ...]) -> list[tuple[int, ...]]:
    return list(itertools.product(*[range(0, n, b) for n, b in zip(shape, block)]))


@dataclass(frozen=True)
class BlockPlan:
    """How one image is cut: its spatial shape, block and halo sizes, and the intensity ranges every block uses."""

    shape: tuple[int, ...]
    block: tuple[int, ...]
    halo: tuple[int, ...]
    ranges: tuple[tuple[float, float], ...]

    def corners(self) -> list[tuple[int, ...]]:
        return block_corners(self.shape, self.block)


def plan_blocks(model: SegmentationModel, image, name: str = "image", block: tuple[int, ...] | None = None,
                halo: tuple[int, ...] | None = None) -> BlockPlan:
    """Check that the image fits the model and plan its blocks (reads only a regular subsample)."""
    model.check_layout(_ShapeOnly(image.shape), name)
    dims = model.config.spatial_dims
    ranges = tuple(subsample_ranges(image, dims))
    release_mapped_pages(image)
    return BlockPlan(tuple(int(n) for n in image.shape[:dims]), tuple(block or (BLOCK_2D if dims == 2 else BLOCK_3D)),
                     tuple(halo or (HALO_2D if dims == 2 else HALO_3D)), ranges)


def create_output(out_path: Path, plan: BlockPlan):
    """An empty uint8 zarr array for the mask, chunked like the blocks (an earlier output there is replaced)."""
    import zarr

    out_path = Path(out_path)
    if out_path.exists():
        shutil.rmtree(out_path) if out_path.is_dir() else out_path.unlink()
    return zarr.open_array(str(out_path), mode="w", shape=plan.shape, dtype=np.uint8,
                           chunks=tuple(min(b, n) for b, n in zip(plan.block, plan.shape)))


def predict_block(model: SegmentationModel, image, out, plan: BlockPlan, corner: tuple[int, ...], name: str = "image",
                  tile: tuple[int, ...] | None = None) -> tuple[slice, ...]:
    """Predict the block at ``corner`` with its halo of context and write its core into ``out``; returns the core."""
    core = tuple(slice(c, min(c + b, n)) for c, b, n in zip(corner, plan.block, plan.shape))
    read = tuple(slice(max(0, s.start - h), min(n, s.stop + h)) for s, h, n in zip(core, plan.halo, plan.shape))
    raw = np.asarray(image[read])
    check_finite(raw, name)
    prediction = run_to_completion(model.iter_predict_normalised(normalise_channels(raw, list(plan.ranges)),
                                                                 tile=tile))
    inner = tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(core, read))
    out[core] = prediction.mask[inner]
    del raw, prediction
    release_mapped_pages(image)
    return core


def mark_complete(out, model: SegmentationModel, name: str) -> None:
    out.attrs[COMPLETE_ATTR] = {"complete": True, "threshold": model.threshold, "source": name}


def predict_large(model: SegmentationModel, image, out_path: Path, name: str = "image",
                  block: tuple[int, ...] | None = None, halo: tuple[int, ...] | None = None,
                  tile: tuple[int, ...] | None = None) -> Generator[BlockProgress, None, Path]:
    """Predict a lazily read raw image block by block into a zarr array at ``out_path`` (uint8 class ids, chunked
    like the blocks); yields progress after every block and returns the path. Stopping the generator between
    blocks leaves an output without the completion mark."""
    plan = plan_blocks(model, image, name, block, halo)
    out = create_output(out_path, plan)
    corners = plan.corners()
    for done, corner in enumerate(corners, start=1):
        region = predict_block(model, image, out, plan, corner, name, tile)
        yield BlockProgress(done, len(corners), region)
    mark_complete(out, model, name)
    return Path(out_path)


def predict_file(model: SegmentationModel, source: Path, target: Path, tile: tuple[int, ...] | None = None,
                 run_blocks: Callable[[Path], Generator[BlockProgress, None, Path]] | None = None,
                 ) -> Generator[BlockProgress, None, Path]:
    """A large image file (or zarr array) block by block into ``target`` with suffix .zarr, then copied into the
    tiled TIFF ``target``; yields block progress, returns ``target``. ``run_blocks(zarr_path)``: another runner of
    the blocks (a dask cluster's, core/large_cluster.py); default: this process."""
    source, target = Path(source), Path(target)
    zarr_path = output_zarr(target)
    if run_blocks is None:
        yield from predict_large(model, open_lazy(source), zarr_path, name=source.name, tile=tile)
    else:
        yield from run_blocks(zarr_path)
    return zarr_to_tiff(zarr_path, target)


def release_mapped_pages(image) -> None:
    """Unmap the file pages a memory-mapped input has touched so far (they stay in the page cache): without this,
    every page read stays in the process's resident memory and a large TIFF ends up counted whole."""
    mapping = getattr(image, "_mmap", None)
    if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


def is_complete(path: Path) -> bool:
    """Whether a zarr output of :func:`predict_large` was written to its end."""
    import zarr

    try:
        return bool(zarr.open_array(str(path), mode="r").attrs.get(COMPLETE_ATTR, {}).get("complete"))
    except Exception:  # missing or not a zarr array
        return False


def zarr_to_tiff(source: Path, target: Path, tile: int = TIFF_TILE) -> Path:
    """Copy a 2D or 3D uint8 zarr mask into a tiled, compressed TIFF (BigTIFF where needed), one row of tiles in
    memory at a time; written under a temporary name and renamed when whole."""
    import tifffile
    import zarr

    array = zarr.open_array(str(source), mode="r")
    shape = tuple(array.shape)
    planes = [None] if len(shape) == 2 else list(range(shape[0]))
    height, width = shape[-2:]

    def tiles() -> Iterator[np.ndarray]:
        for z in planes:
            for y in range(0, height, tile):
                rows = np.asarray(array[y:y + tile] if z is None else array[z, y:y + tile])
                for x in range(0, width, tile):
                    piece = np.zeros((tile, tile), np.uint8)
                    part = rows[:, x:x + tile]
                    piece[:part.shape[0], :part.shape[1]] = part
                    yield piece

    target = Path(target)
    partial = target.with_name(f".{target.name}.partial")
    tifffile.imwrite(partial, tiles(), shape=shape, dtype=np.uint8, tile=(tile, tile), compression="zlib", photometric="minisblack",
                     bigtiff=np.prod(shape) > 2**31)
    os.replace(partial, target)
    return target
