"""End to end on synthetic data: the semi-supervised default (co-training) beats the labels-only baseline.

One labelled 64x64 image and 15 unlabelled ones (make_blobs_dataset, noise 0.4), three seeds, the same step
budget (120 optimisation steps) for both methods, Dice on 8 held-out images. Measured on the development machine
(2 CPU cores, torch 2.13 CPU, bf16 autocast), pooled Dice semi-supervised vs labels-only with the current
defaults (the teacher alone through a supervised warm-up of half of co-training, then the student as its copy; no
stage-1 pretraining, working scale, poly schedule, augmentation, fixed threshold; 2026-12-03): seed 0: 0.8879 vs
0.8545, seed 1: 0.8439 vs 0.8289, seed 2: 0.8994 vs 0.8113; mean margin +0.046 (the previous default, both twins
from their own initialisation and a quarter of warm-up: +0.033; without a warm-up: +0.027; with 25 % stage-1
pretraining: -0.010). The test asserts a mean margin of at least +0.03 and that semi-supervised wins on every seed.

The budget is counted in steps, not seconds, so the result does not depend on machine load; a co-training step
costs more than a supervised one, and the equal-wall-time comparison on real data is in benchmarks/.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
import multiprocessing
from pathlib import Path
import tempfile

import numpy as np
import pytest

SEEDS = (0, 1, 2)
STEPS = 120


def _train_and_score(labels_only: bool, seed: int) -> float:
    from napari_diffseg.core.prediction.model import SegmentationModel
    from napari_diffseg.core.data.training_set import training_data_from_arrays
    from napari_diffseg.core.data.metrics import dice
    from napari_diffseg.core.data.synthetic import make_blobs_dataset
    from napari_diffseg.core.method.training import TrainConfig, train

    pairs = make_blobs_dataset(16, shape=(64, 64), seed=seed, noise=0.4)
    test = make_blobs_dataset(8, shape=(64, 64), seed=1000 + seed, noise=0.4)
    data = training_data_from_arrays([p[0] for p in pairs], {0: pairs[0][1]}, [f"i{i}" for i in range(16)])
    config = TrainConfig(budget_seconds=None, max_steps=STEPS, labels_only=labels_only, seed=seed, threads=1)
    with tempfile.TemporaryDirectory() as out:
        for _ in train(data, config, Path(out)):
            pass
        model = SegmentationModel.load(Path(out))
        predictions = [model.predict(image).mask for image, _ in test]
    return dice(np.concatenate([p.ravel() for p in predictions]), np.concatenate([m.ravel() for _, m in test]))


@pytest.mark.slow
def test_semi_supervised_beats_labels_only_on_synthetic_data():
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        jobs = [(pool.submit(_train_and_score, False, seed), pool.submit(_train_and_score, True, seed)) for seed in SEEDS]
        scores = [(semi.result(), baseline.result()) for semi, baseline in jobs]
    margins = [semi - baseline for semi, baseline in scores]
    assert np.mean(margins) >= 0.03, f"semi vs labels-only per seed: {scores}"
    assert all(m > 0 for m in margins), f"semi vs labels-only per seed: {scores}"
