"""Class probabilities of objects mode -> instance ids: a seeded watershed.

Seeds are the connected components of confident interior (P(interior) > ``seed_threshold``); the objects' extent
is where P(background) < 0.5 (interior + boundary > 0.5); the watershed floods 1 - P(interior) from the seeds
inside that extent, so each boundary pixel goes to the object whose interior it borders. Foreground without a seed
(a small object whose interior the network missed) becomes one object per connected component when it is at
least ``min_size`` pixels.
"""

from __future__ import annotations

import numpy as np

from .targets import BACKGROUND, BOUNDARY, INTERIOR, NUM_CLASSES, instance_dtype

SEED_THRESHOLD = 0.5
MIN_SIZE = 4  # pixels (voxels): smaller seedless fragments are dropped


def relabel_sequential(instances: np.ndarray) -> np.ndarray:
    """Ids 1..n in the order of the old ids (0 stays 0), uint16 or uint32."""
    from skimage.segmentation import relabel_sequential as relabel

    relabelled, _, _ = relabel(np.asarray(instances).astype(np.int64, copy=False))
    count = int(relabelled.max()) if relabelled.size else 0
    return relabelled.astype(instance_dtype(count))


def probabilities_to_instances(probabilities: np.ndarray, seed_threshold: float = SEED_THRESHOLD,
                               min_size: int = MIN_SIZE) -> np.ndarray:
    """Instance ids (uint16, uint32 beyond 65,535 objects) from (3, *spatial) class probabilities."""
    from scipy import ndimage
    from skimage import measure, segmentation

    probabilities = np.asarray(probabilities, np.float32)
    if probabilities.shape[0] != NUM_CLASSES:
        raise ValueError(f"objects mode decodes {NUM_CLASSES} classes, got {probabilities.shape[0]}")
    interior = probabilities[INTERIOR]
    extent = probabilities[BACKGROUND] < 0.5
    seeds = measure.label(extent & (interior > seed_threshold), connectivity=1)
    if seeds.max() == 0 and not extent.any():
        return np.zeros(interior.shape, np.uint16)
    instances = segmentation.watershed(1.0 - interior, markers=seeds, mask=extent)
    orphans, count = ndimage.label(extent & (instances == 0))
    if count:
        sizes = np.bincount(orphans.ravel(), minlength=count + 1)
        keep = sizes >= min_size
        keep[0] = False
        offset = int(instances.max())
        instances = np.where(keep[orphans], orphans + offset, instances)
    return relabel_sequential(instances)


def classes_to_instances(classes: np.ndarray, min_size: int = MIN_SIZE) -> np.ndarray:
    """Instance ids from a three-class mask (argmax class ids, e.g. a pseudo-label), via its one-hot
    probabilities."""
    classes = np.asarray(classes)
    one_hot = np.stack([(classes == k).astype(np.float32) for k in range(NUM_CLASSES)])
    return probabilities_to_instances(one_hot, min_size=min_size)


def semantic_to_instances(mask: np.ndarray) -> np.ndarray:
    """Connected components of a foreground mask (value > 0), full connectivity: what a regions model gives as
    objects (touching objects stay one)."""
    from skimage import measure

    mask = np.asarray(mask) > 0
    return relabel_sequential(measure.label(mask, connectivity=mask.ndim))


__all__ = ["probabilities_to_instances", "classes_to_instances", "semantic_to_instances", "relabel_sequential",
           "BOUNDARY"]
