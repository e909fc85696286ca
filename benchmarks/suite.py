"""Benchmark suite: how good with how few labels, how fast, and how much labelling time it saves.

One command runs the sections, prints markdown tables, writes ``benchmarks/RESULTS.md`` (tables, machine,
versions, date, load) and PNG plots in ``benchmarks/plots/`` (the quick mode: ``benchmarks/quick/``), and keeps the
raw numbers in ``<out>/results.json``:

- accuracy: Dice and HD95 on each dataset's test split vs the number of labelled images (1, 2, 5, 10 where the
  train split has more images than that) for this project's default (semi-supervised), the same network on the
  labels only, a random-forest pixel classifier on scikit-image features (what ilastik does) and Otsu;
- ablations (2 labelled; GlaS in the full mode, dsb2018 in the quick one): 25 % unsupervised pretraining, K
  pseudo-label rounds, chained rounds, network width, time budget (also for labels only), and single- vs multi-step
  sampling at prediction;
- effort (same dataset): a simulated annotator on a project (core.project, core.rounds: the napari *Next round*
  button's path) who, after each round, corrects the first N pseudo-labels of the review queue (most uncertain
  first; their ground truth is accepted) vs N random ones; the next round warm-starts from the last;
- speed: training step time and prediction throughput by patch / tile size and width, fp32 vs bf16.

The method and the labels-only baseline run through the engine the `diffseg` CLI uses (see ``_common.py``).
Independent runs go two at a time in worker processes with one torch thread each (both see the same machine
load); the speed section runs alone afterwards with the default thread count.

    python benchmarks/suite.py --mode quick               # < 10 min on 2 cores: dsb2018, 1 seed -> quick/RESULTS.md
    python benchmarks/suite.py --mode full                # about an hour: all datasets, 3 seeds -> RESULTS.md
    python benchmarks/suite.py --mode full --sections accuracy --datasets glas ph2 --dry-run   # the plan only
"""

from __future__ import annotations

import argparse
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
import datetime
import json
import math
import os
from pathlib import Path
import shutil
import sys
import time
import traceback

import numpy as np

from _common import (DEFAULT_DATA, RF_MAX_PIXELS, RF_PIXELS_PER_IMAGE, RF_TREES, cpu_model, load_average,
                     load_split, mosaic, random_forest_scores, score_masks, score_model,
                     time_prediction, train_and_score, train_model, versions)

BENCH_DIR = Path(__file__).resolve().parent
SECTIONS = ("accuracy", "ablations", "effort", "speed")
ALL_DATASETS = ("dsb2018", "glas", "ph2", "isbi2012_em", "la_mri_3d")
THREE_D_DATASETS = ("la_mri_3d",)  # volumes: their own (longer) training budget
METHODS = ("DiffSeg", "labels only", "random forest", "Otsu")
VARIANTS: dict[str, dict] = {  # ablations: TrainConfig fields that differ from the default
    "25% pretraining": {"pretrain_fraction": 0.25},
    "no warm-up": {"supervised_warmup": 0.0, "unlabelled_ramp": 1.0},
    "K = 0 rounds": {"rounds": 0},
    "K = 3 rounds": {"rounds": 3},
    "K = 5 rounds": {"rounds": 5},
    "K = 3 chained": {"rounds": 3, "chained_rounds": True},
    "width 32": {"base_channels": 32},
    "width 64": {"base_channels": 64},
}
DEFAULT_VARIANT = "default"
STRATEGIES = ("uncertainty", "random", "none")


@dataclass(frozen=True)
class Settings:
    """What one mode runs. Budgets are wall-time seconds per training run (one torch thread each)."""

    seeds: tuple[int, ...]
    datasets: tuple[str, ...]
    labelled: tuple[int, ...] = (1, 2, 5, 10)
    budget_2d: float = 35.0
    budget_3d: float = 40.0
    ablation_dataset: str = "dsb2018"
    ablation_labelled: int = 2
    ablation_seeds: tuple[int, ...] = (0,)
    variants: tuple[str, ...] = tuple(VARIANTS)
    budgets: tuple[float, ...] = (60.0, 120.0, 300.0, 600.0)
    labels_only_budgets: tuple[float, ...] = (60.0, 120.0, 300.0)  # the same network on the labels only
    sampling_steps: tuple[int, ...] = (1, 5, 20)
    effort_start: int = 1
    effort_per_round: int = 2
    effort_rounds: int = 3
    effort_budget: float = 30.0
    effort_seeds: tuple[int, ...] = (0,)
    strategies: tuple[str, ...] = STRATEGIES
    speed_configs: tuple[tuple[int, int], ...] = ((16, 64), (16, 128), (16, 256), (32, 128), (64, 128))
    speed_steps: int = 10  # 25% pretraining: 2 pretraining and 5 co-training step intervals are timed
    speed_mosaic: int = 1024
    speed_tiles: tuple[int, ...] = (256, 512, 1024)
    speed_repeats: int = 1


MODES = {
    "quick": Settings(
        seeds=(0,), datasets=("dsb2018",), labelled=(1, 2, 5), budget_2d=35.0,
        variants=("25% pretraining", "K = 3 rounds", "K = 3 chained", "width 32"),
        budgets=(35.0, 70.0), labels_only_budgets=(70.0,), sampling_steps=(1, 5), effort_rounds=2, effort_budget=20.0,
        strategies=("uncertainty", "random"), speed_configs=((16, 128), (32, 128)), speed_tiles=(256, 1024),
    ),
    # ablations and effort on GlaS in the full mode: Otsu nearly solves dsb2018 (0.919 Dice), so differences
    # between variants there are within noise; on GlaS the semi-supervised runs differ from labels-only.
    # Three seeds for uncertainty vs random corrections (one random draw says little); no 'none' control there.
    "full": Settings(seeds=(0, 1, 2), datasets=ALL_DATASETS, ablation_dataset="glas", effort_seeds=(0, 1, 2),
                     strategies=("uncertainty", "random")),
}


@dataclass
class Job:
    """One unit of work for a worker process; ``after``: the key of a job whose result it needs."""

    key: str
    kind: str
    params: dict
    cost: float  # estimated seconds, for scheduling and the plan
    after: str | None = None
    exclusive: bool = False  # timing runs: alone on the machine, after everything else
    priority: float = 0.0


# ------------------------------------------------------------------------------------------------ baselines
def _grey(image: np.ndarray) -> np.ndarray:
    """Grey float image; RGB(A) -> luminance."""
    from skimage.color import rgb2gray
    from napari_diffseg.core.io import image_layout

    if image_layout(image)[1] == 3:
        return rgb2gray(image[..., :3])
    return image.astype(np.float64)


def job_random_forest(params: dict, _dependency: dict | None) -> dict:
    return random_forest_scores(Path(params["root"]), params["n"], params["seeds"])


def job_otsu(params: dict, _dependency: dict | None) -> dict:
    """Otsu threshold per test image; the polarity (foreground brighter or darker) that fits the labelled images."""
    from skimage.filters import threshold_otsu
    from napari_diffseg.core.metrics import dice

    train_pairs, test_pairs = load_split(Path(params["root"]))
    brighter = darker = 0.0
    for image, mask, _ in train_pairs[: params["n"]]:
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


# ------------------------------------------------------------------------------------------------ method jobs
def job_train(params: dict, _dependency: dict | None) -> dict:
    result = train_and_score(params["root"], params["n"], params["labels_only"], params["budget"], params["seed"],
                             params["overrides"], tuple(params["sampling_steps"]), params.get("keep_dir"))
    result["model_dir"] = params.get("keep_dir")
    return result


def _train_project_round(project, config) -> dict:
    """One round of ``project`` through core.rounds (what *Next round* and ``diffseg project train`` run)."""
    from napari_diffseg.core import rounds
    from napari_diffseg.core.events import Progress

    steps, began = 0, time.perf_counter()
    for event in rounds.train_round(project, config, warm_start=True):
        if isinstance(event, Progress):
            steps = event.step
    return {"steps": steps, "train_seconds": time.perf_counter() - began}


def _effort_config(params: dict):
    from napari_diffseg.core.config import TrainConfig

    return TrainConfig(budget_seconds=params["budget"], seed=params["seed"], threads=1)


def job_effort_start(params: dict, _dependency: dict | None) -> dict:
    """The project every strategy of one seed starts from: the train split in a Project (the product's store), the
    first ``start_n`` images labelled, round 1 trained through core.rounds and scored on the test split."""
    from napari_diffseg.core.project import Project

    train_pairs, test_pairs = load_split(Path(params["root"]))
    project = Project.create(Path(params["work_dir"]) / "project")
    for image, _, name in train_pairs:
        project.add_image(image, name=name)
    for _, mask, name in train_pairs[: params["start_n"]]:
        project.save_label(name, mask)
    trained = _train_project_round(project, _effort_config(params))
    scores = score_model(project.latest_model_dir(), test_pairs)
    return {"project": str(project.folder), "mean_dice": scores["mean_dice"], "mean_hd95": scores["mean_hd95"],
            **trained}


def job_effort(params: dict, start: dict) -> dict:
    """A simulated annotator on a copy of the start project, through the product's own path: each round it takes
    ``per_round`` images of the review queue (the most uncertain first, as the Review panel orders them), or random
    ones, or none; corrects their pseudo-labels to the ground truth and accepts them (Project.accept); then a Next
    round trains warm-started (Project.next_round + core.rounds.train_round), scored on the test split."""
    from napari_diffseg.core.project import Project

    train_pairs, test_pairs = load_split(Path(params["root"]))
    truth = {name: mask for _, mask, name in train_pairs}
    folder = Path(params["work_dir"]) / "project"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(start["project"], folder)
    project = Project.open(folder)
    config = _effort_config(params)
    rng = np.random.default_rng(params["seed"])
    rows = [{"round": 0, "corrected": 0, "labelled": len(project.labelled_names()), "mean_dice": start["mean_dice"],
             "mean_hd95": start["mean_hd95"], "seconds": start["train_seconds"], "steps": start["steps"],
             "chosen": []}]
    for round_ in range(1, params["rounds"] + 1):
        began = time.perf_counter()
        queue = project.review_queue()
        if params["strategy"] == "uncertainty":
            chosen = queue[: params["per_round"]]
        elif params["strategy"] == "random":
            chosen = [str(n) for n in rng.choice(queue, min(params["per_round"], len(queue)), replace=False)]
        else:
            chosen = []
        for name in chosen:
            project.accept(name, truth[name])
        previous = project.current_round
        project.next_round()
        trained = _train_project_round(project, config)
        shutil.rmtree(project.checkpoints_dir(previous, create=False), ignore_errors=True)  # warm start done
        scores = score_model(project.latest_model_dir(), test_pairs)
        rows.append({"round": round_, "corrected": rows[-1]["corrected"] + len(chosen),
                     "labelled": len(project.labelled_names()), "mean_dice": scores["mean_dice"],
                     "mean_hd95": scores["mean_hd95"], "seconds": time.perf_counter() - began,
                     "steps": trained["steps"], "chosen": chosen})
    return {"rounds": rows}


def job_speed_train(params: dict, _dependency: dict | None) -> dict:
    """Seconds per pretraining and per co-training step (batch 8) with the default thread count."""
    from napari_diffseg.core.device import configure_threads
    from napari_diffseg.core.training import Progress, TrainConfig

    train_pairs, _ = load_split(Path(params["root"]))
    patch = params["patch"]
    config = TrainConfig(budget_seconds=None, max_steps=params["steps"], base_channels=params["width"],
                         patch_size=(patch, patch), bf16=params["bf16"], pretrain_fraction=0.25,
                         supervised_warmup=0.0, checkpoint_every_seconds=1e9,
                         first_pseudo_labels_after_seconds=1e9)  # both stages timed: 25 % pretraining, no warm-up
    elapsed: dict[str, list[float]] = {}

    def collect(event) -> None:
        if isinstance(event, Progress):
            elapsed.setdefault(event.stage, []).append(event.elapsed)

    train_model(train_pairs[:3], [0, 1], config, Path(params["keep_dir"]), on_event=collect)
    deltas = {stage: np.diff(values) for stage, values in elapsed.items()}
    cotrain = deltas.get("cotrain", np.array([]))[1:]  # the first co-training step includes kernel warm-up
    pretrain = deltas.get("pretrain", np.array([]))
    step = float(cotrain.mean()) if len(cotrain) else math.nan
    return {"pretrain_step": float(pretrain.mean()) if len(pretrain) else math.nan, "cotrain_step": step,
            "pretrain_intervals": len(pretrain), "cotrain_intervals": len(cotrain),
            "patch_mp_per_s": 8 * patch * patch / 1e6 / step, "threads": configure_threads(None),
            "model_dir": params["keep_dir"]}


def job_speed_predict(params: dict, trained: dict) -> dict:
    """Prediction throughput on a large grey mosaic by tile size and precision (default thread count)."""
    from napari_diffseg.core.device import bf16_supported, configure_threads

    threads = configure_threads(None)
    train_pairs, _ = load_split(Path(params["root"]))
    image = mosaic([pair[0] for pair in train_pairs], params["size"])
    rows = []
    for tile in params["tiles"]:
        for bf16 in ([False, True] if bf16_supported("cpu") else [False]):
            timing = time_prediction(Path(trained["model_dir"]), image, bf16, params["repeats"], tile=(tile, tile))
            rows.append({"tile": tile, "bf16": bf16, "threads": threads, **timing})
    return {"rows": rows}


JOB_FUNCTIONS = {"train": job_train, "rf": job_random_forest, "otsu": job_otsu, "effort_start": job_effort_start,
                 "effort": job_effort,
                 "speed_train": job_speed_train, "speed_predict": job_speed_predict}


def run_job(kind: str, params: dict, dependency: dict | None) -> dict:
    began = time.perf_counter()
    result = JOB_FUNCTIONS[kind](params, dependency)
    result["job_seconds"] = time.perf_counter() - began
    return result


# ------------------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class DatasetShape:
    """What the plan needs to know about a dataset to estimate run times."""

    train: int
    test: int
    megapixels: float  # per image (megavoxels for 3D), from the first image
    three_d: bool
    channels: int


def dataset_shape(root: Path) -> DatasetShape:
    from napari_diffseg.core.io import image_layout, read_image, spatial_shape

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
        if job.key in jobs:  # the same run asked for by two sections: one run, the union of what they need
            old = jobs[job.key]
            if job.kind == "train":
                old.params["sampling_steps"] = sorted(set(old.params["sampling_steps"]) | set(job.params["sampling_steps"]))
                old.cost = max(old.cost, job.cost)
            return job.key
        jobs[job.key] = job
        return job.key

    def train_job(dataset: str, n: int, seed: int, variant: str, labels_only: bool = False,
                  budget: float | None = None, sampling: tuple[int, ...] = (1,)) -> str:
        budget = run_budget(settings, dataset, scale) if budget is None else budget
        method = "labels only" if labels_only else "DiffSeg"
        key = f"train/{dataset}/n{n}/seed{seed}/{variant}/{budget:g}s/{method}"
        params = {"dataset": dataset, "root": str(data_root / dataset), "n": n, "seed": seed, "variant": variant,
                  "labels_only": labels_only, "budget": budget, "method": method,
                  "overrides": dict(VARIANTS.get(variant, {})), "sampling_steps": list(sampling), "keep_dir": None}
        cost = budget + _train_overhead(shapes[dataset], labels_only, shapes[dataset].train - n) + 2 * len(sampling)
        if variant.startswith("width"):
            cost += 0.3 * int(variant.split()[1])  # slower validation and pseudo-labels
        return add(Job(key, "train", params, cost))

    if "accuracy" in sections:
        for dataset in datasets:
            for n in (n for n in settings.labelled if n < shapes[dataset].train):
                for seed in settings.seeds:
                    train_job(dataset, n, seed, DEFAULT_VARIANT)
                    train_job(dataset, n, seed, DEFAULT_VARIANT, labels_only=True)
                add(Job(f"rf/{dataset}/n{n}", "rf",
                        {"dataset": dataset, "root": str(data_root / dataset), "n": n, "seeds": list(settings.seeds),
                         "method": "random forest"}, _rf_cost(shapes[dataset], n, len(settings.seeds))))
                add(Job(f"otsu/{dataset}/n{n}", "otsu",
                        {"dataset": dataset, "root": str(data_root / dataset), "n": n, "method": "Otsu"}, 3.0))
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
            start = add(Job(f"effort/{dataset}/seed{seed}/start", "effort_start",
                            {"dataset": dataset, "root": str(data_root / dataset), "seed": seed,
                             "start_n": settings.effort_start, "budget": budget,
                             "work_dir": str(work / f"effort_{dataset}_seed{seed}_start")}, budget + overhead))
            for strategy in settings.strategies:
                key = f"effort/{dataset}/seed{seed}/{strategy}"
                params = {"dataset": dataset, "root": str(data_root / dataset), "seed": seed, "strategy": strategy,
                          "start_n": settings.effort_start, "per_round": settings.effort_per_round,
                          "rounds": settings.effort_rounds, "budget": budget,
                          "work_dir": str(work / key.replace("/", "_"))}
                cost = settings.effort_rounds * (budget + overhead)
                add(Job(key, "effort", params, cost, after=start))
    if "speed" in sections:
        root = str(data_root / "dsb2018")
        for width, patch in settings.speed_configs:
            for bf16 in (False, True):
                key = f"speed_train/w{width}/p{patch}/{'bf16' if bf16 else 'fp32'}"
                params = {"root": root, "width": width, "patch": patch, "bf16": bf16, "steps": settings.speed_steps,
                          "keep_dir": str(work / key.replace("/", "_"))}
                add(Job(key, "speed_train", params, 8 + settings.speed_steps * _speed_step_estimate(width, patch, bf16),
                        exclusive=True))
        for width in sorted({w for w, _ in settings.speed_configs}):
            patch = min((p for w, p in settings.speed_configs if w == width), key=lambda p: abs(p - 128))
            megapixels = settings.speed_mosaic ** 2 / 1e6
            cost = len(settings.speed_tiles) * 2 * settings.speed_repeats * megapixels / (2.0 / (width / 16) ** 1.9) + 5
            add(Job(f"speed_predict/w{width}", "speed_predict",
                    {"root": root, "width": width, "size": settings.speed_mosaic, "tiles": list(settings.speed_tiles),
                     "repeats": settings.speed_repeats},
                    cost, after=f"speed_train/w{width}/p{patch}/fp32", exclusive=True))
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
            each = f"{job.params['budget']:g} s"
        elif job.kind == "effort":
            label = "annotation rounds"
            each = f"{job.params['rounds']} x {job.params['budget']:g} s"
        elif job.kind == "effort_start":
            label = "annotation start (a project, round 1)"
            each = f"{job.params['budget']:g} s"
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


# ------------------------------------------------------------------------------------------------ scheduler
def _summary(job: Job, result: dict) -> str:
    if "error" in result:
        return f"FAILED: {result['error'].splitlines()[-1]}"
    if "mean_dice" in result:
        extra = f", {result['steps']} steps" if "steps" in result else ""
        return f"Dice {result['mean_dice']:.3f}, HD95 {result['mean_hd95']:.1f}{extra}"
    if "seed_results" in result:
        return "Dice by seed " + " ".join(f"{r['mean_dice']:.3f}" for r in result["seed_results"])
    if job.kind == "effort":
        return "Dice by round " + " ".join(f"{r['mean_dice']:.3f}" for r in result["rounds"])
    if job.kind == "speed_train":
        return f"co-train {result['cotrain_step']:.2f} s/step"
    if job.kind == "speed_predict":
        return " ".join(f"{r['tile']}/{'bf16' if r['bf16'] else 'fp32'} {r['mp_per_s']:.2f} MP/s" for r in result["rows"])
    return ""


def run_jobs(jobs: list[Job], workers: int, results: dict[str, dict], started: float) -> None:
    """Run jobs in ``workers`` processes, longest critical path first, a job only after the one it needs."""
    pending = sorted(jobs, key=lambda j: -j.priority)
    total = len(pending)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        running = {}
        while pending or running:
            for job in list(pending):
                if len(running) >= workers:
                    break
                if job.after is not None and job.after not in results:
                    continue
                pending.remove(job)
                dependency = results.get(job.after) if job.after else None
                if dependency is not None and "error" in dependency:
                    results[job.key] = {"error": f"skipped: {job.after} failed"}
                    continue
                running[pool.submit(run_job, job.kind, job.params, dependency)] = job
            if not running:
                for job in pending:
                    results[job.key] = {"error": "skipped: its dependency was not planned"}
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                try:
                    results[job.key] = future.result()
                except Exception:  # a failed run is reported, the others go on
                    results[job.key] = {"error": traceback.format_exc()}
                done = sum(1 for j in jobs if j.key in results)
                print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {done}/{total} {job.key}: "
                      f"{_summary(job, results[job.key])}", flush=True)


# ------------------------------------------------------------------------------------------------ report
def _mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g} s"


def _fmt(mean: float, sd: float | None, digits: int = 3) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if sd is None or math.isnan(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def aggregate(runs: list[dict], metric: str) -> tuple[float, float]:
    """Mean and spread of a metric: sd over seeds when there are several runs, else over the test images."""
    if len(runs) > 1:
        return _mean_sd([r[f"mean_{metric}"] for r in runs])
    if len(runs) == 1:
        mean, _ = _mean_sd([runs[0][f"mean_{metric}"]])
        return mean, _mean_sd(runs[0][metric])[1]
    return math.nan, math.nan


@dataclass
class Report:
    settings: Settings
    plan: list[Job]
    results: dict[str, dict]
    meta: dict
    plots_dir: Path
    lines: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)

    def runs(self, **match) -> list[dict]:
        found = []
        for job in self.plan:
            result = self.results.get(job.key)
            if result is None or "error" in result:
                continue
            values = {"kind": job.kind, **job.params}
            if all(values.get(k) == v for k, v in match.items()):
                # a job that ran several seeds (the random forest) counts as one run per seed
                found += [{**job.params, **one} for one in result.get("seed_results", [result])]
        return found

    def method_runs(self, dataset: str, n: int, method: str, budget: float) -> list[dict]:
        if method in ("DiffSeg", "labels only"):
            return self.runs(kind="train", dataset=dataset, n=n, method=method, variant=DEFAULT_VARIANT, budget=budget)
        return self.runs(kind="rf" if method == "random forest" else "otsu", dataset=dataset, n=n)

    def spread_note(self, seeds: int) -> str:
        return ("± is the standard deviation over seeds (each seed's value is the mean over the test images)"
                if seeds > 1 else "± is the standard deviation over the test images (one seed)")

    def save(self, figure, name: str, caption: str) -> None:
        self.plots_dir.mkdir(parents=True, exist_ok=True)
        figure.savefig(self.plots_dir / name, dpi=110, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(figure)
        self.plots.append(name)
        self.lines += [f"![{caption}](plots/{name})", ""]

    # --------------------------------------------------------------------------- accuracy
    def accuracy(self, datasets: tuple[str, ...]) -> list[tuple]:
        s = self.settings
        table = [row for row in ((d, n) for d in datasets for n in s.labelled)
                 if any(self.method_runs(row[0], row[1], m, self.budget(row[0])) for m in METHODS)]
        if not table:
            return []
        self.lines += ["## Accuracy vs number of labelled images", "",
                       f"Test-split Dice and HD95 (pixels / voxels), {self.spread_note(len(s.seeds))}; seeds "
                       f"{', '.join(map(str, s.seeds))}. Training budget per run: {s.budget_2d * self.meta['scale']:g} s "
                       f"for 2D" + (f", {s.budget_3d * self.meta['scale']:g} s for 3D" if set(THREE_D_DATASETS) & set(datasets) else "")
                       + " wall time, one torch thread (two runs side by side). DiffSeg = this project's default "
                       "(a supervised warm-up, then teacher-student co-training on all train images, the first n labelled; "
                       "no stage-1 pretraining inside the budget); "
                       "labels only = the same network and budget on the n labelled images; random forest = "
                       f"{RF_TREES} trees on scikit-image multiscale intensity / edge / texture features of up to "
                       f"{RF_PIXELS_PER_IMAGE // 1000}k balanced pixels per labelled image ({RF_MAX_PIXELS // 1000}k "
                       "in total); Otsu = one global threshold per test image, polarity chosen on the labelled "
                       "images (deterministic, no spread over seeds). HD95 is averaged over the images where it is "
                       "defined; `k/m undefined` counts the test images (over all seeds) where exactly one of the "
                       "prediction and the ground truth is empty: they are left out of that mean, so the lowest HD95 "
                       "is bold only among methods without undefined images. Best mean in bold."
                       + self.missing_counts(datasets, table), ""]
        summary = []
        for metric, better in (("dice", max), ("hd95", min)):
            title = "Dice (higher is better)" if metric == "dice" else "HD95 in pixels (lower is better)"
            self.lines += [f"**{title}**", "",
                           "| dataset | labelled | " + " | ".join(METHODS) + (" | steps (DiffSeg / labels only) |" if metric == "dice" else " |"),
                           "|---|---|" + "---|" * len(METHODS) + ("---|" if metric == "dice" else "")]
            for dataset, n in table:
                budget = self.budget(dataset)
                cells = {}
                for method in METHODS:
                    runs = self.method_runs(dataset, n, method, budget)
                    mean, sd = aggregate(runs, metric)
                    empty = (sum(r["hd95_undefined"] for r in runs), sum(len(r["hd95"]) for r in runs))
                    cells[method] = (mean, None if method == "Otsu" and len(s.seeds) > 1 else sd, empty)
                    if metric == "dice" and runs:
                        per_image = np.mean([r["dice"] for r in runs], axis=0)
                        summary.append((dataset, n, method, mean, sd, aggregate(runs, "hd95")[0], per_image))
                finite = [c[0] for c in cells.values() if not math.isnan(c[0]) and (metric == "dice" or not c[2][0])]
                best = better(finite) if finite else None
                row = []
                for method in METHODS:
                    mean, sd, empty = cells[method]
                    text = _fmt(mean, sd, 3 if metric == "dice" else 1)
                    if best is not None and mean == best and (metric == "dice" or not empty[0]):
                        text = f"**{text}**"
                    if metric == "hd95" and empty[0]:
                        text += f" ({empty[0]}/{empty[1]} undefined)"
                    row.append(text)
                line = f"| {dataset} | {n} | " + " | ".join(row) + " |"
                if metric == "dice":
                    steps = [np.mean([r["steps"] for r in self.method_runs(dataset, n, m, budget)] or [math.nan])
                             for m in ("DiffSeg", "labels only")]
                    line += " " + " / ".join("-" if math.isnan(x) else f"{x:.0f}" for x in steps) + " |"
                self.lines.append(line)
            self.lines.append("")
        self.labels_saved(summary)
        self.plot_accuracy(table, summary)
        return summary

    def missing_counts(self, datasets: tuple[str, ...], table: list[tuple]) -> str:
        """Why a dataset has fewer label counts than asked: a semi-supervised run needs unlabelled images."""
        short = []
        for dataset in datasets:
            measured = [n for d, n in table if d == dataset]
            if measured and measured != list(self.settings.labelled):
                short.append(f"{dataset} {', '.join(map(str, measured))}")
        if not short:
            return ""
        return (" Label counts measured where the train split is small (a count must leave unlabelled images for "
                f"the semi-supervised run): {'; '.join(short)}.")

    def labels_saved(self, summary: list[tuple]) -> None:
        """How many labelled images each trained baseline needs to match DiffSeg's mean Dice (measured counts)."""
        means: dict[tuple[str, str], dict[int, float]] = {}
        for dataset, n, method, mean, *_ in summary:
            if not math.isnan(mean):
                means.setdefault((dataset, method), {})[n] = mean
        rivals = ("labels only", "random forest")
        rows = []
        for (dataset, method), ours in means.items():
            if method != "DiffSeg":
                continue
            for n, target in sorted(ours.items()):
                cells = []
                for rival in rivals:
                    theirs = means.get((dataset, rival), {})
                    if not theirs:
                        cells.append("n/a")
                        continue
                    enough = [m for m, value in sorted(theirs.items()) if value >= target]
                    if not enough:
                        cells.append(f"more than {max(theirs)} (never reached)")
                    elif enough[0] <= n:
                        cells.append(f"{enough[0]}: no saving")
                    else:
                        cells.append(f"{enough[0]}: **{enough[0] - n} saved**")
                rows.append(f"| {dataset} | {n} | {target:.3f} | " + " | ".join(cells) + " |")
        if rows:
            self.lines += ["**Labelling saved**: the fewest labelled images (among the counts measured) with which "
                           "each baseline reaches DiffSeg's mean Dice; `no saving` = the baseline does as well with "
                           "as many labels or fewer. Same budgets as above.", "",
                           "| dataset | DiffSeg labelled | DiffSeg Dice | labels only needs | random forest needs |",
                           "|---|---|---|---|---|", *rows, ""]

    def budget(self, dataset: str) -> float:
        return run_budget(self.settings, dataset, self.meta["scale"])

    def plot_accuracy(self, table: list[tuple], summary: list[tuple]) -> None:
        import matplotlib.pyplot as plt

        datasets = list(dict.fromkeys(d for d, _ in table))
        figure, axes = plt.subplots(2, len(datasets), figsize=(3.6 * len(datasets), 6.4), squeeze=False)
        for column, dataset in enumerate(datasets):
            for row, metric in enumerate(("dice", "hd95")):
                ax = axes[row][column]
                for method in METHODS:
                    points = []
                    for n in (n for d, n in table if d == dataset):
                        mean, sd = aggregate(self.method_runs(dataset, n, method, self.budget(dataset)), metric)
                        deterministic = method == "Otsu" and len(self.settings.seeds) > 1  # as in the table
                        points.append((n, mean, 0.0 if deterministic else sd))
                    if points:
                        xs, ys, sds = zip(*points)
                        ax.errorbar(xs, ys, yerr=sds, marker="o", capsize=3, label=method)
                ax.set_xscale("log")
                ax.minorticks_off()
                ax.set_xticks([n for d, n in table if d == dataset])
                ax.set_xticklabels([str(n) for d, n in table if d == dataset])
                ax.set_xlabel("labelled images")
                ax.set_ylabel("Dice" if metric == "dice" else "HD95 (px)")
                if row == 0:
                    ax.set_title(dataset)
        axes[0][0].legend(fontsize=8)
        figure.tight_layout()
        self.save(figure, "accuracy.png", "Dice and HD95 vs labelled images")

    # --------------------------------------------------------------------------- ablations
    def ablations(self) -> dict:
        s = self.settings
        dataset, n = s.ablation_dataset, s.ablation_labelled
        budget = s.budget_2d * self.meta["scale"]

        def ablation_runs(**match) -> list[dict]:  # the accuracy section may have more seeds of the same runs
            return [r for r in self.runs(kind="train", dataset=dataset, n=n, **match) if r["seed"] in s.ablation_seeds]

        default = ablation_runs(method="DiffSeg", variant=DEFAULT_VARIANT, budget=budget)
        if not default:
            return {}
        note = self.spread_note(len(s.ablation_seeds))
        d_mean, _ = aggregate(default, "dice")
        self.lines += ["## Ablations of the method", "",
                       f"{dataset}, {n} labelled images, seeds {', '.join(map(str, s.ablation_seeds))}; {note}. "
                       f"Every variant changes one setting of the default (no pretraining, a supervised warm-up for the "
                       f"first quarter, one "
                       f"independent pseudo-label round every 4th co-training step, width 16) and trains for the "
                       f"same {budget:g} s.", "",
                       "| variant | Dice | HD95 | steps | Dice vs default |", "|---|---|---|---|---|"]
        found = {}
        for variant in (DEFAULT_VARIANT, *s.variants):
            runs = ablation_runs(method="DiffSeg", variant=variant, budget=budget)
            if not runs:
                continue
            mean, sd = aggregate(runs, "dice")
            hd = aggregate(runs, "hd95")
            found[variant] = (mean, sd)
            name = "default (K = 1, independent, width 16, warm-up, no pretraining)" if variant == DEFAULT_VARIANT else variant
            delta = "" if variant == DEFAULT_VARIANT else f"{mean - d_mean:+.3f}"
            self.lines.append(f"| {name} | {_fmt(mean, sd)} | {_fmt(*hd, 1)} | "
                              f"{np.mean([r['steps'] for r in runs]):.0f} | {delta} |")
        labels_only = ablation_runs(method="labels only", variant=DEFAULT_VARIANT, budget=budget)
        if labels_only:
            mean, sd = aggregate(labels_only, "dice")
            self.lines.append(f"| (labels only, for reference) | {_fmt(mean, sd)} | "
                              f"{_fmt(*aggregate(labels_only, 'hd95'), 1)} | "
                              f"{np.mean([r['steps'] for r in labels_only]):.0f} | {mean - d_mean:+.3f} |")
        self.lines.append("")
        budget_rows = []  # (seconds, {method: (dice mean/sd, hd95 mean/sd, steps)})
        for seconds in sorted(set(b * self.meta["scale"] for b in s.budgets) | {budget}):
            by_method = {}
            for method in ("DiffSeg", "labels only"):
                runs = ablation_runs(method=method, variant=DEFAULT_VARIANT, budget=seconds)
                if runs:
                    by_method[method] = (aggregate(runs, "dice"), aggregate(runs, "hd95"),
                                         np.mean([r["steps"] for r in runs]))
            if "DiffSeg" in by_method:
                budget_rows.append((seconds, by_method))
        if len(budget_rows) > 1:
            self.lines += ["**Time budget**: both networks with longer runs (same settings; wall time on one core). "
                           "Does the semi-supervised run pay off with more time?", "",
                           "| budget | DiffSeg Dice | labels only Dice | DiffSeg HD95 | labels only HD95 | steps "
                           "(DiffSeg / labels only) |", "|---|---|---|---|---|---|"]
            for seconds, by_method in budget_rows:
                ours, theirs = by_method["DiffSeg"], by_method.get("labels only")
                self.lines.append(
                    f"| {_duration(seconds)} | {_fmt(*ours[0])} | {_fmt(*theirs[0]) if theirs else 'n/a'} | "
                    f"{_fmt(*ours[1], 1)} | {_fmt(*theirs[1], 1) if theirs else 'n/a'} | "
                    f"{ours[2]:.0f} / {f'{theirs[2]:.0f}' if theirs else '-'} |")
            self.lines.append("")
        sampling_rows = []
        for steps in s.sampling_steps:
            values = [r["sampling"].get(str(steps)) for r in default if str(steps) in r.get("sampling", {})]
            if values:
                sampling_rows.append((steps, _mean_sd([v["mean_dice"] for v in values]),
                                      _mean_sd([v["mean_hd95"] for v in values]),
                                      np.mean([v["predict_seconds_per_image"] for v in values])))
        if sampling_rows:
            spread = "; ± over seeds" if len(default) > 1 else ", one seed"
            self.lines += [f"**Sampling at prediction** (the default model(s) above{spread}; more steps sample the "
                           "mask DDIM-style from noise, `diffseg predict --sampling-steps`)", "",
                           "| sampling steps | Dice | HD95 | seconds per test image |", "|---|---|---|---|"]
            single = len(default) == 1
            self.lines += [f"| {steps} | {_fmt(dice_[0], None if single else dice_[1])} | "
                           f"{_fmt(hd[0], None if single else hd[1], 1)} | {sec:.3f} |"
                           for steps, dice_, hd, sec in sampling_rows]
            self.lines.append("")
        self.plot_ablations(found, budget_rows, sampling_rows)
        return {"variants": found, "budgets": budget_rows, "sampling": sampling_rows, "default": d_mean}

    def plot_ablations(self, found: dict, budget_rows: list, sampling_rows: list) -> None:
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, 3, figsize=(14, 4))
        names = list(found)
        axes[0].barh(names, [found[v][0] for v in names], xerr=[found[v][1] for v in names], capsize=3)
        axes[0].invert_yaxis()
        axes[0].set_xlabel("Dice")
        axes[0].set_title("variants at equal budget")
        for method in ("DiffSeg", "labels only"):
            points = [(sec / 60, *by_method[method][0]) for sec, by_method in budget_rows if method in by_method]
            if points:
                xs, ys, sds = zip(*points)
                axes[1].errorbar(xs, ys, yerr=sds, marker="o", capsize=3, label=method)
        if budget_rows:
            axes[1].legend(fontsize=8)
        axes[1].set_xlabel("budget (min)")
        axes[1].set_ylabel("Dice")
        axes[1].set_title("time budget")
        if sampling_rows:
            axes[2].plot([r[0] for r in sampling_rows], [r[1][0] for r in sampling_rows], marker="o")
        axes[2].set_xlabel("sampling steps")
        axes[2].set_ylabel("Dice")
        axes[2].set_title("sampling at prediction")
        figure.tight_layout()
        self.save(figure, "ablations.png", "Ablations")

    # --------------------------------------------------------------------------- effort
    def effort(self) -> dict:
        s = self.settings
        curves: dict[str, list[list[dict]]] = {}
        for strategy in STRATEGIES:
            runs = self.runs(kind="effort", strategy=strategy)
            if runs:
                curves[strategy] = [r["rounds"] for r in runs]
        if not curves:
            return {}
        self.lines += ["## Annotation effort: which pseudo-labels to correct", "",
                       f"{s.ablation_dataset}: start with the first {s.effort_start} image(s) labelled and a default "
                       f"run of {s.budget_2d * self.meta['scale']:g} s (round 0). Each round a simulated annotator "
                       f"corrects {s.effort_per_round} pseudo-labels (their ground truth becomes labels): the most "
                       "uncertain ones (mean uncertainty the training reports with its pseudo-labels, the order of "
                       "the Review panel) or random ones"
                       + (", or none (the same extra training without corrections)" if "none" in curves else "")
                       + "; then "
                       f"the next round trains for {s.effort_budget * self.meta['scale']:g} s warm-started from the last "
                       f"(like *Next round*). Seeds {', '.join(map(str, s.effort_seeds))}; test-split Dice "
                       "(mean over seeds); round seconds = training incl. pseudo-labels.", "",
                       "| strategy | round | corrected images | Dice | HD95 | round seconds |", "|---|---|---|---|---|---|"]
        for strategy, seeds in curves.items():
            for index in range(len(seeds[0])):
                rows = [rounds[index] for rounds in seeds if index < len(rounds)]
                dice_ = _mean_sd([r["mean_dice"] for r in rows])
                hd = _mean_sd([r["mean_hd95"] for r in rows])
                self.lines.append(f"| {strategy} | {index} | {rows[0]['corrected']} | "
                                  f"{_fmt(*dice_) if len(rows) > 1 else _fmt(dice_[0], None)} | "
                                  f"{_fmt(hd[0], None, 1)} | {np.mean([r['seconds'] for r in rows]):.0f} |")
        self.lines.append("")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, 2, figsize=(10, 4))
        for strategy, seeds in curves.items():
            length = min(len(r) for r in seeds)
            xs = [seeds[0][i]["corrected"] if strategy != "none" else i * s.effort_per_round for i in range(length)]
            ys = [np.mean([rounds[i]["mean_dice"] for rounds in seeds]) for i in range(length)]
            axes[0].plot(xs, ys, marker="o", label=strategy)
            axes[1].plot(range(length), [np.mean([rounds[i]["seconds"] for rounds in seeds]) for i in range(length)],
                         marker="o", label=strategy)
        axes[0].set_xlabel("corrected images (for 'none': same rounds, no corrections)")
        axes[0].set_ylabel("test Dice")
        axes[0].legend()
        axes[1].set_xlabel("round")
        axes[1].set_ylabel("seconds per round")
        axes[1].set_ylim(bottom=0)
        from matplotlib.ticker import MaxNLocator

        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        figure.tight_layout()
        self.save(figure, "effort.png", "Dice vs corrected images")
        return {strategy: [np.mean([rounds[-1]["mean_dice"] for rounds in seeds]), seeds[0][-1]["corrected"]]
                for strategy, seeds in curves.items()}

    # --------------------------------------------------------------------------- speed
    def speed(self) -> dict:
        s = self.settings
        rows = []
        for width, patch in s.speed_configs:
            for bf16 in (False, True):
                result = self.results.get(f"speed_train/w{width}/p{patch}/{'bf16' if bf16 else 'fp32'}")
                if result and "error" not in result:
                    rows.append((width, patch, bf16, result))
        predictions = []
        for width in sorted({w for w, _ in s.speed_configs}):
            result = self.results.get(f"speed_predict/w{width}")
            if result and "error" not in result:
                predictions += [(width, row) for row in result["rows"]]
        if not rows and not predictions:
            return {}
        threads = rows[0][3]["threads"] if rows else predictions[0][1]["threads"]
        counted = [(r.get("pretrain_intervals"), r.get("cotrain_intervals")) for *_, r in rows]
        intervals = ("pretraining / co-training intervals timed: " + ", ".join(sorted({f"{a} / {b}" for a, b in counted}))
                     if counted and None not in counted[0] else "step intervals not recorded by this run")
        self.lines += ["## Speed", "",
                       f"Alone on the machine (after the other sections), {threads} torch thread(s) (the default: "
                       f"cores - 1), dsb2018 images. Training: batch 8, mean seconds per step over the step intervals "
                       f"of a {s.speed_steps}-step run ({intervals}; the first co-training step, with kernel "
                       "warm-up, left out; one pseudo-label round every 4th co-training step as by default, so a "
                       "short run may hold one round more or less than the default's share); patch megapixels per "
                       "second = ""8 x patch pixels / co-training step. Prediction: one deterministic step on a "
                       f"{s.speed_mosaic}x{s.speed_mosaic} mosaic, overlapping Gaussian-blended tiles.", ""]
        if rows:
            self.lines += ["| width | patch | precision | pretraining s/step | co-training s/step | patch Mpx/s |",
                           "|---|---|---|---|---|---|"]
            for width, patch, bf16, r in rows:
                self.lines.append(f"| {width} | {patch} | {'bf16' if bf16 else 'fp32'} | {r['pretrain_step']:.2f} | "
                                  f"{r['cotrain_step']:.2f} | {r['patch_mp_per_s']:.3f} |")
            self.lines.append("")
        if predictions:
            self.lines += ["| width | tile | precision | seconds | megapixels/s |", "|---|---|---|---|---|"]
            for width, r in predictions:
                self.lines.append(f"| {width} | {r['tile']} | {'bf16' if r['bf16'] else 'fp32'} | {r['seconds']:.2f} | "
                                  f"{r['mp_per_s']:.2f} |")
            self.lines.append("")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, 2, figsize=(11, 4))
        labels = sorted({f"w{w} p{p}" for w, p, _, _ in rows}, key=lambda t: [int(x[1:]) for x in t.split()])
        for offset, bf16 in ((-0.2, False), (0.2, True)):
            values = {f"w{w} p{p}": r["cotrain_step"] for w, p, b, r in rows if b == bf16}
            axes[0].bar(np.arange(len(labels)) + offset, [values.get(l, np.nan) for l in labels], width=0.4,
                        label="bf16" if bf16 else "fp32")
        axes[0].set_xticks(np.arange(len(labels)), labels)
        axes[0].set_ylabel("seconds per co-training step")
        axes[0].set_yscale("log")
        axes[0].legend()
        keys = sorted({(w, r["tile"]) for w, r in predictions})
        for offset, bf16 in ((-0.2, False), (0.2, True)):
            values = {(w, r["tile"]): r["mp_per_s"] for w, r in predictions if r["bf16"] == bf16}
            axes[1].bar(np.arange(len(keys)) + offset, [values.get(k, np.nan) for k in keys], width=0.4,
                        label="bf16" if bf16 else "fp32")
        axes[1].set_xticks(np.arange(len(keys)), [f"w{w} t{t}" for w, t in keys])
        axes[1].set_ylabel("prediction megapixels / s")
        axes[1].legend()
        figure.tight_layout()
        self.save(figure, "speed.png", "Training and prediction speed")
        return {"train": rows, "predict": predictions}

    # --------------------------------------------------------------------------- verdict
    def losses(self, summary: list[tuple], ablation: dict, effort: dict) -> None:
        """Plain statements of every comparison DiffSeg loses, from the numbers in this report."""
        lines = ["## Where the method loses", ""]
        cases, dice_wins, hd_wins = [], 0, 0
        groups: dict[tuple, dict] = {}
        for dataset, n, method, mean, sd, hd, per_image in summary:
            groups.setdefault((dataset, n), {})[method] = (mean, sd, hd, per_image)
        groups = {key: methods for key, methods in groups.items()
                  if "DiffSeg" in methods and not math.isnan(methods["DiffSeg"][0])}
        for (dataset, n), methods in groups.items():
            ours = methods["DiffSeg"]
            others = {m: v for m, v in methods.items() if m != "DiffSeg" and not math.isnan(v[0])}
            beaten_by = [(m, v) for m, v in others.items() if v[0] > ours[0]]
            dice_wins += not beaten_by
            hd_wins += all(math.isnan(v[2]) or v[2] >= ours[2] for v in others.values())
            for method, (mean, sd, hd, per_image) in beaten_by:
                better = int(np.sum(per_image > ours[3]))
                cases.append(f"- {dataset}, {n} labelled: **{method}** {mean:.3f} vs DiffSeg {ours[0]:.3f} "
                             f"(Dice {ours[0] - mean:+.3f}; {method} better on {better} of {len(per_image)} test "
                             f"images; HD95 {hd:.1f} vs {ours[2]:.1f})")
        if groups:
            lines += [f"DiffSeg has the best mean Dice in **{dice_wins} of {len(groups)}** dataset / label-count "
                      f"settings and the lowest mean HD95 in **{hd_wins} of {len(groups)}**."
                      + (" It loses on Dice in these (a baseline's mean test Dice is higher):" if cases else ""), ""]
            lines += [*cases, ""] if cases else []
        budgets = ablation.get("budgets", [])
        behind = [(sec, m) for sec, m in budgets if "labels only" in m and m["labels only"][0][0] >= m["DiffSeg"][0][0]]
        if behind:
            text = ", ".join(f"{_duration(sec)} ({m['DiffSeg'][0][0]:.3f} vs {m['labels only'][0][0]:.3f})"
                             for sec, m in behind)
            lines += [f"- Time budget ({self.settings.ablation_dataset}): the labels-only network is as good or "
                      f"better at {text} (DiffSeg vs labels only).", ""]
        if "uncertainty" in effort and "random" in effort and effort["uncertainty"][0] <= effort["random"][0]:
            lines += [f"- Annotation effort: correcting the most uncertain pseudo-labels was not better than "
                      f"correcting random ones (final Dice {effort['uncertainty'][0]:.3f} vs "
                      f"{effort['random'][0]:.3f} after {effort['uncertainty'][1]} corrected images"
                      + (", one seed: within run-to-run noise" if len(self.settings.effort_seeds) == 1 else "")
                      + ").", ""]
        tried = []
        if ablation.get("variants"):
            best = max(((k, v) for k, v in ablation["variants"].items() if k != DEFAULT_VARIANT),
                       key=lambda item: item[1][0], default=None)
            if best is not None and best[1][0] > ablation["default"]:
                tried.append(f"- Method variants at the same budget (table above): the best is **{best[0]}** "
                             f"(Dice {best[1][0]:.3f} vs default {ablation['default']:.3f}).")
            elif best is not None:
                tried.append(f"- Method variants at the same budget (table above): none beats the default "
                             f"({ablation['default']:.3f}; the best variant, {best[0]}, has {best[1][0]:.3f}).")
        if len(budgets) > 1:
            first, last = budgets[0], budgets[-1]
            text = (f"- More time: {_duration(first[0])} -> {_duration(last[0])} changes DiffSeg's Dice from "
                    f"{first[1]['DiffSeg'][0][0]:.3f} to {last[1]['DiffSeg'][0][0]:.3f}")
            theirs = [(sec, m["labels only"][0][0]) for sec, m in budgets if "labels only" in m]
            if len(theirs) > 1:
                text += (f" (labels only: {theirs[0][1]:.3f} at {_duration(theirs[0][0])} -> {theirs[-1][1]:.3f} at "
                         f"{_duration(theirs[-1][0])})")
            tried.append(text + ".")
        if ablation.get("sampling") and len(ablation["sampling"]) > 1:
            first, last = ablation["sampling"][0], ablation["sampling"][-1]
            tried.append(f"- Multi-step sampling: {first[0]} -> {last[0]} steps changes Dice from {first[1][0]:.3f} "
                         f"to {last[1][0]:.3f} at {last[3] / max(first[3], 1e-9):.1f}x the prediction time.")
        if effort:
            text = ", ".join(f"{k} {v[0]:.3f}" for k, v in effort.items())
            tried.append(f"- Corrections (effort section), final Dice after the last round: {text}.")
        if tried:
            lines += ["What was tried to close the gaps (all numbers in this file):", "", *tried, ""]
        if cases or behind:
            lines.append(self.step_caveat())
        self.lines += lines

    def step_caveat(self) -> str:
        """The budgets of the accuracy runs and the measured steps of each network within them."""
        s, scale = self.settings, self.meta["scale"]
        steps = {}
        for method in ("DiffSeg", "labels only"):
            runs = [r for r in self.runs(kind="train", method=method, variant=DEFAULT_VARIANT)
                    if r["budget"] == self.budget(r["dataset"])]  # the accuracy runs
            steps[method] = np.mean([r["steps"] for r in runs]) if runs else math.nan
        three_d = any(r["dataset"] in THREE_D_DATASETS for r in self.runs(kind="train"))
        budgets = f"{s.budget_2d * scale:.3g} s per 2D run" + (
            f" and {s.budget_3d * scale:.3g} s per 3D run" if three_d and s.budget_3d != s.budget_2d else "")
        ratio = steps["labels only"] / steps["DiffSeg"] if steps["DiffSeg"] else math.nan
        text = (f"Context for the accuracy comparisons: {budgets} of wall time on one core (the CLI default is "
                "300 s). A DiffSeg run trains two networks (labelled patches only for the first quarter), makes "
                "pseudo-labels and "
                "writes the first pseudo-labels of every unlabelled image 10 s into co-training (so the GUI can show "
                "them early)")
        if not math.isnan(ratio):
            text += (f"; in these runs it made {steps['DiffSeg']:.0f} steps on average against "
                     f"{steps['labels only']:.0f} for the labels-only network ({ratio:.1f}x)")
        return text + ". The time-budget table shows what longer runs change.\n"

    def render(self, datasets: tuple[str, ...], sections: tuple[str, ...]) -> str:
        m = self.meta
        header = [f"# Benchmark results ({m['mode']} mode)", "",
                  f"Generated by `python benchmarks/suite.py {m['argv']}` on {m['date']}; wall time "
                  f"{m['wall_seconds'] / 60:.1f} min.", "",
                  f"- Machine: {m['cpu']}, {m['cores']} cores" + (", native bf16" if m.get("bf16") else ""),
                  "- Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
                  f"- Load average (1 / 5 / 15 min) at start: {' / '.join(f'{x:.2f}' for x in m['load_start'])}; "
                  f"at end: {' / '.join(f'{x:.2f}' for x in m['load_end'])} (a shared machine: other users' load "
                  "slows the runs; wall-time budgets then buy fewer steps)",
                  f"- Sections: {', '.join(sections)}; datasets: {', '.join(datasets)}"]
        for note in m.get("notes", []):
            header.append(f"- {note}")
        header += ["", "Plots: " + ", ".join(f"[{p}](plots/{p})" for p in self.plots), ""]
        return "\n".join(header + self.lines)


def write_report(settings: Settings, plan: list[Job], results: dict, meta: dict, report_path: Path,
                 datasets: tuple[str, ...], sections: tuple[str, ...]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    report = Report(settings, plan, results, meta, report_path.parent / "plots")
    summary = report.accuracy(datasets) if "accuracy" in sections else []
    ablation = report.ablations() if "ablations" in sections else {}
    effort = report.effort() if "effort" in sections else {}
    if "speed" in sections:
        report.speed()
    failures = [f"- `{key}`: {result['error'].strip().splitlines()[-1]}" for key, result in results.items()
                if "error" in result]
    if failures:
        report.lines += ["## Failed runs", "", *failures, ""]
    if summary or ablation:
        report.losses(summary, ablation, effort)
    text = report.render(datasets, sections)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(text)
    return text


# ------------------------------------------------------------------------------------------------ main
def _as_tuples(value):
    """JSON lists back to the tuples of ``Settings``."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=tuple(MODES), default="quick")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--datasets", nargs="+", help="datasets of the accuracy section (default: the mode's)")
    parser.add_argument("--seeds", nargs="+", type=int, help="override the mode's seeds (accuracy section)")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, help="raw results (results.json); default: results/ for the full mode, "
                        "quick/results/ for the quick one")
    parser.add_argument("--report", type=Path, help="the markdown report, plots in plots/ next to it; default: "
                        "RESULTS.md for the full mode, quick/RESULTS.md for the quick one (a quick run never "
                        "overwrites the full results)")
    parser.add_argument("--workers", type=int, default=2, help="training runs side by side (default 2)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every budget (a smoke test: 0.1)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    parser.add_argument("--keep-models", action="store_true", help="keep the model folders in <out>/work")
    parser.add_argument("--from-json", type=Path, help="only rewrite the report from an earlier results.json")
    args = parser.parse_args(argv)

    settings = MODES[args.mode]
    home = BENCH_DIR if args.mode == "full" else BENCH_DIR / args.mode
    args.out = args.out or home / "results"
    args.report = args.report or home / "RESULTS.md"
    if args.seeds:
        settings = replace(settings, seeds=tuple(args.seeds))
    datasets = tuple(args.datasets or settings.datasets)
    unknown = [d for d in datasets if not (args.data_root / d / "split.json").is_file()]
    if unknown:
        parser.error(f"no dataset (split.json) in {args.data_root} for: {', '.join(unknown)}")
    sections = tuple(s for s in SECTIONS if s in args.sections)
    work = args.out / "work"
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        if "settings" in saved["meta"]:  # the settings the results were measured with
            settings = Settings(**{key: _as_tuples(value) for key, value in saved["meta"]["settings"].items()})
        plan = build_plan(settings, sections, datasets, args.data_root, work, saved["meta"]["scale"])
        print(write_report(settings, plan, saved["results"], saved["meta"], args.report, datasets, sections))
        return 0
    plan = build_plan(settings, sections, datasets, args.data_root, work, args.scale)

    print(f"# {args.mode} mode: {len(plan)} jobs\n")
    print(describe_plan(plan, args.workers), flush=True)
    if args.dry_run:
        return 0
    notes = []
    if args.mode == "quick":
        skipped = [d for d in ALL_DATASETS if d not in datasets]
        if skipped:
            notes.append(f"Quick mode: accuracy on {', '.join(datasets)} only; not run: {', '.join(skipped)}"
                         + (" (3D training is slow on a CPU: left to the full mode)" if set(THREE_D_DATASETS) & set(skipped) else "") + ". `--mode full` runs them.")
        notes.append(f"Quick mode: one seed, labelled {', '.join(map(str, settings.labelled))}, "
                     f"{len(settings.variants)} ablation variants, budgets {', '.join(f'{b:g} s' for b in settings.budgets)}.")
    if args.scale != 1.0:
        notes.append(f"Budgets scaled by {args.scale:g} (a smoke test, not a measurement).")
    meta = {"mode": args.mode, "argv": " ".join(sys.argv[1:] if argv is None else argv),
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "cpu": cpu_model(), "cores": os.cpu_count(),
            "versions": versions(), "load_start": load_average(), "scale": args.scale, "notes": notes,
            "settings": asdict(settings)}
    started = time.perf_counter()
    results: dict[str, dict] = {}
    run_jobs([j for j in plan if not j.exclusive], args.workers, results, started)
    run_jobs([j for j in plan if j.exclusive], 1, results, started)
    from napari_diffseg.core.device import bf16_supported  # imports torch: only after the worker processes are gone

    meta.update(wall_seconds=time.perf_counter() - started, load_end=load_average(), bf16=bf16_supported("cpu"))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    if not args.keep_models:
        shutil.rmtree(work, ignore_errors=True)
    text = write_report(settings, plan, results, meta, args.report, datasets, sections)
    print("\n" + text)
    print(f"\nwrote {args.report}, plots in {args.report.parent / 'plots'}, raw results in {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
