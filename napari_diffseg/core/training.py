"""Training as a generator of events: stage 1 (unsupervised teacher pretraining), stage 2 (teacher-student
co-training), or the labels-only baseline; validation, threshold choice, checkpoints, pseudo-labels, resume.

Callers (the CLI, the napari worker) iterate ``train(...)``; every optimisation step yields a ``Progress`` event,
so closing the generator cancels at the next step. A cancelled or finished run leaves ``last.pt`` to resume
from and ``best.pt`` to predict with (see ``checkpoint``). The budget is wall time in seconds and/or a number of
steps (steps make runs reproducible: with a fixed seed and no time budget, two runs give identical weights).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
import csv
import io as _stringio
import json
import logging
from pathlib import Path
import shutil
import time

import numpy as np
import torch

from . import device as devices
from .checkpoint import BEST, CARD, LAST, load_checkpoint, save_checkpoint, write_model_card
from .data import PatchSampler, TrainingData, effective_patch_size
from .errors import InputError, ModelError
from .io import UNCERTAINTY_SUFFIX, atomic_write, write_mask, write_tiff_atomic
from .predict import (DEFAULT_TILE_2D, DEFAULT_TILE_3D, autocast_context, best_threshold, memory_format_for,
                      normalised_entropy, probabilities_to_mask, run, tiled_probabilities)
from .teacher import DiffusionTeacher, NetworkConfig, cotraining_loss, pretraining_loss, supervised_loss

log = logging.getLogger(__name__)

PRETRAIN, COTRAIN, SUPERVISED = "pretrain", "cotrain", "supervised"
PSEUDO_LABEL_DIR = "pseudo_labels"
LOSSES_FILE = "losses.csv"


@dataclass
class TrainConfig:
    """Settings of one training run; defaults are tuned for a 2-core CPU (see benchmarks/).

    Departures from the paper-scale settings of shared/METHOD.md, measured on dsb2018 at equal wall time:
    one pseudo-label round (K = 1) every 4th co-training step instead of K = 3 every step (a step with K = 3
    costs ~4x one without rounds on a CPU), Adam 3e-3 in co-training (1e-3 was clearly worse within minutes;
    the paper's 1e-2 has not been measured here), and labelled + unlabelled halves of one batch per network.
    """

    budget_seconds: float | None = 300.0
    max_steps: int | None = None
    labels_only: bool = False
    pretrain_fraction: float = 0.25
    rounds: int = 1
    rounds_every: int = 4
    chained_rounds: bool = False
    lambda_d: float = 1.0
    num_classes: int = 2
    base_channels: int = 16
    depth: int = 3
    patch_size: tuple[int, ...] | None = None
    batch_size: int | None = None
    lr_pretrain: float = 1e-3
    lr_cotrain: float = 3e-3
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    bf16: bool | None = None
    validate_every_seconds: float = 20.0
    checkpoint_every_seconds: float = 30.0
    first_pseudo_labels_after_seconds: float = 10.0
    pseudo_labels_every_seconds: float = 60.0
    uncertainty_draws: int = 1
    max_validation_images: int = 8

    def __post_init__(self):
        if self.budget_seconds is None and self.max_steps is None:
            raise InputError("give a time budget (seconds) or a number of steps")
        if self.budget_seconds is not None and self.budget_seconds <= 0:
            raise InputError(f"the time budget must be positive, got {self.budget_seconds}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise InputError(f"the number of steps must be positive, got {self.max_steps}")
        if not 0 <= self.pretrain_fraction < 1:
            raise InputError("pretrain_fraction must be in [0, 1)")
        if self.num_classes < 2:
            raise InputError("num_classes must be at least 2 (background + one class)")
        if self.rounds < 0 or self.rounds_every < 1:
            raise InputError("rounds must be >= 0 and rounds_every >= 1")
        if self.patch_size is not None:
            self.patch_size = tuple(int(p) for p in self.patch_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class TrainingEvent:
    """Base of everything ``train`` yields."""


@dataclass
class Progress(TrainingEvent):
    stage: str
    step: int
    fraction: float
    elapsed: float
    remaining: float
    losses: dict[str, float]


@dataclass
class CheckpointSaved(TrainingEvent):
    path: Path
    kind: str  # "last" or "best"
    metrics: dict = field(default_factory=dict)


@dataclass
class PseudoLabelsReady(TrainingEvent):
    step: int
    directory: Path
    names: list[str]
    mean_uncertainty: dict[str, float]


@dataclass
class Done(TrainingEvent):
    model_dir: Path
    metrics: dict
    cancelled: bool = False


class _Clock:
    """Budget bookkeeping: wall time (carried over on resume) and steps."""

    def __init__(self, config: TrainConfig, elapsed: float = 0.0):
        self.config = config
        self.offset = elapsed
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return self.offset + time.perf_counter() - self.start

    def fraction(self, step: int) -> float:
        parts = []
        if self.config.budget_seconds is not None:
            parts.append(self.elapsed / self.config.budget_seconds)
        if self.config.max_steps is not None:
            parts.append(step / self.config.max_steps)
        return min(1.0, max(parts))

    def remaining(self, step: int) -> float:
        fraction = self.fraction(step)
        return 0.0 if fraction <= 0 else self.elapsed * (1 - fraction) / fraction


class _Run:
    """State of one training run; ``train`` drives it."""

    def __init__(self, data: TrainingData, config: TrainConfig, out_dir: Path):
        self.data, self.config, self.out_dir = data, config, Path(out_dir)
        self.device = devices.select_device(config.device)
        self.threads = devices.configure_threads(config.threads)
        self.bf16 = devices.bf16_supported(self.device) if config.bf16 is None else bool(config.bf16)
        torch.manual_seed(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.network_config = NetworkConfig(
            spatial_dims=data.spatial_dims, image_channels=data.channels, num_classes=config.num_classes,
            base_channels=config.base_channels, depth=config.depth,
        )
        self.memory_format = memory_format_for(data.spatial_dims)
        self.teacher = DiffusionTeacher(self.network_config).to(self.device, memory_format=self.memory_format)
        self.student = (None if config.labels_only
                        else DiffusionTeacher(self.network_config).to(self.device, memory_format=self.memory_format))
        self.patch_size = effective_patch_size(config.patch_size, data, self.teacher.size_multiple)
        self.batch_size = config.batch_size or (8 if data.spatial_dims == 2 else 2)
        self.sampler = PatchSampler(data, self.patch_size, seed=config.seed)
        lr = config.lr_cotrain if config.labels_only else config.lr_pretrain
        self.teacher_optimiser = torch.optim.Adam(self.teacher.parameters(), lr=lr)
        self.student_optimiser = (
            None if self.student is None else torch.optim.Adam(self.student.mask_path.parameters(), lr=config.lr_cotrain)
        )
        self.step = 0
        self.stage = SUPERVISED if config.labels_only else PRETRAIN
        self.best_score = -1.0
        self.best_metrics: dict = {}
        self.loss_rows: list[dict] = []
        self.pseudo_label_count = 0

    # ----- checkpoints -----
    def _rng_state(self) -> dict:
        return {
            "torch": torch.get_rng_state(),
            "generator": self.generator.get_state(),
            "numpy": json.dumps(self.sampler.rng.bit_generator.state),
        }

    def save_last(self, clock: _Clock) -> Path:
        payload = {
            "config": self.config.to_dict(),
            "network": asdict(self.network_config),
            "teacher": self.teacher.state_dict(),
            "teacher_optimiser": self.teacher_optimiser.state_dict(),
            "step": self.step,
            "stage": self.stage,
            "elapsed": clock.elapsed,
            "best_score": self.best_score,
            "best_metrics": json.dumps(self.best_metrics),
            "data": json.dumps(self.data.fingerprints()),
            "rng": self._rng_state(),
        }
        if self.student is not None:
            payload["student"] = self.student.state_dict()
            payload["student_optimiser"] = self.student_optimiser.state_dict()
        path = self.out_dir / LAST
        save_checkpoint(path, payload)
        self._write_losses()
        return path

    def restore(self, payload: dict, full: bool) -> float:
        """Load weights from a last.pt payload; ``full`` also restores optimisers, step, stage, clock and RNG."""
        saved_network = payload.get("network") or {}
        differences = [f"{key} {saved_network.get(key)} vs {value}"
                       for key, value in asdict(self.network_config).items() if saved_network.get(key) != value]
        if differences:
            raise ModelError("the checkpoint was trained with other network settings or another kind of image "
                             f"(checkpoint vs now: {', '.join(differences)})")
        if full and json.loads(payload.get("data", "[]")) != self.data.fingerprints():
            raise ModelError("resume needs the same images and labels as the interrupted run, and they changed; "
                             "start a new run, or warm-start from this one")
        try:
            self.teacher.load_state_dict(payload["teacher"])
            if self.student is not None and "student" in payload:
                self.student.load_state_dict(payload["student"])
            if not full:
                return 0.0
            self.teacher_optimiser.load_state_dict(payload["teacher_optimiser"])
            if self.student is not None:
                self.student_optimiser.load_state_dict(payload["student_optimiser"])
        except (KeyError, RuntimeError, ValueError) as error:
            raise ModelError(f"the checkpoint does not fit this run ({type(error).__name__}: {error})") from None
        self.step = int(payload["step"])
        self.stage = payload["stage"]
        self.best_score = float(payload["best_score"])
        self.best_metrics = json.loads(payload["best_metrics"])
        torch.set_rng_state(payload["rng"]["torch"])
        self.generator.set_state(payload["rng"]["generator"])
        self.sampler.rng.bit_generator.state = json.loads(payload["rng"]["numpy"])
        losses_path = self.out_dir / LOSSES_FILE
        if losses_path.exists():
            self.loss_rows = list(csv.DictReader(losses_path.open()))
        return float(payload["elapsed"])

    def _write_losses(self) -> None:
        if not self.loss_rows:
            return
        leading = ["step", "stage", "elapsed"]
        columns = leading + sorted({key for row in self.loss_rows for key in row} - set(leading))
        buffer = _stringio.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.loss_rows)
        atomic_write(self.out_dir / LOSSES_FILE, lambda handle: handle.write(buffer.getvalue().encode()))

    # ----- one optimisation step -----
    def _autocast(self):
        return autocast_context(self.device, self.bf16)

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device).contiguous(memory_format=self.memory_format)

    def train_step(self, clock: _Clock) -> dict[str, float]:
        config, device = self.config, self.device
        self.teacher.train()
        if self.stage == PRETRAIN:
            images = self._to_device(self.sampler.image_batch(self.batch_size))
            with self._autocast():
                loss = pretraining_loss(self.teacher, images, self.generator)
            self.teacher_optimiser.zero_grad(set_to_none=True)
            loss.backward()
            self.teacher_optimiser.step()
            return {"reconstruction": float(loss.detach())}
        # every network sees batch_size patches per step: all labelled here, half and half in co-training
        half = max(1, self.batch_size // 2)
        labelled, labels = self.sampler.labelled_batch(self.batch_size if self.stage == SUPERVISED else half)
        labelled, labels = self._to_device(labelled), labels.to(device)
        if self.stage == SUPERVISED:
            with self._autocast():
                loss = supervised_loss(self.teacher, labelled, labels, self.generator)
            self.teacher_optimiser.zero_grad(set_to_none=True)
            loss.backward()
            self.teacher_optimiser.step()
            return {"supervised": float(loss.detach())}
        self.student.train()
        unlabelled_indices = self.data.unlabelled_indices
        unlabelled = self._to_device(self.sampler.image_batch(half, unlabelled_indices)) if unlabelled_indices else None
        fraction = clock.fraction(self.step)
        ramp = min(1.0, max(0.0, (fraction - config.pretrain_fraction) / max(1e-8, 1 - config.pretrain_fraction)))
        with self._autocast():
            losses = cotraining_loss(
                self.teacher, self.student, labelled, labels, unlabelled, ramp,
                rounds=config.rounds if self.step % config.rounds_every == 0 else 0,
                chained=config.chained_rounds, lambda_d=config.lambda_d, generator=self.generator,
            )
        self.teacher_optimiser.zero_grad(set_to_none=True)
        self.student_optimiser.zero_grad(set_to_none=True)
        losses.total.backward()
        self.teacher_optimiser.step()
        self.student_optimiser.step()
        return {**losses.parts, "unlabelled_weight": ramp}

    def enter_cotraining(self) -> None:
        self.stage = COTRAIN
        for group in self.teacher_optimiser.param_groups:
            group["lr"] = self.config.lr_cotrain

    # ----- validation, pseudo-labels -----
    @property
    def tile(self) -> tuple[int, ...]:
        return DEFAULT_TILE_2D if self.data.spatial_dims == 2 else DEFAULT_TILE_3D

    def twins(self) -> dict[str, DiffusionTeacher]:
        return {"teacher": self.teacher} if self.student is None else {"teacher": self.teacher, "student": self.student}

    def _probabilities(self, networks, image, draws=0):
        # networks train in the same channels-last layout that tiled_probabilities uses, so validating or making
        # pseudo-labels mid-run (on a wall-clock schedule) leaves the numerics of a step-budget run unchanged
        return run(tiled_probabilities(networks, image, self.tile, draws=draws, device=self.device,
                                       bf16=self.bf16, seed=self.config.seed))

    def validate(self) -> dict:
        """Threshold sweep and pooled Dice of each twin on the labelled images (the only ground truth there is)."""
        indices = self.data.labelled_indices[: self.config.max_validation_images]
        targets = [self.data.labels[i] for i in indices]
        metrics = {}
        for name, network in self.twins().items():
            foreground = [1 - self._probabilities([network], self.data.images[i]).primary[0] for i in indices]
            threshold, score = best_threshold(foreground, targets)
            metrics[name] = {"threshold": threshold, "dice": score}
        return metrics

    def maybe_save_best(self, metrics: dict, clock: _Clock) -> CheckpointSaved | None:
        twin = max(metrics, key=lambda name: metrics[name]["dice"])
        score = metrics[twin]["dice"]
        if score < self.best_score:
            return None
        self.best_score = score
        self.best_metrics = {"selected_twin": twin, "validation": metrics, "step": self.step,
                             "elapsed": round(clock.elapsed, 1)}
        network = self.twins()[twin]
        path = self.out_dir / BEST
        save_checkpoint(path, {
            "network": asdict(self.network_config),
            "mask_path": network.mask_path.state_dict(),
            "threshold": metrics[twin]["threshold"],
            "twin": twin,
        })
        self.write_card(clock)
        return CheckpointSaved(path, "best", dict(self.best_metrics))

    def write_card(self, clock: _Clock) -> None:
        selected = self.best_metrics.get("selected_twin")
        write_model_card(self.out_dir, {
            "format": "napari-diffseg model card",
            "method": "labels-only baseline" if self.config.labels_only
            else "diffusion teacher + co-trained student (arXiv 2504.01547)",
            "config": self.config.to_dict(),
            "network": asdict(self.network_config),
            "patch_size": list(self.patch_size),
            "batch_size": self.batch_size,
            "data": self.data.fingerprints(),
            "threshold": self.best_metrics.get("validation", {}).get(selected, {}).get("threshold"),
            "selected_twin": selected,
            "metrics": self.best_metrics,
            "validation_note": "threshold and twin chosen on the labelled (training) images",
            "training": {"steps": self.step, "stage": self.stage, "elapsed_seconds": round(clock.elapsed, 1)},
            "environment": {"torch": torch.__version__, "device": str(self.device), "threads": self.threads,
                            "bf16": self.bf16},
        })

    def pseudo_labels(self) -> PseudoLabelsReady:
        """Teacher masks (with its threshold) and ensemble uncertainty for every unlabelled image."""
        directory = self.out_dir / PSEUDO_LABEL_DIR
        threshold = self.best_metrics.get("validation", {}).get("teacher", {}).get("threshold", 0.5)
        networks = list(self.twins().values())
        names, uncertainty_means = [], {}
        for index in self.data.unlabelled_indices:
            name = self.data.names[index]
            probs = self._probabilities(networks, self.data.images[index], draws=self.config.uncertainty_draws)
            uncertainty = normalised_entropy(probs.ensemble)
            write_mask(directory / f"{name}.tif", probabilities_to_mask(probs.primary, threshold))
            write_tiff_atomic(directory / f"{name}{UNCERTAINTY_SUFFIX}.tif", uncertainty)
            names.append(name)
            uncertainty_means[name] = float(uncertainty.mean())
        self.pseudo_label_count += 1
        return PseudoLabelsReady(self.step, directory, names, uncertainty_means)


def train(
    data: TrainingData,
    config: TrainConfig,
    out_dir: Path,
    resume: bool = False,
    warm_start: Path | None = None,
) -> Iterator[TrainingEvent]:
    """Run (or resume) training, yielding events; close the generator to cancel (a last.pt is still written).

    ``warm_start``: a model folder of an earlier round whose last.pt initialises the twins; pretraining is then
    skipped (the teacher already learned from all images).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = _Run(data, config, out_dir)
    elapsed = 0.0
    if resume:
        elapsed = state.restore(load_checkpoint(out_dir / LAST), full=True)
        log.info("resuming at step %d (%s), %.0f s already spent", state.step, state.stage, elapsed)
    else:
        for stale in (BEST, CARD, LOSSES_FILE, PSEUDO_LABEL_DIR):  # a new run leaves no older model beside it
            path = out_dir / stale
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        if warm_start is not None:
            state.restore(load_checkpoint(Path(warm_start) / LAST), full=False)
            if not config.labels_only:
                state.enter_cotraining()
    clock = _Clock(config, elapsed)
    last_validation = last_checkpoint = clock.elapsed
    cotrain_started = None
    last_pseudo = None
    cancelled = True
    try:
        while True:
            fraction = clock.fraction(state.step)
            if state.stage == PRETRAIN and fraction >= config.pretrain_fraction:
                state.enter_cotraining()
            if fraction >= 1.0:
                break
            losses = state.train_step(clock)
            state.step += 1
            state.loss_rows.append({"step": state.step, "stage": state.stage, "elapsed": round(clock.elapsed, 2), **losses})
            now = clock.elapsed
            if state.stage != PRETRAIN:
                cotrain_started = now if cotrain_started is None else cotrain_started
                if now - last_validation >= config.validate_every_seconds:
                    last_validation = now
                    saved = state.maybe_save_best(state.validate(), clock)
                    if saved:
                        yield saved
                due = (last_pseudo is None and now - cotrain_started >= config.first_pseudo_labels_after_seconds) or (
                    last_pseudo is not None and now - last_pseudo >= config.pseudo_labels_every_seconds)
                if due and data.unlabelled_indices and state.best_metrics:
                    yield state.pseudo_labels()
                    last_pseudo = clock.elapsed
            if now - last_checkpoint >= config.checkpoint_every_seconds:
                last_checkpoint = now
                yield CheckpointSaved(state.save_last(clock), "last")
            yield Progress(state.stage, state.step, clock.fraction(state.step), clock.elapsed,
                           clock.remaining(state.step), losses)
        saved = state.maybe_save_best(state.validate(), clock)
        if saved:
            yield saved
        state.write_card(clock)
        if data.unlabelled_indices:
            yield state.pseudo_labels()
        last = state.save_last(clock)
        cancelled = False  # only now: closing at an earlier yield of this final phase must still leave a last.pt
        yield CheckpointSaved(last, "last")
        yield Done(out_dir, dict(state.best_metrics))
    finally:
        if cancelled:
            state.save_last(clock)
            if not (out_dir / BEST).exists() and state.stage != PRETRAIN:
                state.maybe_save_best(state.validate(), clock)
