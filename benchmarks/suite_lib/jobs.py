"""The method's jobs, each run in a worker process: an accuracy or ablation training run, the simulated annotator
(through a Project and core.project.rounds), and the speed runs; ``run_job`` dispatches by kind."""

from __future__ import annotations

import math
from pathlib import Path
import shutil
import time

import numpy as np

from _common import load_split, mosaic, score_model, time_prediction, train_and_score, train_model
from suite_lib.baselines import job_otsu, job_random_forest
from suite_lib.plan import EffortParams, Params, SpeedPredictParams, SpeedTrainParams, TrainParams


def job_train(params: TrainParams, _dependency: dict | None) -> dict:
    return train_and_score(params.root, params.n, params.labels_only, params.budget, params.seed, params.overrides,
                           tuple(params.sampling_steps))


def _train_project_round(project, config) -> dict:
    """One round of ``project`` through core.project.rounds (what *Next round* and ``diffseg project train`` run)."""
    from napari_diffseg.core.project import rounds
    from napari_diffseg.core.method.events import Progress

    steps, began = 0, time.perf_counter()
    for event in rounds.train_round(project, config, warm_start=True):
        if isinstance(event, Progress):
            steps = event.step
    return {"steps": steps, "train_seconds": time.perf_counter() - began}


def _effort_config(params: EffortParams):
    from napari_diffseg.core.method.config import TrainConfig

    return TrainConfig(budget_seconds=params.budget, seed=params.seed, threads=1)


def job_effort_start(params: EffortParams, _dependency: dict | None) -> dict:
    """The project every strategy of one seed starts from: the train split in a Project (the product's store), the
    first ``start_n`` images labelled, round 1 trained through core.project.rounds and scored on the test split."""
    from napari_diffseg.core.project.store import Project

    train_pairs, test_pairs = load_split(Path(params.root))
    project = Project.create(Path(params.work_dir) / "project")
    for image, _, name in train_pairs:
        project.add_image(image, name=name)
    for _, mask, name in train_pairs[: params.start_n]:
        project.save_label(name, mask)
    trained = _train_project_round(project, _effort_config(params))
    scores = score_model(project.latest_model_dir(), test_pairs)
    return {"project": str(project.folder), "mean_dice": scores["mean_dice"], "mean_hd95": scores["mean_hd95"],
            **trained}


def job_effort(params: EffortParams, start: dict) -> dict:
    """A simulated annotator on a copy of the start project, through the product's own path: each round it takes
    ``per_round`` images of the review queue (the most uncertain first, as the Review panel orders them), or random
    ones, or none; corrects their pseudo-labels to the ground truth and accepts them (Project.accept); then a Next
    round trains warm-started (Project.next_round + core.project.rounds.train_round), scored on the test split."""
    from napari_diffseg.core.project.store import Project

    train_pairs, test_pairs = load_split(Path(params.root))
    truth = {name: mask for _, mask, name in train_pairs}
    folder = Path(params.work_dir) / "project"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(start["project"], folder)
    project = Project.open(folder)
    config = _effort_config(params)
    rng = np.random.default_rng(params.seed)
    rows = [{"round": 0, "corrected": 0, "labelled": len(project.labelled_names()), "mean_dice": start["mean_dice"],
             "mean_hd95": start["mean_hd95"], "seconds": start["train_seconds"], "steps": start["steps"],
             "chosen": []}]
    for round_ in range(1, params.rounds + 1):
        began = time.perf_counter()
        queue = project.review_queue()
        if params.strategy == "uncertainty":
            chosen = queue[: params.per_round]
        elif params.strategy == "random":
            chosen = [str(n) for n in rng.choice(queue, min(params.per_round, len(queue)), replace=False)]
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


def job_speed_train(params: SpeedTrainParams, _dependency: dict | None) -> dict:
    """Seconds per pretraining and per co-training step (batch 8) with the default thread count."""
    from napari_diffseg.core.device import configure_threads
    from napari_diffseg.core.method.training import Progress, TrainConfig

    train_pairs, _ = load_split(Path(params.root))
    patch = params.patch
    config = TrainConfig(budget_seconds=None, max_steps=params.steps, base_channels=params.width,
                         patch_size=(patch, patch), bf16=params.bf16, pretrain_fraction=0.25,
                         supervised_warmup=0.0, checkpoint_every_seconds=1e9,
                         first_pseudo_labels_after_seconds=1e9)  # both stages timed: 25 % pretraining, no warm-up
    elapsed: dict[str, list[float]] = {}

    def collect(event) -> None:
        if isinstance(event, Progress):
            elapsed.setdefault(event.stage, []).append(event.elapsed)

    train_model(train_pairs[:3], [0, 1], config, Path(params.keep_dir), on_event=collect)
    deltas = {stage: np.diff(values) for stage, values in elapsed.items()}
    cotrain = deltas.get("cotrain", np.array([]))[1:]  # the first co-training step includes kernel warm-up
    pretrain = deltas.get("pretrain", np.array([]))
    step = float(cotrain.mean()) if len(cotrain) else math.nan
    return {"pretrain_step": float(pretrain.mean()) if len(pretrain) else math.nan, "cotrain_step": step,
            "pretrain_intervals": len(pretrain), "cotrain_intervals": len(cotrain),
            "patch_mp_per_s": 8 * patch * patch / 1e6 / step, "threads": configure_threads(None),
            "model_dir": params.keep_dir}


def job_speed_predict(params: SpeedPredictParams, trained: dict) -> dict:
    """Prediction throughput on a large grey mosaic by tile size and precision (default thread count)."""
    from napari_diffseg.core.device import bf16_supported, configure_threads

    threads = configure_threads(None)
    train_pairs, _ = load_split(Path(params.root))
    image = mosaic([pair[0] for pair in train_pairs], params.size)
    rows = []
    for tile in params.tiles:
        for bf16 in ([False, True] if bf16_supported("cpu") else [False]):
            timing = time_prediction(Path(trained["model_dir"]), image, bf16, params.repeats, tile=(tile, tile))
            rows.append({"tile": tile, "bf16": bf16, "threads": threads, **timing})
    return {"rows": rows}


JOB_FUNCTIONS = {"train": job_train, "rf": job_random_forest, "otsu": job_otsu, "effort_start": job_effort_start,
                 "effort": job_effort,
                 "speed_train": job_speed_train, "speed_predict": job_speed_predict}


def run_job(kind: str, params: Params, dependency: dict | None) -> dict:
    began = time.perf_counter()
    result = JOB_FUNCTIONS[kind](params, dependency)
    result["job_seconds"] = time.perf_counter() - began
    return result

