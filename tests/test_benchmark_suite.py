"""The benchmark suite (benchmarks/suite.py and its parts in benchmarks/suite_lib): its full-mode plan covers what
issue #5 asks, its baselines and report run end to end on a small synthetic dataset, and the simulated annotator
works through a project (the training runs are covered by tests/test_training.py)."""

from __future__ import annotations

from dataclasses import replace
import json
from pathlib import Path
import sys

import numpy as np
import pytest

from napari_diffseg.core.data.synthetic import make_blobs_dataset, write_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # scripts, not a package
from suite_lib.jobs import run_job  # noqa: E402
from suite_lib.plan import EffortParams, build_plan  # noqa: E402
from suite_lib.report import write_report  # noqa: E402
from suite_lib.settings import ALL_DATASETS, DEFAULT_VARIANT, MODES, SECTIONS  # noqa: E402


@pytest.fixture(scope="module")
def blobs_root(tmp_path_factory) -> Path:
    """A dataset folder laid out like ../shared/data/*: images/, masks/, split.json (6 train, 3 test)."""
    root = tmp_path_factory.mktemp("blobs")
    write_dataset(root, make_blobs_dataset(9, shape=(48, 48), seed=3), n_labelled=0)
    names = sorted(p.stem for p in (root / "images").glob("*.tif"))
    (root / "split.json").write_text(json.dumps({"train": names[:6], "test": names[6:]}))
    return root


def _data_root(tmp_path: Path, blobs_root: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        (tmp_path / name).symlink_to(blobs_root, target_is_directory=True)
    return tmp_path


def test_full_plan_covers_the_issue(tmp_path, blobs_root):
    settings = MODES["full"]
    data_root = _data_root(tmp_path, blobs_root, ALL_DATASETS)
    plan = build_plan(settings, SECTIONS, ALL_DATASETS, data_root, tmp_path / "work", 1.0)
    trains = [j.params for j in plan if j.kind == "train"]

    for dataset in ALL_DATASETS:  # 6 train images: 1, 2 and 5 labelled, 3 seeds, both networks
        for n in (1, 2, 5):
            for method in ("DiffSeg", "labels only"):
                seeds = {p.seed for p in trains if (p.dataset, p.n, p.method, p.variant) ==
                         (dataset, n, method, DEFAULT_VARIANT)
                         and p.budget in (settings.budget_2d, settings.budget_3d)}
                assert seeds == {0, 1, 2}, (dataset, n, method)
            forests = [j for j in plan if j.kind == "rf" and j.params.dataset == dataset and j.params.n == n]
            assert len(forests) == 1 and forests[0].params.seeds == (0, 1, 2)
            assert any(j.kind == "otsu" and j.params.dataset == dataset and j.params.n == n for j in plan)
        assert not any(p.dataset == dataset and p.n >= 6 for p in trains)  # no run without unlabelled images

    ablation = [p for p in trains if p.dataset == settings.ablation_dataset and p.n == settings.ablation_labelled]
    overrides = [p.overrides for p in ablation if p.variant != DEFAULT_VARIANT]
    assert {o.get("rounds") for o in overrides if "rounds" in o} == {0, 3, 5}  # and K = 1, the default
    assert {"rounds": 3, "chained_rounds": True} in overrides
    assert {o["base_channels"] for o in overrides if "base_channels" in o} == {32, 64}  # and 16, the default
    assert {"pretrain_fraction": 0.25} in overrides  # the default has none
    assert {"supervised_warmup": 0.0, "unlabelled_ramp": 1.0} in overrides  # the paper's ramp, no warm-up
    for method, expected in (("DiffSeg", {60.0, 120.0, 300.0, 600.0}), ("labels only", {60.0, 120.0, 300.0})):
        budgets = {p.budget for p in ablation if p.method == method and p.variant == DEFAULT_VARIANT}
        assert expected <= budgets
    assert any(p.sampling_steps == (1, 5, 20) for p in ablation)
    effort = [j.params for j in plan if j.kind == "effort"]
    assert {(p.strategy, p.seed) for p in effort} == {(name, seed) for name in ("uncertainty", "random")
                                                            for seed in (0, 1, 2)}
    starts = {j.key: j.params.seed for j in plan if j.kind == "effort_start"}
    assert all(starts[j.after] == j.params.seed for j in plan if j.kind == "effort")  # one start per seed
    speed = [j.params for j in plan if j.kind == "speed_train"]
    assert {p.width for p in speed} == {16, 32, 64} and {p.bf16 for p in speed} == {False, True}
    assert len({p.patch for p in speed}) >= 3


def test_baselines_and_report_run_on_a_small_dataset(tmp_path, blobs_root):
    settings = MODES["quick"]
    data_root = _data_root(tmp_path, blobs_root, ("blobs",))
    plan = build_plan(settings, ("accuracy",), ("blobs",), data_root, tmp_path / "work", 1.0)
    baselines = [j for j in plan if j.kind in ("rf", "otsu")]
    results = {job.key: run_job(job.kind, replace(job.params, seeds=(0, 1)) if job.kind == "rf" else job.params,
                                None) for job in baselines}

    forest = results["rf/blobs/n1"]
    assert [r["seed"] for r in forest["seed_results"]] == [0, 1]
    assert all(r["mean_dice"] > 0.6 for r in forest["seed_results"])  # bright blobs on a dark background
    otsu = results["otsu/blobs/n1"]  # uneven illumination: one global threshold is mediocre, not useless
    assert otsu["foreground"] == "brighter" and otsu["mean_dice"] > 0.4

    meta = {"mode": "quick", "argv": "test", "date": "today", "cpu": "cpu", "cores": 2, "versions": {},
            "load_start": (0, 0, 0), "load_end": (0, 0, 0), "scale": 1.0, "wall_seconds": 1.0}
    report = tmp_path / "RESULTS.md"
    text = write_report(settings, plan, results, meta, report, ("blobs",), ("accuracy",))
    row = next(line for line in text.splitlines() if line.startswith("| blobs | 1 |"))
    forest_mean = np.mean([r["mean_dice"] for r in forest["seed_results"]])
    assert f"{forest_mean:.3f}" in row  # the random-forest cell is the mean over its two seeds
    assert (tmp_path / "plots" / "accuracy.png").stat().st_size > 1000


def test_the_simulated_annotator_works_through_a_project_as_next_round_does(tmp_path, blobs_root):
    """Round 1 of a project with one labelled image, then a round in which the annotator accepts the ground truth of
    the first two images of the review queue (most uncertain first) and Next round trains warm-started."""
    from napari_diffseg.core.project.store import ImageStatus, Project

    params = EffortParams("blobs", str(blobs_root), seed=0, start_n=1, budget=3.0, work_dir=str(tmp_path / "start"))
    start = run_job("effort_start", params, None)
    started = Project.open(Path(start["project"]))
    queue = started.review_queue()
    assert len(queue) == 5 and started.current_round == 1 and start["steps"] > 0
    effort = run_job("effort", replace(params, strategy="uncertainty", per_round=2, rounds=1,
                                       work_dir=str(tmp_path / "uncertainty")), start)
    rows = effort["rounds"]
    assert [r["corrected"] for r in rows] == [0, 2] and rows[1]["chosen"] == queue[:2]
    project = Project.open(tmp_path / "uncertainty" / "project")
    assert project.current_round == 2 and project.latest_model_dir() == project.checkpoints_dir(2)
    assert {project.record(name).status for name in queue[:2]} == {ImageStatus.ACCEPTED}
    assert len(project.labelled_names()) == 3 and rows[1]["steps"] > 0
    assert started.current_round == 1  # the start project is copied, not changed
