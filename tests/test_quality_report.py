"""The quality protocol's report (benchmarks/quality.py): runs of different budgets are reported apart and never
paired across budgets; collapsed runs are listed."""

from __future__ import annotations

from pathlib import Path
import sys

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import quality  # noqa: E402


def run(method: str, budget: float, subset: int, collection: float, collapse=None) -> dict:
    return {"dataset": "glas", "n": 2, "subset": subset, "seed": 0, "budget": budget, "method": method,
            "labels_only": method == quality.LABELS_ONLY, "collection_mean_dice": collection,
            "collection_pooled_dice": collection, "collection_mean_hd95": 10.0, "test_mean_dice": collection,
            "test_pooled_dice": collection, "test_mean_hd95": 10.0, "steps": 100, "steps_per_second": 1.0,
            "cpu_seconds": budget, "wall_seconds": budget, "collapse": collapse}


def test_budgets_are_reported_apart_and_never_paired_across():
    results = [run(quality.DEFAULT_ARM, 180.0, 0, 0.80), run(quality.LABELS_ONLY, 180.0, 0, 0.70),
               run(quality.DEFAULT_ARM, 900.0, 0, 0.90, collapse="empty"), run(quality.LABELS_ONLY, 900.0, 0, 0.95)]
    meta = {"command": "x", "date": "d", "wall_minutes": 1.0, "load_start": [0], "machine": "m", "versions": {}}
    text = quality.report(results, [meta])
    short, long = text.split("## 900 CPU seconds per training")
    assert "## 180 CPU seconds per training" in short
    assert "+10.0 (n=1, no CI)" in short and "-5.0" not in short  # 0.80 - 0.70, paired within 180 s only
    assert "-5.0 (n=1, no CI)" in long and "+10.0" not in long  # 0.90 - 0.95, within 900 s only
    assert "long regime, glas K=2: collection -5.0" in long and "MISSED so far" in long
    assert "Collapsed runs (the run's own check, `FitReport.collapse`): 1 of 4 checked" in long
    assert "glas K=2 subset 0 seed 0 DiffSeg: empty" in long
