"""Bundled sample data: real DSB2018 fluorescence nuclei (CC0) and the npe2 sample-data contribution.

Owns the location of ``napari_diffseg/sample_data`` and turns its TIFF files into arrays / napari layer
data. Import-light on purpose (numpy + tifffile only; no torch, no Qt): napari imports this module when
the user opens File > Open Sample.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

logger = logging.getLogger(__name__)

SAMPLE_NAME = "dsb2018 nuclei"
LABELS_NAME = "dsb2018 labels (first 3)"


def sample_data_dir() -> Path:
    """Folder holding the bundled sample data (``train/``, ``test/``, ``split.json``, README.md)."""
    return Path(__file__).resolve().parent / "sample_data"


def _split() -> dict[str, list[str]]:
    """Ids of the bundled images, in their fixed order (``train``, ``labelled``, ``test``)."""
    return json.loads((sample_data_dir() / "split.json").read_text(encoding="utf-8"))


def load_sample_pairs() -> list[tuple[np.ndarray, np.ndarray | None, str]]:
    """Return the bundled training pool as ``(image, mask, name)`` in split order.

    ``image`` is uint8 (256, 256). ``mask`` is the binary uint8 (0/1) label from ``train/labels`` for the
    labelled images (the first 3) and ``None`` for the others, i.e. what a user would have painted.
    ``name`` is the image id (file stem).
    """
    train_dir = sample_data_dir() / "train"
    pairs: list[tuple[np.ndarray, np.ndarray | None, str]] = []
    for name in _split()["train"]:
        image = tifffile.imread(train_dir / "images" / f"{name}.tif")
        label_path = train_dir / "labels" / f"{name}.tif"
        mask = (tifffile.imread(label_path) > 0).astype(np.uint8) if label_path.exists() else None
        pairs.append((image, mask, name))
    logger.debug("loaded %d sample images from %s", len(pairs), train_dir)
    return pairs


def dsb2018_nuclei() -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """npe2 sample-data command: one (N, 256, 256) image stack and a Labels stack of the same shape.

    The labels hold binary masks (0/1, uint8) on the labelled planes (the first 3) and zeros elsewhere.
    """
    pairs = load_sample_pairs()
    images = np.stack([image for image, _, _ in pairs])
    labels = np.zeros(images.shape, dtype=np.uint8)
    for index, (_, mask, _) in enumerate(pairs):
        if mask is not None:
            labels[index] = mask
    names = [name for _, _, name in pairs]
    return [
        (images, {"name": SAMPLE_NAME, "metadata": {"names": names}}, "image"),
        (labels, {"name": LABELS_NAME, "metadata": {"names": names}}, "labels"),
    ]
