"""Out-of-core prediction: images larger than memory are read block by block (TIFF memory-mapped or through
tifffile's zarr view, zarr arrays as they are, PNG and JPEG decoded once) and their masks written block by block
to a zarr array, then copied tile by tile into a tiled TIFF. Each block is predicted with a halo of context around
it that is cropped away, so block borders do not show; intensities are normalised with ranges taken from a regular
subsample of the whole image, so every block sees the same mapping. Memory is bounded by a block, not by the image
(a PNG or JPEG adds its decoded pixels).

A finished zarr output carries ``attrs["diffseg"]["complete"] = True``, written last: an output without it was
interrupted (cancelled, killed) and is not claimed complete; the TIFF is written under a temporary name and renamed
once whole.

OME-Zarr (NGFF): an input may be an OME-Zarr image, read at any resolution level of its multiscales (level 0, full
resolution, by default; its axes t, c, z, y, x become the layout the models take: z, y, x and channels last). The
mask of :func:`predict_file` is itself an OME-Zarr labels group, ``<stem>.zarr`` = ``{"labels": ["diffseg"]}`` with
the label image ``diffseg/0, 1, ...`` (level 0 written block by block, halved levels copied from it block by block),
its multiscales and image-label metadata (colours, class names) written with ome-zarr-py (extra ``[ome-zarr]``;
without it the levels are written and the metadata left out, with a warning), so NGFF readers (napari-ome-zarr,
ome-zarr-py, Fiji/MoBIE) open it. The group has the layout of an image's ``labels/`` folder.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
import itertools
import logging
import mmap
from pathlib import Path
import shutil
import warnings

import numpy as np

from ..errors import InputError
from ..data.io import (ZARR_SUFFIX, check_finite, intensity_ranges, normalise_channels, read_image,
                       spatial_shape, zarr_to_tiff)
from .model import SegmentationModel
from .predict import run_to_completion

log = logging.getLogger(__name__)

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
LABELS_NAME = "diffseg"  # the label image in a mask's OME-Zarr labels group: <stem>.zarr/diffseg/0, 1, ...
PYRAMID_TOP = 1024  # the mask's pyramid is halved (y, x) until its smallest level is at most this wide and high
PYRAMID_LEVELS = 12  # at most this many levels
# image-label colours (RGBA) of the class ids 1, 2, ... (0, background, is transparent); repeated for more classes
LABEL_COLOURS = ((255, 191, 0, 255), (0, 170, 255, 255), (230, 60, 160, 255), (60, 200, 90, 255),
                 (150, 90, 255, 255), (255, 110, 60, 255))


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


def output_folder(target: Path) -> Path:
    """The OME-Zarr labels group (a folder) that :func:`predict_file` writes beside the TIFF ``target``."""
    return Path(target).with_suffix(ZARR_SUFFIX)


def output_zarr(target: Path) -> Path:
    """The zarr array of the mask (full resolution, level 0 of the OME-Zarr labels in :func:`output_folder`) that
    :func:`predict_file` writes block by block before the TIFF ``target``."""
    return output_folder(target) / LABELS_NAME / "0"


def _ngff_attrs(group) -> dict:
    """The OME-NGFF attributes of a zarr group: under "ome" (NGFF 0.5, zarr v3) or at the top (0.4 and older)."""
    attrs = dict(group.attrs)
    ome = attrs.get("ome")
    return ome if isinstance(ome, dict) else attrs


def _ngff_multiscale(group, path: Path) -> dict | None:
    """The first multiscales entry of an OME-Zarr image group (None for a group that is not one); a
    bioformats2raw layout is entered at its first image ("0")."""
    import zarr

    attrs = _ngff_attrs(group)
    if "multiscales" not in attrs and "bioformats2raw.layout" in attrs and isinstance(group.get("0"), zarr.Group):
        return _ngff_multiscale(group["0"], path)
    multiscales = attrs.get("multiscales")
    if not multiscales:
        return None
    try:
        entry = dict(multiscales[0])
        entry["datasets"] = [dict(d) for d in entry["datasets"]]
        entry["_group"] = group
        return entry
    except (TypeError, KeyError, IndexError):
        raise InputError(f"{path}: malformed OME-Zarr multiscales metadata") from None


def _axis_names(entry: dict, ndim: int) -> list[tuple[str, str]]:
    """(name, type) of each axis of an NGFF multiscales entry (NGFF 0.3 gives names only; 0.1/0.2 none: t c z y x)."""
    axes = entry.get("axes") or ["t", "c", "z", "y", "x"][-ndim:]
    named = []
    for axis in axes:
        name = str(axis.get("name", "") if isinstance(axis, dict) else axis).lower()
        kind = str(axis.get("type", "") if isinstance(axis, dict) else "").lower()
        kind = kind or {"t": "time", "c": "channel"}.get(name, "space")
        named.append((name, kind))
    return named


class NgffView:
    """One resolution level of an OME-Zarr image in the layout of the models: time (one point) and channel or z
    axes of size 1 dropped, several channels moved last; read lazily (indexing reads only the region).
    ``scale``, ``translation``: the level's physical pixel size and offset along the kept spatial axes (from its
    coordinate transformations; None where it has none)."""

    def __init__(self, array, axes: list[tuple[str, str]], path: Path, scale: tuple[float, ...] | None = None,
                 translation: tuple[float, ...] | None = None):
        if len(axes) != array.ndim:
            raise InputError(f"{path}: OME-Zarr metadata names {len(axes)} axes for an array with {array.ndim}")
        self.array, self.path = array, path
        self._fixed: dict[int, int] = {}  # source axis -> the index taken there
        self._channel: int | None = None
        space = [i for i, (_, kind) in enumerate(axes) if kind not in ("time", "channel")]
        for i, (name, kind) in enumerate(axes):
            size = int(array.shape[i])
            if kind == "time" or (kind != "channel" and i not in space):
                if size != 1:
                    raise InputError(f"{path}: {size} points along the '{name}' axis; napari-diffseg segments one "
                                     "image: save one time point (or one position) as its own OME-Zarr")
                self._fixed[i] = 0
            elif kind == "channel":
                if size == 1:
                    self._fixed[i] = 0
                else:
                    self._channel = i
        kept_space = [i for i in space if not (array.shape[i] == 1 and len(space) > 2)]
        self._fixed.update({i: 0 for i in space if i not in kept_space})
        self._space = kept_space
        self.shape = tuple(int(array.shape[i]) for i in kept_space) + (
            (int(array.shape[self._channel]),) if self._channel is not None else ())
        self.ndim, self.dtype = len(self.shape), array.dtype
        self.scale = None if scale is None else tuple(float(scale[i]) for i in kept_space)
        self.translation = None if translation is None else tuple(float(translation[i]) for i in kept_space)

    def __getitem__(self, index) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        index = tuple(index) + (slice(None),) * (self.ndim - len(index))
        spatial, channel = index[:len(self._space)], index[len(self._space):]
        source: list = []
        taken = iter(spatial)
        for i in range(self.array.ndim):
            source.append(self._fixed[i] if i in self._fixed else slice(None) if i == self._channel else next(taken))
        part = np.asarray(self.array[tuple(source)])
        if self._channel is not None:
            position = sum(1 for i in range(self._channel) if not isinstance(source[i], int))
            part = np.moveaxis(part, position, -1)[..., channel[0] if channel else slice(None)]
        return part

    def __array__(self, dtype=None, copy=None):
        data = self[tuple(slice(None) for _ in self._space)]
        return data if dtype is None else data.astype(dtype)


def open_ngff(group, path: Path, level: int = 0):
    """Resolution ``level`` of the OME-Zarr image ``group`` (an :class:`NgffView`); None when the group has no
    NGFF multiscales metadata."""
    entry = _ngff_multiscale(group, path)
    if entry is None:
        return None
    datasets = entry["datasets"]
    if not 0 <= level < len(datasets):
        shapes = ", ".join(f"{i}: {tuple(entry['_group'][d['path']].shape)}" for i, d in enumerate(datasets))
        raise InputError(f"{path}: no resolution level {level}; this OME-Zarr image has levels {shapes}")
    array = entry["_group"][str(datasets[level]["path"])]
    transforms = {t.get("type"): t.get(t.get("type")) for t in datasets[level].get("coordinateTransformations", [])
                  if isinstance(t, dict)}
    scale, translation = (v if isinstance(v, list) and len(v) == array.ndim else None
                          for v in (transforms.get("scale"), transforms.get("translation")))
    return NgffView(array, _axis_names(entry, array.ndim), path, scale, translation)


def open_lazy(path: Path, level: int = 0):
    """A lazily read array of an image on disk: a zarr array (a ``.zarr`` folder), resolution ``level`` of an
    OME-Zarr image (0: full resolution), a memory-mapped TIFF (uncompressed, contiguous) or tifffile's zarr view of
    any other TIFF (read strip by strip or tile by tile). A PNG or JPEG has no random access: it is decoded once (its
    pixels, as stored, in memory) and then cut into blocks like the others, so that what a prediction holds beyond
    the pixels is bounded by a block, as for a TIFF. ``level`` > 0 needs an OME-Zarr image."""
    import tifffile
    import zarr

    path = Path(path)
    if level and not path.is_dir():
        raise InputError(f"{path}: a resolution level (--level {level}) can be chosen only for an OME-Zarr image")
    if path.suffix.lower() in DECODED_SUFFIXES:
        return read_image(path)
    if path.is_dir():
        try:
            found = zarr.open(str(path), mode="r")
        except Exception as error:  # zarr raises several types for a folder that is not a zarr store
            raise InputError(f"{path}: not a zarr array ({type(error).__name__}: {error})") from None
        if isinstance(found, zarr.Group):
            view = open_ngff(found, path, level)
            if view is not None:
                return view
            if level:
                raise InputError(f"{path}: not an OME-Zarr image (no multiscales metadata), so it has no "
                                 f"resolution level {level}")
            arrays = sorted(found.array_keys())
            if not arrays:
                raise InputError(f"{path}: a zarr group without arrays")
            found = found[arrays[0]]
        elif level:
            raise InputError(f"{path}: a plain zarr array has one resolution level, not {level}")
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
    """An object with only a shape, for the layout rules of core.data.io (no pixel is read)."""

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
    dims = model.image_dims
    ranges = tuple(subsample_ranges(image, dims))
    release_mapped_pages(image)
    halo = list(halo or (HALO_2D if dims == 2 else HALO_3D))
    if model.slice_axis is not None:
        halo[model.slice_axis] = 0  # slices are predicted apart: no context across them
    return BlockPlan(tuple(int(n) for n in image.shape[:dims]), tuple(block or (BLOCK_2D if dims == 2 else BLOCK_3D)),
                     tuple(halo), ranges)


def create_output(out_path: Path, plan: BlockPlan):
    """An empty uint8 zarr array for the mask, chunked like the blocks (an earlier output there is replaced)."""
    import zarr

    out_path = Path(out_path)
    if out_path.exists():
        shutil.rmtree(out_path) if out_path.is_dir() else out_path.unlink()
    return zarr.open_array(str(out_path), mode="w", shape=plan.shape, dtype=np.uint8,
                           chunks=tuple(min(b, n) for b, n in zip(plan.block, plan.shape)),
                           dimension_names=("z", "y", "x")[-len(plan.shape):])


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
                 run_blocks: Callable[[Path], Generator[BlockProgress, None, Path]] | None = None, level: int = 0,
                 ) -> Generator[BlockProgress, None, Path]:
    """A large image file (zarr array, or ``level`` of an OME-Zarr image) block by block into the OME-Zarr labels
    ``target`` with suffix .zarr (level 0 at :func:`output_zarr`), then copied into the tiled TIFF ``target``;
    yields block progress, returns ``target``. ``run_blocks(zarr_path)``: another runner of the blocks (a dask
    cluster's, core/prediction/large_cluster.py); default: this process."""
    source, target = Path(source), Path(target)
    zarr_path = output_zarr(target)
    image = open_lazy(source, level)
    prepare_labels_group(output_folder(target))
    if run_blocks is None:
        yield from predict_large(model, image, zarr_path, name=source.name, tile=tile)
    else:
        yield from run_blocks(zarr_path)
    write_ngff_labels(output_folder(target), model.config.num_classes, getattr(image, "scale", None),
                      getattr(image, "translation", None))
    return zarr_to_tiff(zarr_path, target, tile=TIFF_TILE)


def prepare_labels_group(folder: Path) -> None:
    """An empty OME-Zarr labels group at ``folder`` with the (empty) group of the label image LABELS_NAME; an
    earlier output there is replaced."""
    import zarr

    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder) if folder.is_dir() else folder.unlink()
    zarr.open_group(str(folder), mode="w").create_group(LABELS_NAME)


def _halve(level, group, name: str):
    """The next pyramid level of ``level`` (every 2nd pixel along y and x: nearest neighbour, class ids stay class
    ids), written chunk by chunk into ``group[name]``; reads at most 4 chunks' worth of ``level`` at a time."""
    shape = tuple(level.shape[:-2]) + tuple(-(-int(n) // 2) for n in level.shape[-2:])
    chunks = tuple(min(int(c), n) for c, n in zip(level.chunks, shape))
    out = group.create_array(name, shape=shape, chunks=chunks, dtype=np.uint8, overwrite=True,
                             dimension_names=("z", "y", "x")[-len(shape):])
    for corner in block_corners(shape, chunks):
        region = tuple(slice(c, min(c + b, n)) for c, b, n in zip(corner, chunks, shape))
        read = region[:-2] + tuple(slice(2 * r.start, 2 * r.stop, 2) for r in region[-2:])
        out[region] = np.asarray(level[read])
    return out


def write_ngff_labels(folder: Path, num_classes: int, scale: tuple[float, ...] | None = None,
                      translation: tuple[float, ...] | None = None) -> list[str]:
    """Complete the OME-Zarr labels at ``folder`` whose level 0 (``LABELS_NAME/0``) is written: the halved levels
    down to PYRAMID_TOP pixels, then the NGFF multiscales and image-label metadata (colours and class names of the
    ``num_classes`` class ids) through ome-zarr-py. ``scale``, ``translation``: the physical pixel size and offset
    of level 0 (those of the input's level, so the labels overlay it; default 1 and none). A halved level takes
    every 2nd pixel, starting at the first, so its offset is level 0's. Returns the level paths."""
    import zarr

    root = zarr.open_group(str(folder), mode="r+")
    group = root[LABELS_NAME]
    level, paths = group["0"], ["0"]
    while max(level.shape[-2:]) > PYRAMID_TOP and len(paths) < PYRAMID_LEVELS:
        level = _halve(level, group, str(len(paths)))
        paths.append(str(len(paths)))
    try:
        with warnings.catch_warnings():  # ome-zarr-py 0.18 warns about its own deprecated default Scaler on import
            warnings.simplefilter("ignore", DeprecationWarning)
            from ome_zarr.format import CurrentFormat
            from ome_zarr.writer import add_metadata, write_label_metadata, write_multiscales_metadata
    except ImportError:
        log.warning("%s: written without OME-Zarr metadata (NGFF readers will not recognise it): install "
                    "'napari-diffseg[ome-zarr]' for OME-Zarr labels", Path(folder).name)
        return paths
    dims = level.ndim
    base = [float(s) for s in scale] if scale is not None and len(scale) == dims else [1.0] * dims
    offset = ([{"type": "translation", "translation": [float(t) for t in translation]}]
              if translation is not None and len(translation) == dims and any(translation) else [])
    datasets = [{"path": path, "coordinateTransformations": [{"type": "scale", "scale": [
        b * (2 ** k if axis >= dims - 2 else 1) for axis, b in enumerate(base)]}] + offset}
        for k, path in enumerate(paths)]
    write_multiscales_metadata(group, datasets, axes=["z", "y", "x"][-dims:], name=LABELS_NAME)
    colours = [{"label-value": 0, "rgba": [0, 0, 0, 0]}] + [
        {"label-value": k, "rgba": list(LABEL_COLOURS[(k - 1) % len(LABEL_COLOURS)])} for k in range(1, num_classes)]
    names = ["background"] + (["foreground"] if num_classes == 2 else [f"class {k}" for k in range(1, num_classes)])
    properties = [{"label-value": k, "class": name} for k, name in enumerate(names)]
    write_label_metadata(root, LABELS_NAME, colors=colours, properties=properties)
    # NGFF 0.5 wants the version on every group; ome-zarr-py writes it on the label image, not on its labels group
    # (an image's root carries it there): without it ome-zarr-models refuses the group
    add_metadata(root, {"version": CurrentFormat().version})
    return paths


def release_mapped_pages(image) -> None:
    """Unmap the file pages a memory-mapped input has touched so far (they stay in the page cache): without this,
    every page read stays in the process's resident memory and a large TIFF ends up counted whole."""
    mapping = getattr(image, "_mmap", None)
    if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


def is_complete(path: Path) -> bool:
    """Whether a zarr output of :func:`predict_large` was written to its end (``path``: the array, or the OME-Zarr
    labels folder of :func:`predict_file` that holds it)."""
    import zarr

    for candidate in (Path(path), Path(path) / LABELS_NAME / "0"):
        try:
            return bool(zarr.open_array(str(candidate), mode="r").attrs.get(COMPLETE_ATTR, {}).get("complete"))
        except Exception:  # missing or not a zarr array
            continue
    return False
