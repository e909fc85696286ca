"""Numbers to text for the report sections: mean and spread over seeds, durations, one aggregated metric."""

from __future__ import annotations

import math

import numpy as np


def mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g} s"


def fmt(mean: float, sd: float | None, digits: int = 3) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if sd is None or math.isnan(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def aggregate(runs: list[dict], metric: str) -> tuple[float, float]:
    """Mean and spread of a metric: sd over seeds when there are several runs, else over the test images."""
    if len(runs) > 1:
        return mean_sd([r[f"mean_{metric}"] for r in runs])
    if len(runs) == 1:
        mean, _ = mean_sd([runs[0][f"mean_{metric}"]])
        return mean, mean_sd(runs[0][metric])[1]
    return math.nan, math.nan


