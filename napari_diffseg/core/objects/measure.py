"""The per-object table: id, area (2D) or volume (3D) in pixels, centroid, mean intensity per channel, bounding
box; written as CSV."""

from __future__ import annotations

import csv
from pathlib import Path

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
