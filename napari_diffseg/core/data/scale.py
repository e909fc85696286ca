"""The working scale: the resolution a model trains and predicts at, chosen from the labelled objects.

The networks see 128-px patches (2D). A PH2 lesion (~150 px across) or a large gland does not fit one at native
resolution, while a nucleus (~15 px) or a membrane (~5 px) must keep every pixel. As cellpose rescales images to
a fixed cell diameter and nnU-Net plans a spacing per dataset, ``choose_working_scale`` measures the labelled
structures and shrinks the images so that the typical structure is about ``TARGET_SIZE`` pixels thick, never
enlarging them and never shrinking below ``MIN_SCALE``. The thickness of a structure is the diameter of the largest
disc (ball) that fits inside it (twice the maximum of the Euclidean distance transform); foreground AND
background structures are measured, and the thinner of the two decides, so thin gaps between objects survive.

Resampling: images and one-hot masks are shrunk by area averaging (anti-aliased); probabilities are brought back
to the full resolution by (bi/tri)linear interpolation before they are thresholded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TARGET_SIZE = 64.0  # pixels: the typical structure thickness after rescaling (half a 128-px patch)
MIN_SCALE = 0.25
SCALE_STEP = 0.05  # scales are rounded down to a multiple of this, so near-equal label sets give the same scale


def choose_working_scale(labels: Sequence[np.ndarray], target: float = TARGET_SIZE,
                         min_scale: float = MIN_SCALE) -> float:
    """Scale factor (<= 1) that brings the thinnest typical labelled structure to about ``target`` pixels.

    The per-image thickness is the smaller of the median foreground and background structure size; the images'
    median decides. Rounded down to a multiple of ``SCALE_STEP``; 1.0 when the structures are already small.
    """
    thickness = []
    for label in labels:
        foreground = np.asarray(label) > 0
        per_kind = [structure_thickness_of(region) for region in (foreground, ~foreground)]
        thickness.append(min(per_kind))
    finite = [t for t in thickness if np.isfinite(t)]
    if not finite:
        return 1.0
    scale = min(1.0, target / float(np.median(finite)))
    scale = np.floor(scale / SCALE_STEP + 1e-9) * SCALE_STEP
    return float(max(min_scale, min(1.0, round(scale, 4))))


def structure_thickness_of(region: np.ndarray) -> float:
    """Median largest inscribed diameter over the connected components of one binary region; inf if empty."""
    from scipy import ndimage

    region = np.asarray(region, bool)
    if not region.any() or region.all():
        return float("inf")
    labels, count = ndimage.label(region)
    distance = ndimage.distance_transform_edt(region)
    diameters = 2.0 * np.asarray(ndimage.maximum(distance, labels, np.arange(1, count + 1)), float)
    return float(np.median(diameters))


def scaled_shape(shape: Sequence[int], scale: float | Sequence[float]) -> tuple[int, ...]:
    """Spatial shape at ``scale``, one factor for every axis or one per axis (each axis at least 1 pixel)."""
    scales = [float(scale)] * len(shape) if np.isscalar(scale) else [float(s) for s in scale]
    return tuple(max(1, int(round(s * f))) for s, f in zip(shape, scales))


def _interpolate(array: np.ndarray, shape: tuple[int, ...], mode: str) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    if mode == "linear":
        mode = "bilinear" if tensor.dim() == 4 else "trilinear"
        out = F.interpolate(tensor, size=shape, mode=mode, align_corners=False)
    else:
        out = F.interpolate(tensor, size=shape, mode="area")
    return out[0].numpy()


def resize_image(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A (C, *spatial) float image resampled to ``shape`` (area averaging to shrink, linear to enlarge)."""
    shape = tuple(int(s) for s in shape)
    if tuple(image.shape[1:]) == shape:
        return image
    shrinking = all(t <= s for t, s in zip(shape, image.shape[1:]))
    return _interpolate(image, shape, "area" if shrinking else "linear").astype(np.float32)


def resize_labels(labels: np.ndarray, shape: Sequence[int], num_classes: int) -> np.ndarray:
    """An integer class map resampled to ``shape``: area-averaged one-hot, then the most likely class."""
    shape = tuple(int(s) for s in shape)
    if tuple(labels.shape) == shape:
        return labels
    one_hot = np.stack([labels == k for k in range(num_classes)]).astype(np.float32)
    return resize_image(one_hot, shape).argmax(0).astype(labels.dtype)


def resize_probabilities(probabilities: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """(K, *spatial) class probabilities brought to ``shape`` by linear interpolation (still summing to 1)."""
    shape = tuple(int(s) for s in shape)
    if tuple(probabilities.shape[1:]) == shape:
        return probabilities
    return _interpolate(probabilities, shape, "linear").astype(np.float32)
