"""Image and mask I/O: folder listing, reading, layout checks, normalisation, image/label pairing, atomic TIFF writes.

Everything that touches user pixel files on disk goes through this module, so that every bad input (missing or
corrupt file, wrong dimensions, NaNs, label values outside the classes, mismatched shapes) ends in one
:class:`~napari_diffseg.core.errors.InputError` with a one-line message that names the file and says what to do.

Layout rule: a 2D array is a grey image (Y, X); a 3D array whose last axis has 3 or 4 entries is a 2D RGB(A)
image (Y, X, 3|4) (alpha is dropped); (Y, X, 1) is grey; any other 3D array is a grey volume (Z, Y, X).
Every spatial axis must be at least ``MIN_AXIS`` pixels long.
"""

from __future__ import annotations

import logging
import math
import os
import unicodedata
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import tifffile

from napari_diffseg.core.errors import InputError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
LAST = "last.pt"  # a model folder's checkpoint to resume or warm-start from
BEST = "best.pt"  # ... and the model to predict with
ZARR_SUFFIX = ".zarr"  # a zarr array (a folder); also the block-by-block mask of a large image, beside its TIFF
UNCERTAINTY_SUFFIX = "_uncertainty"  # <stem>_uncertainty.tif: the uncertainty map written beside a mask
TIFF_SUFFIXES = (".tif", ".tiff")
SOFTWARE_TAG = "napari-diffseg"  # the TIFF Software tag of what we write: core.data.safety tells our files by it
MIN_AXIS = 8
PERCENTILES = (1.0, 99.8)

_LAYOUT_HELP = (
    "expected (Y, X) grey, (Y, X, 3|4) RGB(A) or (Z, Y, X) volume with every spatial axis >= "
    f"{MIN_AXIS} px"
)


# ----------------------------------------------------------------------------------------------- helpers
def one_line(text: object) -> str:
    """Collapse an exception text (which may span lines) into one short line."""
    line = " ".join(str(text).split())
    return (line if len(line) <= 200 else line[:197] + "...") or "(no message)"


def format_duration(seconds: float | None, clock: bool = False) -> str:
    """A number of seconds for people: '1m05s' / '2h03m' / '7s' (log lines), or with ``clock`` 'm:ss' / 'h:mm:ss'
    (progress labels); '-' when unknown."""
    if seconds is None or seconds != seconds or (clock and seconds < 0):
        return "-"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if clock:
        return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _label(name: str | os.PathLike | None) -> str:
    return f"{name}: " if name is not None else ""


def describe_kind(spatial_dims: int, channels: int) -> str:
    """'2D grey', '2D RGB', '3D grey': how messages name a kind of image."""
    return f"{spatial_dims}D {'RGB' if channels == 3 else 'grey'}"


def name_stem(path: Path | str) -> str:
    """File name without its suffix, also without '.ome' for OME-TIFF and OME-Zarr ('a.ome.tif', 'a.ome.zarr': 'a')."""
    stem = Path(path).stem
    if Path(path).suffix.lower() in (*TIFF_SUFFIXES, ZARR_SUFFIX) and stem.lower().endswith(".ome"):
        stem = stem[: -len(".ome")]
    return stem


def name_key(name: str) -> str:
    """A name as a file system that ignores case (Windows, macOS) compares it: NFC (macOS stores one normal form),
    case-folded; two names with one key are one file there."""
    return unicodedata.normalize("NFC", str(name)).casefold()


def is_image_file(path: Path) -> bool:
    """A visible file with an image suffix (what :func:`list_images` lists)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


# ----------------------------------------------------------------------------------------------- listing
def list_images(folder: Path) -> list[Path]:
    """Image files (IMAGE_SUFFIXES, any case) directly in ``folder``, sorted by name; hidden files are skipped."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"folder not found: {folder}; check the path")
    if not folder.is_dir():
        raise InputError(f"{folder} is a file, not a folder; give the folder that contains the images")
    entries = sorted(folder.iterdir())
    broken = [p.name for p in entries if p.is_symlink() and not p.exists() and p.suffix.lower() in IMAGE_SUFFIXES
              and not p.name.startswith(".")]
    if broken:  # skipping them would drop images (or labels) from the run without a word
        raise InputError(f"{len(broken)} link(s) in {folder} point to no file: {', '.join(broken[:5])}"
                         f"{' ...' if len(broken) > 5 else ''}; fix or remove them")
    files = [p for p in entries if is_image_file(p)]
    if not files:
        raise InputError(
            f"no images in {folder}: put .tif, .tiff, .png, .jpg or .jpeg files in it (hidden files are skipped)"
        )
    return files


# ----------------------------------------------------------------------------------------------- reading
def _read_raw(path: Path, *, for_mask: bool = False) -> np.ndarray:
    """Read the pixels of one file, raising InputError for anything that is not a readable image."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}; check the path")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image file")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(
            f"unsupported file type '{path.suffix}' for {path}; save it as TIFF (.tif), PNG or JPEG"
        )
    if path.stat().st_size == 0:
        raise InputError(f"{path} is an empty file (0 bytes); re-export the image")
    try:
        if suffix in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                if len(tif.series) > 1:  # pages of different sizes (or kinds): not one image
                    shapes = ", ".join(str(tuple(series.shape)) for series in tif.series[:4])
                    raise InputError(f"{path} holds {len(tif.series)} images of different shapes ({shapes}"
                                     f"{', ...' if len(tif.series) > 4 else ''}); save each as its own file")
                series = tif.series[0]
                array = series.asarray()
                axes = series.axes
            if "S" in axes and axes[-1] != "S" and array.shape[axes.index("S")] in (3, 4):
                array = np.moveaxis(array, axes.index("S"), -1)  # planar RGB -> channels last
        else:
            import imageio.v3 as iio

            mode = None
            if for_mask and iio.immeta(path, plugin="pillow").get("mode") == "P":
                mode = "P"  # palette label image: keep the indices, not the colours
            array = iio.imread(path, plugin="pillow", mode=mode)
            if array.ndim == 3 and array.shape[-1] == 2:  # grey + alpha
                array = array[..., 0]
    except InputError:
        raise
    except PermissionError as exc:
        raise InputError(f"cannot read {path}: permission denied; check the file's permissions") from exc
    except Exception as exc:  # tifffile / pillow raise many different types for corrupt files
        raise InputError(
            f"cannot read {path}: not a valid {suffix.lstrip('.').upper()} image ({one_line(exc)}); "
            "re-save it as TIFF"
        ) from exc
    array = np.asarray(array)
    if array.size == 0:
        raise InputError(f"{path} contains no pixels; re-export the image")
    if array.dtype == object or np.iscomplexobj(array) or not (
        np.issubdtype(array.dtype, np.number) or array.dtype == bool
    ):
        raise InputError(f"{path} has unsupported pixel type {array.dtype}; save it as uint8, uint16 or float32")
    return array


def check_finite(array: np.ndarray, name: str | os.PathLike | None) -> None:
    """InputError for NaN or infinite pixels, and for values beyond float32 (computations run in float32: they
    would become infinite there)."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    if not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputError(
            f"{_label(name)}image contains {bad} NaN or infinite pixel(s); replace them (e.g. by 0) and try again"
        )
    largest = float(np.abs(array).max()) if array.dtype.itemsize > 4 and array.size else 0.0
    if largest > float(np.finfo(np.float32).max):
        raise InputError(
            f"{_label(name)}image has values up to {largest:.3g}, beyond the 32-bit floats it is computed in; "
            "rescale it (e.g. to 0..1 or 0..65535) and try again"
        )


def read_image(path: Path) -> np.ndarray:
    """Pixels of one image file as stored (channels last for RGB), checked for layout and finite values."""
    path = Path(path)
    array = _read_raw(path)
    image_layout(array, name=path)
    check_finite(array, path)
    return array


def read_spacing(path: Path) -> tuple[float, ...] | None:
    """The voxel size per spatial axis ((Z,) Y, X) a TIFF's metadata gives (OME PhysicalSize, or ImageJ's
    resolution tags and ``spacing``), or None when it gives none (other formats, plain TIFFs): callers then assume
    isotropic voxels. Units are not converted (one file's axes share one unit in practice)."""
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            depth = "Z" in axes and series.shape[axes.index("Z")] > 1
            if tif.is_ome and tif.ome_metadata:
                import xml.etree.ElementTree as ElementTree

                pixels = next((e for e in ElementTree.fromstring(tif.ome_metadata).iter() if e.tag.endswith("Pixels")),
                              None)
                if pixels is not None and pixels.get("PhysicalSizeX") and pixels.get("PhysicalSizeY"):
                    yx = (float(pixels.get("PhysicalSizeY")), float(pixels.get("PhysicalSizeX")))
                    if not depth:
                        return yx
                    if pixels.get("PhysicalSizeZ"):
                        return (float(pixels.get("PhysicalSizeZ")), *yx)
            page = tif.pages[0]
            tags = page.tags
            if "XResolution" not in tags or "YResolution" not in tags:
                return None

            def size(tag: str) -> float:
                numerator, denominator = tags[tag].value
                return float(denominator) / float(numerator)  # pixels per unit -> unit per pixel

            yx = (size("YResolution"), size("XResolution"))
            if not depth:
                return yx
            z = (tif.imagej_metadata or {}).get("spacing")
            return (float(z), *yx) if z else None
    except Exception:  # unreadable or odd metadata: no spacing, never an error (the pixels are read elsewhere)
        return None


def checked_spacing(spacing, spatial_dims: int, name: str | os.PathLike | None = None) -> tuple[float, ...] | None:
    """``spacing`` as a tuple of ``spatial_dims`` positive finite floats; None when it is None or all ones (napari's
    default scale says nothing). A 2D image given a (1, Y, X) scale keeps its last axes. InputError otherwise."""
    if spacing is None:
        return None
    try:
        values = tuple(float(v) for v in np.ravel(spacing))
    except (TypeError, ValueError):
        raise InputError(f"{name}: the voxel size {spacing!r} is not a list of numbers") from None
    if len(values) > spatial_dims and all(v == 1.0 for v in values[:-spatial_dims]):
        values = values[-spatial_dims:]
    if len(values) != spatial_dims:
        raise InputError(f"{name}: the voxel size {values} needs one value per spatial axis ({spatial_dims})")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"{name}: the voxel size {values} must be positive")
    return None if all(v == 1.0 for v in values) else values


# ----------------------------------------------------------------------------------------------- layout
def _check_spatial(shape: tuple[int, ...], name: str | os.PathLike | None, what: str = "image") -> None:
    if any(s < MIN_AXIS for s in shape):
        raise InputError(
            f"{_label(name)}{what} shape {tuple(shape)} has an axis shorter than {MIN_AXIS} px; {_LAYOUT_HELP}"
        )


def image_layout(array: np.ndarray, *, name: str | os.PathLike | None = None) -> tuple[int, int]:
    """(spatial_dims, channels) of a channels-last image; InputError for shapes that are not an image.

    (Y, X) -> (2, 1); (Y, X, 1) -> (2, 1); (Y, X, 3|4) -> (2, 3) (alpha dropped); other (Z, Y, X) -> (3, 1).
    ``name`` (optional, keyword-only) is put in front of error messages.
    """
    shape = tuple(np.shape(array))
    if len(shape) == 2:
        _check_spatial(shape, name)
        return 2, 1
    if len(shape) == 3:
        if shape[-1] in (3, 4):
            _check_spatial(shape[:2], name)
            return 2, 3
        if shape[-1] == 1:
            _check_spatial(shape[:2], name)
            return 2, 1
        _check_spatial(shape, name)
        return 3, 1
    raise InputError(f"{_label(name)}image has {len(shape)} dimension(s) {shape}; {_LAYOUT_HELP}")


def spatial_shape(array: np.ndarray, *, name: str | os.PathLike | None = None) -> tuple[int, ...]:
    """Spatial shape of a channels-last image ((Y, X) or (Z, Y, X)), following :func:`image_layout`."""
    spatial_dims, _ = image_layout(array, name=name)
    return tuple(np.shape(array)[:spatial_dims])


def to_channels_first(image: np.ndarray, *, name: str | os.PathLike | None = None) -> np.ndarray:
    """float32 (C, *spatial) in [0, 1]: per channel, percentiles (1, 99.8) map to 0 and 1, then clipped.

    If the percentiles coincide (e.g. a sparse image) the channel's min / max is used instead; a constant channel
    becomes all zeros. NaN / inf pixels raise InputError.
    """
    image = np.asarray(image)
    check_finite(image, name)
    return normalise_channels(image, intensity_ranges(image, name=name), name=name)


def _planes(image: np.ndarray, name: str | os.PathLike | None) -> list[np.ndarray]:
    """The channel planes of a channels-last image (alpha dropped, (Y, X, 1) squeezed)."""
    spatial_dims, channels = image_layout(image, name=name)
    if spatial_dims == 2 and image.ndim == 3:
        return [image[..., c] for c in range(channels)]
    return [image]


def intensity_ranges(image: np.ndarray, *, name: str | os.PathLike | None = None) -> list[tuple[float, float]]:
    """Per channel, the intensities that map to 0 and 1: percentiles (1, 99.8), or min / max where those coincide.
    For a large image, pass a regular subsample (the ranges barely move; see core/prediction/large.py)."""
    ranges = []
    for plane in _planes(np.asarray(image), name):
        plane = plane.astype(np.float32, copy=False)
        lo, hi = (float(v) for v in np.percentile(plane, PERCENTILES))
        if hi <= lo:
            lo, hi = float(plane.min()), float(plane.max())
        ranges.append((lo, hi))
    return ranges


def normalise_channels(image: np.ndarray, ranges: list[tuple[float, float]], *,
                       name: str | os.PathLike | None = None) -> np.ndarray:
    """float32 (C, *spatial) in [0, 1] of a channels-last image, each channel mapped by its (lo, hi) range and
    clipped; a channel with hi <= lo becomes all zeros."""
    planes = _planes(np.asarray(image), name)
    out = np.empty((len(planes), *planes[0].shape), dtype=np.float32)
    for c, (plane, (lo, hi)) in enumerate(zip(planes, ranges)):
        if hi <= lo:
            out[c] = 0.0
            continue
        np.subtract(plane.astype(np.float32, copy=False), lo, out=out[c])
        out[c] *= 1.0 / (hi - lo)
        np.clip(out[c], 0.0, 1.0, out=out[c])
    return out


# ----------------------------------------------------------------------------------------------- masks
def normalise_mask(
    mask: np.ndarray, num_classes: int = 2, *, name: str | os.PathLike | None = None
) -> np.ndarray:
    """int64 label image (*spatial) from an array.

    num_classes == 2: any value > 0 is foreground (1), so instance masks work. num_classes > 2: values must lie in
    [0, num_classes). Negative values, NaN / inf and non-integer floats raise InputError. A (Y, X, 1) mask and a
    (Y, X, 3|4) mask whose colour channels are equal are read as (Y, X).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    elif mask.ndim == 3 and mask.shape[-1] in (3, 4) and min(mask.shape[:2]) >= MIN_AXIS:
        rgb = mask[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise InputError(
                f"{_label(name)}mask is a colour image {mask.shape}; save it as a single-channel label image "
                "(0 = background, 1.. = classes)"
            )
        mask = rgb[..., 0]
    if mask.ndim not in (2, 3):
        raise InputError(
            f"{_label(name)}mask has {mask.ndim} dimension(s) {mask.shape}; expected (Y, X) or (Z, Y, X)"
        )
    _check_spatial(mask.shape, name, what="mask")
    if mask.dtype == bool:
        return mask.astype(np.int64)
    if not np.issubdtype(mask.dtype, np.number) or np.iscomplexobj(mask):
        raise InputError(f"{_label(name)}mask has unsupported pixel type {mask.dtype}; save it as uint8 or uint16")
    if np.issubdtype(mask.dtype, np.floating):
        if not np.isfinite(mask).all():
            raise InputError(f"{_label(name)}mask contains NaN or infinite values; labels must be whole numbers >= 0")
        if not np.array_equal(mask, np.round(mask)):
            raise InputError(
                f"{_label(name)}mask has non-integer values (e.g. probabilities); save whole-number labels "
                "(0 = background, 1.. = classes)"
            )
    low = mask.min()
    if low < 0:
        raise InputError(
            f"{_label(name)}mask has negative values (min {low:g}); labels must be 0 (background) or positive"
        )
    if num_classes == 2:
        return (mask > 0).astype(np.int64)
    high = mask.max()
    if high >= num_classes:
        raise InputError(
            f"{_label(name)}mask has label value {high:g} outside the {num_classes} classes "
            f"(allowed 0..{num_classes - 1}); fix the mask or raise the number of classes"
        )
    return mask.astype(np.int64)


def read_mask(path: Path, num_classes: int = 2) -> np.ndarray:
    """int64 label image (*spatial) from a file, with the rules of :func:`normalise_mask`."""
    path = Path(path)
    return normalise_mask(_read_raw(path, for_mask=True), num_classes, name=path)


def check_mask_matches(image: np.ndarray, mask: np.ndarray, name: str) -> None:
    """InputError "shape mismatch" when the spatial shape of ``image`` (as read, channels last) is not ``mask``'s."""
    image_spatial = spatial_shape(image, name=name)
    mask_shape = tuple(np.shape(mask))
    if image_spatial != mask_shape:
        raise InputError(
            f"shape mismatch for {name}: image is {image_spatial} but its mask is {mask_shape}; "
            "the mask must have the same size as its image"
        )


# ----------------------------------------------------------------------------------------------- writing
def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[object], None]) -> None:
    """Write via ``write(file_handle)`` into a hidden temp file next to ``path``, fsync, then os.replace.

    On any failure the temp file is removed and ``path`` is left as it was. OSErrors (full disk, permissions)
    become InputError with a one-line message.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create folder {path.parent}: {one_line(exc.strerror or exc)}") from exc
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            logger.warning("could not remove temporary file %s", tmp)
        if isinstance(exc, OSError):
            raise InputError(
                f"cannot write {path}: {one_line(exc.strerror or exc)}; "
                "free disk space or choose a writable folder"
            ) from exc
        raise
    _fsync_dir(path.parent)


def write_tiff_atomic(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as a zlib-compressed TIFF, atomically (temp file in the same folder + os.replace).

    (Y, X, 3|4) arrays are stored as RGB(A), everything else as grey pages; reading back gives the same array.
    """
    array = np.ascontiguousarray(array)
    rgb = array.ndim == 3 and array.shape[-1] in (3, 4)
    kwargs: dict = {"photometric": "rgb" if rgb else "minisblack", "compression": "zlib",
                    "software": SOFTWARE_TAG}
    if rgb and array.shape[-1] == 4:
        kwargs["extrasamples"] = ("unassalpha",)

    def write(fh: object) -> None:
        tifffile.imwrite(fh, array, **kwargs)

    atomic_write(Path(path), write)


def refuse_overwriting_inputs(inputs: list[Path], targets: list[Path], advice: str) -> None:
    """InputError before anything is written when a mask target, its uncertainty map or its zarr copy is one of the
    input images (an output folder that is also the input folder); ``advice`` says what to change."""
    sources = {Path(path).resolve() for path in inputs}
    for target in map(Path, targets):
        for candidate in (target, target.with_name(f"{target.stem}{UNCERTAINTY_SUFFIX}.tif"),
                          target.with_suffix(ZARR_SUFFIX)):
            if candidate.resolve() in sources:
                raise InputError(f"writing {candidate} would overwrite an input image; {advice}")


def write_mask(path: Path, mask: np.ndarray) -> None:
    """Write a label image as a uint8 zlib TIFF, atomically; InputError for values outside 0..255 or non-integers."""
    path = Path(path)
    mask = np.asarray(mask)
    if mask.dtype != bool:
        if not np.issubdtype(mask.dtype, np.number) or np.iscomplexobj(mask):
            raise InputError(f"cannot save mask {path}: unsupported pixel type {mask.dtype}")
        if mask.size and np.issubdtype(mask.dtype, np.floating):
            if not np.isfinite(mask).all() or not np.array_equal(mask, np.round(mask)):
                raise InputError(f"cannot save mask {path}: it has non-integer, NaN or infinite values")
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise InputError(
                f"cannot save mask {path}: values {mask.min():g}..{mask.max():g} do not fit uint8 (0..255); "
                "use at most 255 labels"
            )
    write_tiff_atomic(path, mask.astype(np.uint8))


# ----------------------------------------------------------------------------------------------- pairing
def _stem_index(paths: Iterable[Path], folder: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    folded: dict[str, Path] = {}  # a case-insensitive file system (Windows, macOS) sees one name for 'A' and 'a'
    for p in paths:
        stem = name_stem(p)
        other = index.get(stem) or folded.get(name_key(stem))
        if other is not None:
            case = "" if name_stem(other) == stem else " (one name on Windows and macOS)"
            raise InputError(
                f"two files in {folder} have the name stem '{stem}' ({other.name}, {p.name}){case}; "
                "rename or remove one"
            )
        index[stem] = folded[name_key(stem)] = p
    return index


def pair_images_with_labels(
    images_dir: Path, labels_dir: Path | None
) -> tuple[list[Path], dict[str, Path]]:
    """All images of ``images_dir`` and the label files of ``labels_dir`` matched to them by name stem.

    Returns (image_paths, {image_stem: label_path}). Label files without an image are logged and ignored;
    InputError if none of them matches an image, or when the labels folder is the images folder.
    """
    images_dir = Path(images_dir)
    if labels_dir is not None and Path(labels_dir).resolve() == images_dir.resolve():
        raise InputError(f"the labels folder {labels_dir} is the images folder; keep the label images in their "
                         "own folder")
    images = list_images(images_dir)
    image_stems = _stem_index(images, images_dir)
    if labels_dir is None:
        return images, {}
    labels_dir = Path(labels_dir)
    labels = _stem_index(list_images(labels_dir), labels_dir)
    matched = {stem: path for stem, path in labels.items() if stem in image_stems}
    unmatched = sorted(p.name for stem, p in labels.items() if stem not in image_stems)
    if not matched:
        raise InputError(
            f"no labelled image: none of the files in {labels_dir} has the name stem of an image in {images_dir}; "
            "name each label file like its image (e.g. img_001.tif for img_001.png)"
        )
    if unmatched:
        logger.warning(
            "%d label file(s) in %s have no image in %s and are ignored: %s",
            len(unmatched), labels_dir, images_dir, ", ".join(unmatched[:10]) + (" ..." if len(unmatched) > 10 else ""),
        )
    unread = sorted(p.name for p in labels_dir.iterdir() if p.is_file() and not p.name.startswith(".")
                    and p.suffix.lower() not in IMAGE_SUFFIXES and name_stem(p) in image_stems
                    and name_stem(p) not in matched)
    if unread:  # a label saved as .bmp or .npy: without a word its image would train as unlabelled
        logger.warning("%d file(s) in %s are named like an image but are not a type read as labels (.tif, .tiff, "
                       ".png, .jpg, .jpeg), so their images train as unlabelled: %s", len(unread), labels_dir,
                       ", ".join(unread[:10]) + (" ..." if len(unread) > 10 else ""))
    return images, {stem: matched[stem] for stem in image_stems if stem in matched}


def zarr_to_tiff(source: Path, target: Path, tile: int = 512, dtype: type | np.dtype = np.uint8) -> Path:
    """Copy a 2D or 3D zarr mask (uint8 classes; ``dtype`` uint16/uint32 for instance ids) into a tiled, compressed
    TIFF (BigTIFF where needed), one row of tiles in memory at a time; written under a temporary name and renamed
    when whole."""
    import zarr

    dtype = np.dtype(dtype)
    array = zarr.open_array(str(source), mode="r")
    shape = tuple(array.shape)
    planes = [None] if len(shape) == 2 else list(range(shape[0]))
    height, width = shape[-2:]

    def tiles() -> Iterable[np.ndarray]:
        for z in planes:
            for y in range(0, height, tile):
                rows = np.asarray(array[y:y + tile] if z is None else array[z, y:y + tile])
                for x in range(0, width, tile):
                    piece = np.zeros((tile, tile), dtype)
                    part = rows[:, x:x + tile]
                    piece[:part.shape[0], :part.shape[1]] = part
                    yield piece

    target = Path(target)
    partial = target.with_name(f".{target.name}.partial")
    tifffile.imwrite(partial, tiles(), shape=shape, dtype=dtype, tile=(tile, tile), compression="zlib",
                     photometric="minisblack", software=SOFTWARE_TAG,  # core.data.safety tells our outputs by it
                     bigtiff=np.prod(shape) * dtype.itemsize > 2**31)
    os.replace(partial, target)
    return target
