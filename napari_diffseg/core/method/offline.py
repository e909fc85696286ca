"""Offline self-training (the quality issue's lever 6, ST++'s idea inside the teacher-student frame): at the start
of the unlabelled term and halfway through it, the teacher predicts every unlabelled image of the pool whole, at
t = 0 and mirrored (what prediction does, better than a patch's noised forward), and keeps the pixels whose top
probability reaches the confidence level; until the next pass, the twins learn those maps on their views of the
pool's patches as if they were labels (``Targets.OFFLINE``). The passes run inside the budget."""

from __future__ import annotations

import numpy as np
import torch

from ..prediction.predict import DEFAULT_TILE_3D, predict_probabilities, run_to_completion
from .teacher import DiffusionTwin

IGNORE = 255  # pixels of a pseudo-label map that are not confident enough to learn
PASS_TILE_2D = (512, 512)


def pass_points(warmup: float) -> tuple[float, float]:
    """The co-training progress at which the passes run: where the unlabelled term starts, and halfway through the
    rest."""
    return warmup, warmup + (1.0 - warmup) / 2


def passes_due(progress: float, warmup: float) -> int:
    """How many passes should have run by co-training ``progress``."""
    return sum(progress >= point for point in pass_points(warmup))


def pool_pseudo_labels(network: DiffusionTwin, images: list[np.ndarray], indices: list[int], *, sliced: bool,
                       confidence: float, device: torch.device, bf16: bool, mirror: bool = True
                       ) -> dict[int, np.ndarray]:
    """Class maps (uint8, ``IGNORE`` where the top probability is under ``confidence``) of ``images[i]`` for ``i``
    in ``indices``: (C, *spatial) arrays at the working scale as the sampler holds them; ``sliced``: volumes with
    the slice axis first, predicted slice by slice by a 2D network."""
    tile = PASS_TILE_2D if network.config.spatial_dims == 2 else DEFAULT_TILE_3D
    maps = {}
    for index in indices:
        probabilities = run_to_completion(predict_probabilities(
            [network], np.asarray(images[index], np.float32), tile, 0 if sliced else None, device=device, bf16=bf16,
            mirror=mirror)).primary
        hard = probabilities.argmax(0).astype(np.uint8)
        maps[index] = np.where(probabilities.max(0) >= confidence, hard, IGNORE).astype(np.uint8)
    return maps
