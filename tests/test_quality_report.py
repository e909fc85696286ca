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


def test_mirroring_is_paired_on_the_same_models_and_the_volumes_bar_is_reported():
    volumes = []
    for subset, (default, labels_only, mirrored) in enumerate([(0.74, 0.78, 0.76), (0.70, 0.75, 0.73),
                                                                (0.72, 0.80, 0.75)]):
        ours = {**run(quality.DEFAULT_ARM, 360.0, subset, default), "dataset": "la_mri_3d",
                "test_mirror_mean_dice": mirrored}
        theirs = {**run(quality.LABELS_ONLY, 360.0, subset, labels_only), "dataset": "la_mri_3d"}
        volumes += [ours, theirs]
    meta = {"command": "x", "date": "d", "wall_minutes": 1.0, "load_start": [0], "machine": "m", "versions": {}}
    text = quality.report(volumes, [meta])
    assert "not in these results" not in text  # the 2D bars of a volumes-only part are left out, not listed
    mirror_row = next(line for line in text.splitlines() if "0.720 ± 0.020 -> 0.747" in line)
    assert "+2.7" in mirror_row and "not scored" in mirror_row  # (2 + 3 + 3) / 3 on the test images; no collection
    assert "volumes, la_mri_3d K=2: default test Dice 0.720 ± 0.020 over 3 run(s) (bar: >= 0.75: MISSED by 3.0" in text
