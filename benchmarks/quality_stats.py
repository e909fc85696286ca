"""The statistics of the quality protocol (benchmarks/quality.py): fixed labelled subsets, paired differences and
their bootstrap confidence interval. No torch here, so tests import it directly."""

from __future__ import annotations

import math

import numpy as np

BOOTSTRAP_SAMPLES = 10000


def labelled_subset(pool_size: int, k: int, subset: int) -> list[int]:
    """The indices (into the pool, in labelling order) of labelled subset ``subset`` of size ``k``: subset 0 is the
    first k images (the developer sets' fixed order, comparable with every earlier report); subset s > 0 is a
    fixed random draw of k images from the whole pool (numpy default_rng(1000 * s + k)), sorted."""
    if not 0 < k <= pool_size:
        raise ValueError(f"cannot label {k} of {pool_size} images")
    if subset == 0:
        return list(range(k))
    rng = np.random.default_rng(1000 * subset + k)
    return sorted(int(i) for i in rng.choice(pool_size, size=k, replace=False))


def bootstrap_ci(differences, level: float = 0.95, samples: int = BOOTSTRAP_SAMPLES,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, lower, upper): the mean of paired ``differences`` and the percentile bootstrap interval of that mean
    (resampling the pairs with replacement). NaNs are dropped; one value has no interval (NaN bounds). With few
    pairs the percentile bootstrap cannot reach beyond the values seen, so it understates the uncertainty."""
    values = np.asarray([d for d in differences if d is not None and not math.isnan(d)], dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if values.size == 1:
        return mean, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(samples, values.size))].mean(axis=1)
    tail = (1 - level) / 2
    return mean, float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def paired_differences(ours: list[dict], baseline: list[dict], key: str, pair_on: tuple[str, ...]) -> list[float]:
    """``ours[key] - baseline[key]`` for every run of ours with a baseline run of the same ``pair_on`` values
    (dataset, K, subset, seed ...); unpaired runs are left out."""
    index = {tuple(run[name] for name in pair_on): run for run in baseline}
    differences = []
    for run in ours:
        other = index.get(tuple(run[name] for name in pair_on))
        if other is not None:
            differences.append(float(run[key]) - float(other[key]))
    return differences
