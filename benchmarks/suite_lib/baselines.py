"""The baselines beside the method: the random-forest pixel classifier of _common and Otsu's threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from _common import load_split, random_forest_scores, score_masks
from suite_lib.plan import BaselineParams


def _grey(image: np.ndarray) -> np.ndarray:
    """Grey float image; RGB(A) -> luminance."""
    from skimage.color import rgb2gray
    from napari_diffseg.core.data.io import image_layout

    if image_layout(image)[1] == 3:
        return rgb2gray(image[..., :3])
    return image.astype(np.float64)


def job_random_forest(params: BaselineParams, _dependency: dict | None) -> dict:
    return random_forest_scores(Path(params.root), params.n, params.seeds)


def job_otsu(params: BaselineParams, _dependency: dict | None) -> dict:
    """Otsu threshold per test image; the polarity (foreground brighter or darker) that fits the labelled images."""
    from skimage.filters import threshold_otsu
    from napari_diffseg.core.data.metrics import dice

    train_pairs, test_pairs = load_split(Path(params.root))
    brighter = darker = 0.0
    for image, mask, _ in train_pairs[: params.n]:
        grey = _grey(image)
        threshold = threshold_otsu(grey)
        brighter += dice(grey > threshold, mask)
        darker += dice(grey <= threshold, mask)
    bright = brighter >= darker
    predictions = []
    for image, _, _ in test_pairs:
        grey = _grey(image)
        threshold = threshold_otsu(grey)
        predictions.append(grey > threshold if bright else grey <= threshold)
    result = score_masks(predictions, [mask for _, mask, _ in test_pairs])
    result["foreground"] = "brighter" if bright else "darker"
    return result

