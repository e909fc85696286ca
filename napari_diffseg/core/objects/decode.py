"""Class probabilities of objects mode -> instance ids: a seeded watershed.

Seeds are the confident interior (P(interior) > ``seed_threshold``), each connected piece split at its necks
(``split_seeds``: the peaks of its smoothed distance map, as CellProfiler declumps by shape); the objects' extent
is where P(background) < 0.5 (interior + boundary > 0.5); the watershed floods 1 - P(interior) from the seeds
inside that extent, so each boundary pixel goes to the object whose interior it borders. Foreground without a seed
(a small object whose interior the network missed) becomes one object per connected component when it is at
least ``min_size`` pixels.
"""

from __future__ import annotations

import numpy as np

from .targets import BACKGROUND, BOUNDARY, INTERIOR, NUM_CLASSES, instance_dtype

# P(interior) a seed needs. 0.7, chosen on the collection of benchmarks/objects.py (dsb2018, K = 2, 180 CPU-s, two
# seeds, the same trained models decoded both ways): against 0.5 it raised collection AP@0.5 by +0.1 to +1.7 points
# and test AP@0.5 by +0.8 to +3.0 in all four pairs (objects and labels-only arms); 0.3 lowered both. A stricter
# seed splits touching nuclei whose interiors the network joins with a less sure bridge.
SEED_THRESHOLD = 0.7
MIN_SIZE = 20  # pixels (voxels): smaller seedless fragments are dropped (4 before: +0.3 to +1.0 AP@0.5 points on the
# collection of the four dsb2018 models below, seedless specks being mostly false objects)
# Splitting seeds at their necks. A network trained on a few images often leaves the boundary between two touching
# nuclei incomplete, so their interiors join into one seed: decoding the network's own foreground with the true
# objects' split gave AP@0.5 0.89-0.92 on the dsb2018 test images, its seeds 0.69-0.70 (four models, K = 2,
# 180 CPU-s; benchmarks/objects_decoding.py). A seed is split where its distance map, smoothed by SPLIT_SMOOTHING, has two maxima that each
# rise SPLIT_DEPTH of the piece's highest distance above the neck between them (h-maxima of the distance map divided
# by that height, so that the rule is the same for nuclei of 3 px and glands of 30 px). Chosen on the collections
# (the first unlabelled pool images) of six trained models: on dsb2018 +3 to +6 AP@0.5 points against no split for
# relative depths 0.05-0.15 (0.2-0.3 split less and gain less); on GlaS a fixed depth of 0.25 px cut glands apart
# (-3 to -9 points) and 0.15 of the height gains there too (+2.7, +4.0); benchmarks/objects/RESULTS.md.
SPLIT_SMOOTHING = 1.0  # pixels (voxels): Gaussian sigma on the seed's distance map
SPLIT_DEPTH = 0.15  # of the highest distance in the seed's piece


def relabel_sequential(instances: np.ndarray) -> np.ndarray:
    """Ids 1..n in the order of the old ids (0 stays 0), uint16 or uint32."""
    from skimage.segmentation import relabel_sequential as relabel

    relabelled, _, _ = relabel(np.asarray(instances).astype(np.int64, copy=False))
    count = int(relabelled.max()) if relabelled.size else 0
    return relabelled.astype(instance_dtype(count))


def _relative_maxima(relative: np.ndarray, seed_mask: np.ndarray, pieces: np.ndarray) -> np.ndarray:
    """The h-maxima (depth SPLIT_DEPTH) of ``relative`` (each piece's map, 0 outside the pieces, peaking at 1), piece
    by piece: a piece with one local maximum keeps it (its only h-maximum), a piece with several gets h_maxima on
    its own box. The same as h_maxima of the whole map (pieces are apart, 0 between them) at a fraction of its
    time, since most pieces hold one object."""
    from scipy import ndimage
    from skimage import measure, morphology

    candidates = (relative == ndimage.maximum_filter(relative, size=3)) & seed_mask  # plateaus and maxima
    regions = measure.label(candidates, connectivity=relative.ndim)
    piece_of_region = np.zeros(int(regions.max()) + 1, np.int64)
    piece_of_region[regions[candidates]] = pieces[candidates]
    several = np.flatnonzero(np.bincount(piece_of_region[1:], minlength=int(pieces.max()) + 1) > 1)
    peaks = candidates.copy()
    if several.size:
        boxes = ndimage.find_objects(pieces)
        peaks[np.isin(pieces, several)] = False
        for piece in several.tolist():
            box = boxes[piece - 1]
            own = pieces[box] == piece
            found = morphology.h_maxima(np.where(own, relative[box], 0.0), SPLIT_DEPTH).astype(bool) & own
            peaks[box] |= found
    return peaks


def split_seeds(seed_mask: np.ndarray, tie_break: np.ndarray | float = 0.0) -> np.ndarray:
    """Seed ids: each connected piece (face connectivity) of ``seed_mask`` split at its necks. Markers are the
    h-maxima (depth SPLIT_DEPTH) of the distance map smoothed by SPLIT_SMOOTHING and divided, piece by piece, by the
    piece's highest value; a piece with several markers is shared among them by a watershed of the negated map
    (equal heights decided by ``tie_break``, a tiny value per pixel), a piece with one stays one seed."""
    from scipy import ndimage
    from skimage import measure, segmentation

    seed_mask = np.asarray(seed_mask, bool)
    if not seed_mask.any():
        return np.zeros(seed_mask.shape, np.int64)
    distance = ndimage.gaussian_filter(ndimage.distance_transform_edt(seed_mask).astype(np.float32),
                                       SPLIT_SMOOTHING, mode="nearest")  # float32: a large window's memory
    pieces = measure.label(seed_mask, connectivity=1)
    count = int(pieces.max())
    height = np.ones(count + 1, np.float32)
    np.maximum.at(height, pieces[seed_mask], distance[seed_mask])
    relative = distance / height[pieces]
    relative[~seed_mask] = 0.0
    peaks = _relative_maxima(relative, seed_mask, pieces)
    del relative
    # one marker per maximum (a plateau may touch itself only diagonally) and per piece
    maxima = measure.label(peaks, connectivity=seed_mask.ndim)
    keys, marker_ids = np.unique(maxima[peaks].astype(np.int64) * (count + 1) + pieces[peaks], return_inverse=True)
    several = np.bincount(keys % (count + 1), minlength=count + 1) > 1  # pieces with several markers
    if not several.any():
        return pieces
    shared = several[pieces]
    markers = np.zeros(seed_mask.shape, np.int64)
    markers[peaks] = marker_ids.ravel() + 1
    markers[~shared] = 0  # a piece with one marker stays one seed: no flood needed
    split = segmentation.watershed(tie_break - distance, markers=markers, mask=shared)
    return np.where(shared, split + count, pieces)


def _decode(seed_mask: np.ndarray, extent: np.ndarray, elevation: np.ndarray, min_size: int,
            tie_break: np.ndarray | float = 0.0, split: bool = True) -> np.ndarray:
    """Seeds = ``split_seeds`` of ``seed_mask`` inside ``extent`` (its connected pieces when not ``split``); the
    watershed floods ``elevation`` from them inside ``extent``; seedless foreground of at least ``min_size`` pixels
    becomes objects of its own."""
    from scipy import ndimage
    from skimage import measure, segmentation

    if not extent.any():
        return np.zeros(extent.shape, np.uint16)
    seeds = split_seeds(extent & seed_mask, tie_break) if split else measure.label(extent & seed_mask, connectivity=1)
    instances = segmentation.watershed(elevation, markers=seeds, mask=extent)
    orphans, count = ndimage.label(extent & (instances == 0))
    if count:
        sizes = np.bincount(orphans.ravel(), minlength=count + 1)
        keep = sizes >= min_size
        keep[0] = False
        offset = int(instances.max())
        instances = np.where(keep[orphans], orphans + offset, instances)
    return relabel_sequential(instances)


def probabilities_to_instances(probabilities: np.ndarray, seed_threshold: float = SEED_THRESHOLD,
                               min_size: int = MIN_SIZE, split: bool = True) -> np.ndarray:
    """Instance ids (uint16, uint32 beyond 65,535 objects) from (3, *spatial) class probabilities; ``split``: seeds
    split at their necks (``split_seeds``), else each connected piece of confident interior is one seed."""
    probabilities = np.asarray(probabilities, np.float32)
    if probabilities.shape[0] != NUM_CLASSES:
        raise ValueError(f"objects mode decodes {NUM_CLASSES} classes, got {probabilities.shape[0]}")
    interior = probabilities[INTERIOR]
    return _decode(interior > seed_threshold, probabilities[BACKGROUND] < 0.5, 1.0 - interior, min_size, split=split)


TIE_BREAK = 1e-4  # a fraction of a pixel: below any difference of two distances in an image under 5,000 px


def _tie_break(shape: tuple[int, ...], origin: tuple[int, ...]) -> np.ndarray:
    """A pseudo-random value in [0, TIE_BREAK) per pixel, a function of its coordinates in the whole image (the
    window's ``origin`` added), so that the same pixel gets the same value in every window."""
    modulus = 9973
    values = np.zeros(shape, np.int32)
    for axis, (size, start, prime) in enumerate(zip(shape, origin, (7919, 104729, 15485863))):
        coordinate = (np.arange(start, start + size, dtype=np.int64) * prime) % modulus
        values += coordinate.astype(np.int32).reshape([-1 if a == axis else 1 for a in range(len(shape))])
    return (values % modulus) * (TIE_BREAK / modulus)  # float64: float32 would round it away beside distances


def classes_to_instances(classes: np.ndarray, min_size: int = MIN_SIZE,
                         origin: tuple[int, ...] | None = None) -> np.ndarray:
    """Instance ids from a three-class mask (class ids: a pseudo-label, the block-by-block classes of a large
    image). The flood climbs the distance to the nearest interior pixel, so each boundary pixel goes to the nearest
    seed; equal distances are decided by a tiny value fixed by the pixel's position in the whole image (``origin``:
    where this array starts in it), not by the flood's order, which differs between an image and a window of it
    (core/objects/blocks.py decodes windows)."""
    from scipy import ndimage

    classes = np.asarray(classes)
    interior = classes == INTERIOR
    tie_break = _tie_break(classes.shape, origin or (0,) * classes.ndim)
    elevation = ndimage.distance_transform_edt(~interior) + tie_break
    return _decode(interior, classes != BACKGROUND, elevation, min_size, tie_break)


def semantic_to_instances(mask: np.ndarray) -> np.ndarray:
    """Connected components of a foreground mask (value > 0), full connectivity: what a regions model gives as
    objects (touching objects stay one)."""
    from skimage import measure

    mask = np.asarray(mask) > 0
    return relabel_sequential(measure.label(mask, connectivity=mask.ndim))


__all__ = ["probabilities_to_instances", "classes_to_instances", "semantic_to_instances", "relabel_sequential",
           "split_seeds", "BOUNDARY"]
