"""The plan of a suite run: typed jobs, the cost model that orders and estimates them, and the plan's description."""

from __future__ import annotations

from dataclasses import dataclass, replace
import json
from pathlib import Path

import numpy as np

from _common import RF_MAX_PIXELS, RF_PIXELS_PER_IMAGE
from suite_lib.settings import DEFAULT_VARIANT, THREE_D_DATASETS, VARIANTS, Settings


@dataclass(frozen=True)
class TrainParams:
    """A training run on a dataset's train split, its first ``n`` images labelled, scored on its test split."""

    dataset: str
    root: str
    n: int
    seed: int
    variant: str  # a key of settings.VARIANTS, or DEFAULT_VARIANT
    labels_only: bool
    budget: float
    method: str  # "DiffSeg" or "labels only"
    overrides: dict  # TrainConfig settings of the variant
    sampling_steps: tuple[int, ...] = (1,)  # the model is scored with each (the first is the headline)


@dataclass(frozen=True)
class BaselineParams:
    """A baseline (random forest, Otsu) given the first ``n`` images of the train split."""

    dataset: str
    root: str
    n: int
    method: str
    seeds: tuple[int, ...] = ()


@dataclass(frozen=True)
class EffortParams:
    """The simulated annotator: the start project (``strategy`` empty) or the rounds of one strategy after it."""

    dataset: str
    root: str
    seed: int
    start_n: int
    budget: float
    work_dir: str
    strategy: str = ""
    per_round: int = 0
    rounds: int = 0


@dataclass(frozen=True)
class SpeedTrainParams:
    root: str
    width: int
    patch: int
    bf16: bool
    steps: int
    keep_dir: str


@dataclass(frozen=True)
class SpeedPredictParams:
    root: str
    width: int
    size: int
    tiles: tuple[int, ...]
    repeats: int


Params = TrainParams | BaselineParams | EffortParams | SpeedTrainParams | SpeedPredictParams


@dataclass
class Job:
    """One unit of work for a worker process; ``after``: the key of a job whose result it needs."""

    key: str
    kind: str
    params: Params
    cost: float  # estimated seconds, for scheduling and the plan
    after: str | None = None
    exclusive: bool = False  # timing runs: alone on the machine, after everything else
    priority: float = 0.0


# the cost model (seconds, measured on this project's 2-core machine): it orders the jobs and estimates the wall time
OTSU_SECONDS = 3.0
WIDE_EXTRA_SECONDS_PER_CHANNEL = 0.3  # validation and pseudo-labels of a width variant, per channel of its width
PREDICT_MP_PER_SECOND = 2.0  # prediction throughput of the width-16 network


@dataclass(frozen=True)
class DatasetShape:
    """What the plan needs to know about a dataset to estimate run times."""

    train: int
    test: int
    megapixels: float  # per image (megavoxels for 3D), from the first image
    three_d: bool
    channels: int


def dataset_shape(root: Path) -> DatasetShape:
    from napari_diffseg.core.data.io import image_layout, read_image, spatial_shape

    split = json.loads((root / "split.json").read_text())
    first = read_image(root / "images" / f"{split['train'][0]}.tif")
    spatial_dims, channels = image_layout(first)
    return DatasetShape(len(split["train"]), len(split["test"]), float(np.prod(spatial_shape(first))) / 1e6,
                        spatial_dims == 3, channels)


def run_budget(settings: Settings, dataset: str, scale: float) -> float:
    """Seconds of one accuracy run on ``dataset`` (3D volumes get their own budget)."""
    return (settings.budget_3d if dataset in THREE_D_DATASETS else settings.budget_2d) * scale


def _train_overhead(shape: DatasetShape, labels_only: bool, unlabelled: int) -> float:
    """Seconds a run takes beyond its budget (measured on dsb2018, isbi2012_em, la_mri_3d at one thread):
    start-up, the final validation, pseudo-labels of the unlabelled images (two networks unless labels only)
    and the test prediction; ~1 s per megapixel per network in 2D, ~3 s per megavoxel in 3D."""
    per_megapixel = 3.2 if shape.three_d else 1.0
    networks = 1 if labels_only else 2
    return 2.5 + per_megapixel * shape.megapixels * (networks * unlabelled + shape.test)


def _rf_cost(shape: DatasetShape, n: int, seeds: int) -> float:
    """Seconds of a random-forest job (measured with one seed: 2-5 s on dsb2018, 7-15 s on isbi2012_em, 9-23 s on
    glas, 10-26 s on la_mri_3d): features of the labelled and test images once, then per seed the fit on up to
    RF_MAX_PIXELS pixels and the test prediction."""
    feature_seconds = (12.0 if shape.three_d else 4.0) * shape.megapixels * shape.channels * (n + shape.test)
    fit_seconds = 6e-6 * min(n * RF_PIXELS_PER_IMAGE, RF_MAX_PIXELS) * shape.channels
    return 1.0 + feature_seconds + seeds * (fit_seconds + 0.2 * feature_seconds)


def _speed_step_estimate(width: int, patch: int, bf16: bool) -> float:
    """Rough seconds per co-training step on one core (measured: 0.6 s at width 16, 128 px, bf16)."""
    return 0.6 * (width / 16) ** 1.9 * (patch / 128) ** 2.3 * (1.0 if bf16 else 1.9)


def build_plan(settings: Settings, sections: tuple[str, ...], datasets: tuple[str, ...], data_root: Path,
               work: Path, scale: float) -> list[Job]:
    jobs: dict[str, Job] = {}
    needed = set(datasets) | ({settings.ablation_dataset} if {"ablations", "effort"} & set(sections) else set())
    shapes = {name: dataset_shape(data_root / name) for name in needed}

    def add(job: Job) -> str:
        old = jobs.get(job.key)
        if old is not None and job.kind == "train":  # asked for by two sections: one run, the union of both
            steps = tuple(sorted(set(old.params.sampling_steps) | set(job.params.sampling_steps)))
            job = replace(old, params=replace(old.params, sampling_steps=steps), cost=max(old.cost, job.cost))
        elif old is not None:
            return job.key
        jobs[job.key] = job
        return job.key

    def train_job(dataset: str, n: int, seed: int, variant: str, labels_only: bool = False,
                  budget: float | None = None, sampling: tuple[int, ...] = (1,)) -> str:
        budget = run_budget(settings, dataset, scale) if budget is None else budget
        method = "labels only" if labels_only else "DiffSeg"
        key = f"train/{dataset}/n{n}/seed{seed}/{variant}/{budget:g}s/{method}"
        overrides = dict(VARIANTS.get(variant, {}))
        params = TrainParams(dataset, str(data_root / dataset), n, seed, variant, labels_only, budget, method,
                             overrides, tuple(sampling))
        cost = budget + _train_overhead(shapes[dataset], labels_only, shapes[dataset].train - n) + 2 * len(sampling)
        cost += WIDE_EXTRA_SECONDS_PER_CHANNEL * overrides.get("base_channels", 0)  # a width variant: slower passes
        return add(Job(key, "train", params, cost))

    if "accuracy" in sections:
        for dataset in datasets:
            for n in (n for n in settings.labelled if n < shapes[dataset].train):
                for seed in settings.seeds:
                    train_job(dataset, n, seed, DEFAULT_VARIANT)
                    train_job(dataset, n, seed, DEFAULT_VARIANT, labels_only=True)
                root = str(data_root / dataset)
                add(Job(f"rf/{dataset}/n{n}", "rf", BaselineParams(dataset, root, n, "random forest", settings.seeds),
                        _rf_cost(shapes[dataset], n, len(settings.seeds))))
                add(Job(f"otsu/{dataset}/n{n}", "otsu", BaselineParams(dataset, root, n, "Otsu"), OTSU_SECONDS))
    dataset, n = settings.ablation_dataset, settings.ablation_labelled
    if "ablations" in sections:
        for seed in settings.ablation_seeds:
            train_job(dataset, n, seed, DEFAULT_VARIANT, sampling=settings.sampling_steps)
            for variant in settings.variants:
                train_job(dataset, n, seed, variant)
            for budget in settings.budgets:
                train_job(dataset, n, seed, DEFAULT_VARIANT, budget=budget * scale)
            for budget in settings.labels_only_budgets:  # does the semi-supervised run pay off with more time?
                train_job(dataset, n, seed, DEFAULT_VARIANT, labels_only=True, budget=budget * scale)
    if "effort" in sections:
        for seed in settings.effort_seeds:
            budget = settings.effort_budget * scale
            overhead = _train_overhead(shapes[dataset], False, shapes[dataset].train)
            start_params = EffortParams(dataset, str(data_root / dataset), seed, settings.effort_start, budget,
                                        str(work / f"effort_{dataset}_seed{seed}_start"))
            start = add(Job(f"effort/{dataset}/seed{seed}/start", "effort_start", start_params, budget + overhead))
            for strategy in settings.strategies:
                key = f"effort/{dataset}/seed{seed}/{strategy}"
                params = replace(start_params, strategy=strategy, per_round=settings.effort_per_round,
                                 rounds=settings.effort_rounds, work_dir=str(work / key.replace("/", "_")))
                add(Job(key, "effort", params, settings.effort_rounds * (budget + overhead), after=start))
    if "speed" in sections:
        root = str(data_root / "dsb2018")
        for width, patch in settings.speed_configs:
            for bf16 in (False, True):
                key = f"speed_train/w{width}/p{patch}/{'bf16' if bf16 else 'fp32'}"
                params = SpeedTrainParams(root, width, patch, bf16, settings.speed_steps,
                                          str(work / key.replace("/", "_")))
                add(Job(key, "speed_train", params, 8 + settings.speed_steps * _speed_step_estimate(width, patch, bf16),
                        exclusive=True))
        for width in sorted({w for w, _ in settings.speed_configs}):
            patch = min((p for w, p in settings.speed_configs if w == width), key=lambda p: abs(p - 128))
            megapixels = settings.speed_mosaic ** 2 / 1e6
            passes = len(settings.speed_tiles) * 2 * settings.speed_repeats  # each tile size in fp32 and bf16
            cost = passes * megapixels / (PREDICT_MP_PER_SECOND / (width / 16) ** 1.9) + 5
            params = SpeedPredictParams(root, width, settings.speed_mosaic, tuple(settings.speed_tiles),
                                        settings.speed_repeats)
            add(Job(f"speed_predict/w{width}", "speed_predict", params, cost,
                    after=f"speed_train/w{width}/p{patch}/fp32", exclusive=True))
    plan = list(jobs.values())
    by_key = {job.key: job for job in plan}

    def priority(job: Job) -> float:  # own cost + the longest chain waiting on it (critical path first)
        return job.cost + max((priority(j) for j in plan if j.after == job.key), default=0.0)

    return [replace(job, priority=priority(job)) for job in plan if job.after is None or job.after in by_key]


def simulate(jobs: list[Job], workers: int) -> float:
    """Estimated wall seconds of running ``jobs`` with the scheduler of ``run_jobs``."""
    clock, done, pending = 0.0, {}, sorted(jobs, key=lambda j: -j.priority)
    running: list[tuple[float, str]] = []
    while pending or running:
        for job in list(pending):
            if len(running) >= workers:
                break
            if job.after is None or job.after in done:
                running.append((max(clock, done.get(job.after, 0.0)) + job.cost, job.key))
                pending.remove(job)
        running.sort()
        if not running:
            break
        clock, key = running.pop(0)
        done[key] = clock
    return clock


def describe_plan(jobs: list[Job], workers: int) -> str:
    lines = ["| kind | runs | budget / cost each | estimated seconds |", "|---|---|---|---|"]
    groups: dict[tuple[str, str], list[Job]] = {}
    for job in jobs:
        if job.kind == "train":
            label = "training run"
            each = f"{job.params.budget:g} s"
        elif job.kind == "effort":
            label = "annotation rounds"
            each = f"{job.params.rounds} x {job.params.budget:g} s"
        elif job.kind == "effort_start":
            label = "annotation start (a project, round 1)"
            each = f"{job.params.budget:g} s"
        else:
            label, each = job.kind, "-"
        groups.setdefault((label, each), []).append(job)
    for (label, each), members in groups.items():
        lines.append(f"| {label} | {len(members)} | {each} | {sum(j.cost for j in members):.0f} |")
    parallel = [j for j in jobs if not j.exclusive]
    exclusive = [j for j in jobs if j.exclusive]
    wall = simulate(parallel, workers) + simulate(exclusive, 1)
    lines.append(f"\nEstimated wall time: {wall / 60:.1f} min ({workers} workers, then the speed runs alone)")
    return "\n".join(lines)


