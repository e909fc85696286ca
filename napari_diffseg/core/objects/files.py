"""Instance masks on disk and objects-mode training data: read instance masks (uint16 / uint32 TIFF as dsb2018
ships them, PNG, or a semantic mask split into objects), write them (uint16, uint32 beyond 65,535 objects), and
turn a folder of images with instance masks into the three-class training data of the unchanged method."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import io
from ..errors import InputError
from .targets import DEFAULT_BOUNDARY_WIDTH, NUM_CLASSES, as_instances, instance_dtype, instances_to_classes

CARD_KEY = "objects"


def objects_card(boundary_width: int = DEFAULT_BOUNDARY_WIDTH) -> dict:
    """What a model card records of objects mode: how the targets were made and how predictions are decoded."""
    return {"mode": "objects", "classes": ["background", "interior", "boundary"], "boundary_width": int(boundary_width),
            "decode": "seeded watershed (seeds: connected interior > 0.5; extent: background < 0.5)"}


def card_objects(card: dict) -> dict | None:
    """The objects entry of a model card (None for a regions model); ModelError-free: a malformed entry is None."""
    entry = card.get(CARD_KEY) if isinstance(card, dict) else None
    return entry if isinstance(entry, dict) and entry.get("mode") == "objects" else None


def read_instances(path: Path) -> np.ndarray:
    """Instance ids of a label file (a one-value mask is split into objects by connected components, warned)."""
    path = Path(path)
    raw = io._read_raw(path, for_mask=True)  # the values as stored (read_mask would binarise them)
    if raw.ndim == 3 and raw.shape[-1] == 1:
        raw = raw[..., 0]
    elif raw.ndim == 3 and raw.shape[-1] in (3, 4) and min(raw.shape[:2]) >= io.MIN_AXIS:
        if not (np.array_equal(raw[..., 0], raw[..., 1]) and np.array_equal(raw[..., 0], raw[..., 2])):
            raise InputError(f"{path}: instance mask is a colour image {raw.shape}; save it as a single-channel "
                             "label image (0 = background, 1, 2, ... one id per object)")
        raw = raw[..., 0]
    return as_instances(raw, name=path)


def write_instances(path: Path, instances: np.ndarray) -> None:
    """Write an instance mask as a zlib TIFF (uint16, uint32 beyond 65,535), atomically, with our Software tag."""
    instances = np.asarray(instances)
    high = int(instances.max()) if instances.size else 0
    io.write_tiff_atomic(Path(path), instances.astype(instance_dtype(high)))


def objects_training_data_from_arrays(images: list[np.ndarray], instances: dict[int, np.ndarray], names: list[str],
                                      boundary_width: int = DEFAULT_BOUNDARY_WIDTH, require_labels: bool = True):
    """TrainingData (three classes) from raw images and instance masks (or semantic masks) keyed by image index."""
    from ..data.training_set import training_data_from_arrays

    classes = {}
    for index, mask in instances.items():
        io.check_mask_matches(images[index], np.asarray(mask), names[index])
        classes[index] = instances_to_classes(as_instances(mask, name=names[index]), boundary_width)
    data = training_data_from_arrays(images, classes, names, NUM_CLASSES, require_labels)
    data.objects = objects_card(boundary_width)
    return data


def objects_training_data_from_folders(images_dir: Path, labels_dir: Path,
                                       boundary_width: int = DEFAULT_BOUNDARY_WIDTH):
    """Every image of ``images_dir``; instance masks of ``labels_dir`` matched by name stem mark the labelled ones."""
    image_paths, label_paths = io.pair_images_with_labels(images_dir, labels_dir)
    names = [io.name_stem(path) for path in image_paths]
    images = [io.read_image(path) for path in image_paths]
    instances = {i: read_instances(label_paths[name]) for i, name in enumerate(names) if name in label_paths}
    return objects_training_data_from_arrays(images, instances, names, boundary_width)
