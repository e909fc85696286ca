"""The per-object table: id, area (2D) or volume (3D) in pixels, centroid, mean intensity per channel, bounding
box; written as CSV. ``measure_files`` (``diffseg measure``) and ``measure_project`` (the Predict panel's project
table) give it image by image."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError


def object_table(instances: np.ndarray, image: np.ndarray | None = None, name: str | None = None) -> list[dict]:
    """One row per object of ``instances`` (ids > 0). ``image``: the raw image (spatial shape, or channels last) for
    the mean intensity; rows are ordered by id. ``name`` adds an ``image`` column first."""
    from skimage import measure

    instances = np.asarray(instances)
    ndim = instances.ndim
    intensity = None
    if image is not None:
        image = np.asarray(image)
        if image.shape[:ndim] != instances.shape or image.ndim not in (ndim, ndim + 1):
            raise InputError(f"{name + ': ' if name else ''}image {image.shape} and mask {instances.shape} differ in "
                             "shape")
        intensity = image.astype(np.float64, copy=False)
    properties = ["label", "area", "centroid", "bbox"] + (["intensity_mean"] if intensity is not None else [])
    table = measure.regionprops_table(instances.astype(np.int64, copy=False), intensity_image=intensity,
                                      properties=properties)
    axes = "zyx"[-ndim:] if ndim <= 3 else [f"axis{i}" for i in range(ndim)]
    size_name = "volume" if ndim == 3 else "area"
    channels = 1 if intensity is None or intensity.ndim == ndim else intensity.shape[-1]
    rows = []
    for row in range(len(table["label"])):
        entry: dict = {"image": name} if name is not None else {}
        entry["id"] = int(table["label"][row])
        entry[size_name] = int(table["area"][row])
        for axis, letter in enumerate(axes):
            entry[f"centroid_{letter}"] = round(float(table[f"centroid-{axis}"][row]), 3)
        if intensity is not None:
            if channels == 1 and intensity.ndim == ndim:
                entry["mean_intensity"] = float(table["intensity_mean"][row])
            else:
                for channel in range(channels):
                    entry[f"mean_intensity_{channel}"] = float(table[f"intensity_mean-{channel}"][row])
        for axis, letter in enumerate(axes):
            entry[f"bbox_{letter}_min"] = int(table[f"bbox-{axis}"][row])
        for axis, letter in enumerate(axes):
            entry[f"bbox_{letter}_max"] = int(table[f"bbox-{axis + ndim}"][row])  # exclusive, like a slice
        rows.append(entry)
    return rows


def write_table(rows: list[dict], path: Path) -> None:
    """Write rows (dicts, the union of their keys in first-seen order as columns) as CSV, atomically."""
    from ..data.io import atomic_write

    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]

    def write(handle) -> None:
        import io as _io

        text = _io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns or ["image", "id"])
        writer.writeheader()
        writer.writerows(rows)
        handle.write(text.getvalue().encode())

    atomic_write(Path(path), write)


def measure_files(pairs: Sequence[tuple[str, Path, Path]]) -> Iterator[tuple[str, list[dict]]]:
    """(name, rows) for each ``(name, image file, instance mask file)``: the image and its mask are read, checked
    to match, and measured (``diffseg measure``)."""
    from ..data import io
    from .files import read_instances

    for name, image_path, mask_path in pairs:
        image = io.read_image(image_path)
        instances = read_instances(mask_path)
        io.check_mask_matches(image, instances, name)
        yield name, object_table(instances, image, name=name)


def measure_project(project: Any, names: Sequence[str] | None = None) -> Iterator[tuple[str, list[dict]]]:
    """(name, rows) for each image of an objects project (default: all, in the project's order) that has a mask:
    its current mask (``Project.current_mask``: the ground truth of labelled and accepted images, else the latest
    pseudo-label; rejected images and images without a mask are left out), measured on its image."""
    if not project.objects:
        raise InputError("this is a regions project: its masks hold classes, not objects. The object table needs an "
                         "objects project (new project: objects)")
    for name in project.names() if names is None else names:
        mask, _source = project.current_mask(name)
        if mask is not None:
            yield name, object_table(np.asarray(mask), project.image(name), name=name)
