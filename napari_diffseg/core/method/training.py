"""Training as a generator of events: stage 1 (unsupervised teacher pretraining), stage 2 (teacher-student
co-training), or the labels-only baseline; working scale, learning-rate schedule, checkpoints, pseudo-labels, resume.

Callers (the CLI, the napari worker) iterate ``train(...)``; every optimisation step yields a ``Progress`` event,
so closing the generator cancels at the next step. A cancelled or finished run leaves ``last.pt`` to resume
from and ``best.pt`` to predict with (see ``checkpoint``). The budget is optimisation time in seconds and/or a
number of steps (steps make runs reproducible: with a fixed seed and no time budget, two runs give identical
weights). Pseudo-label passes, checkpoint writes and the final model write are timed apart and do not eat the
budget (``Clock.paused``); the model card reports both times.

Model selection does not look at the labelled images (with 1-5 of them, "best on the training images" is the most
overfit model): the learning rate anneals to zero at the end of the budget (poly schedule, as nnU-Net), and the
final weights of the kept twin (``keep_twin``) are saved with a fixed threshold.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, replace
import contextlib
import csv
import io as _stringio
import logging
from pathlib import Path
import shutil
import time
from typing import Protocol

import numpy as np
import torch

from .. import device as devices

from . import distributed
from .config import BudgetClock, LrSchedule, Student, Targets, TargetsFrom, TrainConfig, Twin, WarmupTwins
from .events import (CheckpointKind, CheckpointSaved, Done, FitReport, PlanChosen, Progress,  # noqa: F401
                     PseudoLabelsReady, Stage, StageProgress, TrainingEvent)
from .checkpoint import BEST, LAST, ModelCheckpoint, RunCheckpoint, write_model_card
from .planner import Plan, plan_training
from .consistency import WeightAverage, confident_targets, masked_segmentation_loss, paste_labelled, strong_view
from ..data.training_set import (PatchSampler, SliceSampler, TrainingData, augment_intensity, cutmix_boxes,
                                 effective_patch_size, fit_patch)
from ..errors import InputError, ModelError
from ..data.io import UNCERTAINTY_SUFFIX, atomic_write, write_mask, write_tiff_atomic
from ..data.metrics import dice as dice_score
from ..device import autocast_context, memory_format_for
from ..prediction.predict import (DEFAULT_TILE_2D, DEFAULT_TILE_3D, disagreement, normalised_entropy, probabilities_to_mask,
                      predict_probabilities, run_to_completion)
from ..data.scale import resize_image, resize_labels, resize_probabilities, scaled_shape
from .teacher import (DiffusionTwin, NetworkConfig, UnlabelledTargets, cotraining_loss, pretraining_loss,
                      segmentation_loss, supervised_loss, swap_in_pairs)

log = logging.getLogger(__name__)

PRETRAIN, COTRAIN, SUPERVISED = Stage.PRETRAIN, Stage.COTRAIN, Stage.SUPERVISED
PSEUDO_LABEL_DIR = "pseudo_labels"
PSEUDO_LABEL_STAGE, SAVING_STAGE = Stage.PSEUDO_LABELS, Stage.SAVING  # StageProgress stages
POLY_EXPONENT = 0.9
LOSSES_FILE = "losses.csv"


class _Clock:
    """Budget bookkeeping: optimisation time (carried over on resume), steps, and the time spent on everything
    else (pseudo-labels, checkpoints), which ``paused`` keeps out of the budget."""

    def __init__(self, config: TrainConfig, elapsed: float = 0.0, overhead: float = 0.0):
        self.config = config
        self.offset = elapsed
        self.overhead = overhead
        self.now = time.process_time if config.schedule.budget_clock == BudgetClock.CPU else time.perf_counter
        self.start = self.now()
        self._paused_since: float | None = None
        self._paused_total = 0.0

    @property
    def elapsed(self) -> float:
        """Seconds of optimisation (wall time minus paused time)."""
        now = self._paused_since if self._paused_since is not None else self.now()
        return self.offset + now - self.start - self._paused_total

    @contextlib.contextmanager
    def paused(self):
        """Time inside this block counts as overhead, not budget (re-entrant)."""
        if self._paused_since is not None:
            yield
            return
        self._paused_since = self.now()
        try:
            yield
        finally:
            spent = self.now() - self._paused_since
            self._paused_total += spent
            self.overhead += spent
            self._paused_since = None

    def fraction(self, step: int) -> float:
        parts = []
        if self.config.schedule.budget_seconds is not None:
            parts.append(self.elapsed / self.config.schedule.budget_seconds)
        if self.config.schedule.max_steps is not None:
            parts.append(step / self.config.schedule.max_steps)
        return min(1.0, max(parts))

    def remaining(self, step: int) -> float:
        fraction = self.fraction(step)
        return 0.0 if fraction <= 0 else self.elapsed * (1 - fraction) / fraction


class PseudoLabelSink(Protocol):
    """Where a pass puts each unlabelled image's pseudo-label as it is made (``directory``: where they end up)."""

    directory: Path

    def write(self, name: str, mask: np.ndarray, uncertainty: np.ndarray, score: float, step: int) -> None: ...


class FolderSink:
    """A folder training's pseudo-labels: ``<name>.tif`` (uint8; in objects mode the objects, uint16 / uint32)
    and ``<name>_uncertainty.tif`` (float32)."""

    def __init__(self, directory: Path, objects: bool = False):
        self.directory = Path(directory)
        self.objects = objects

    def write(self, name: str, mask: np.ndarray, uncertainty: np.ndarray, score: float, step: int) -> None:
        if self.objects:  # the three classes decoded into objects (core/objects), as predict writes them
            from ..objects.decode import classes_to_instances
            from ..objects.files import write_instances

            write_instances(self.directory / f"{name}.tif", classes_to_instances(mask))
        else:
            write_mask(self.directory / f"{name}.tif", mask)
        write_tiff_atomic(self.directory / f"{name}{UNCERTAINTY_SUFFIX}.tif", uncertainty)


class Every:
    """A wall-clock schedule on the training clock: due ``first_after`` seconds after ``start`` (default: one
    period), then one period after each ``done``. Not due before ``start`` or ``done`` is called."""

    def __init__(self, seconds: float, first_after: float | None = None):
        self.seconds = seconds
        self.first_after = seconds if first_after is None else first_after
        self.next: float | None = None

    @property
    def started(self) -> bool:
        return self.next is not None

    def start(self, now: float) -> None:
        self.next = now + self.first_after

    def done(self, now: float) -> None:
        self.next = now + self.seconds

    def due(self, now: float) -> bool:
        return self.next is not None and now >= self.next


def scaled_training_data(data: TrainingData, scale: float | tuple[float, ...]) -> TrainingData:
    """``data`` resampled to the working scale, one factor or one per axis (images by area averaging, labels by
    majority of the one-hot)."""
    if np.all(np.asarray(scale) == 1.0):
        return data
    images = [resize_image(image, scaled_shape(image.shape[1:], scale)) for image in data.images]
    labels = {index: resize_labels(label, images[index].shape[1:], data.num_classes)
              for index, label in data.labels.items()}
    return TrainingData(images, labels, list(data.names), data.num_classes, data.require_labels, data.spacing)


def sliced_training_data(data: TrainingData, axis: int) -> TrainingData:
    """``data`` with spatial ``axis`` moved first (views, no copy): what ``SliceSampler`` draws slices from."""
    if axis == 0:
        return data
    return TrainingData([np.moveaxis(image, 1 + axis, 1) for image in data.images],
                        {index: np.moveaxis(label, axis, 0) for index, label in data.labels.items()},
                        list(data.names), data.num_classes, data.require_labels)


def poly_factor(progress: float) -> float:
    """nnU-Net's poly learning-rate factor (1 - progress) ** 0.9, progress in [0, 1] of the stage."""
    return max(0.0, 1.0 - min(1.0, max(0.0, progress))) ** POLY_EXPONENT


class TrainingRun:
    """State of one training run; ``train`` drives it."""

    def __init__(self, data: TrainingData, config: TrainConfig, out_dir: Path, scale: float | None = None,
                 sink: PseudoLabelSink | None = None, ranks: distributed.Ranks | None = None,
                 plan: Plan | None = None):
        self.data, self.config, self.out_dir = data, config, Path(out_dir)
        self.ranks = ranks  # data-parallel ranks (torchrun), None in a single process
        self.main = ranks is None or ranks.main  # the process that writes files and keeps the clock
        self.sink = sink if sink is not None else FolderSink(self.out_dir / PSEUDO_LABEL_DIR,
                                                             objects=bool(getattr(data, "objects", None)))
        self.device = devices.select_device(config.runtime.device)
        devices.prepare_for_fixed_shapes(self.device)
        self.threads = torch.get_num_threads()  # set by the entry point (CLI, napari worker)
        self.bf16 = devices.bf16_supported(self.device) if config.runtime.bf16 is None else bool(config.runtime.bf16)
        # fp16 with a gradient scaler where bf16 is missing (older CUDA GPUs); the scaler is a no-op otherwise
        self.fp16 = not self.bf16 and devices.fp16_training(self.device, config.runtime.bf16)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.fp16)
        self.generator = torch.Generator().manual_seed(self._stream_seed())
        if scale is None:
            scale = config.schedule.working_scale
        # core/method/planner.py: layout (2D slices or 3D patches), working scale per axis, patch and batch
        device_info = devices.device_info(self.device, self.threads)
        if plan is None and ranks is not None and device_info.free_memory is not None:  # one plan on every rank
            device_info = replace(device_info, free_memory=int(distributed.rank0_value(device_info.free_memory,
                                                                                     self.device)))
        self.plan = plan or plan_training(
            [image.shape[1:] for image in data.images], [data.labels[i] for i in data.labelled_indices],
            spacing=data.spacing, device=device_info, layout=config.network.layout,
            patch_size=config.schedule.patch_size, batch_size=config.schedule.batch_size, working_scale=scale,
            base_channels=config.network.base_channels, depth=config.network.depth)
        self.network_config = NetworkConfig(
            spatial_dims=self.plan.network_dims, image_channels=data.channels, num_classes=config.network.num_classes,
            base_channels=config.network.base_channels, depth=config.network.depth,
        )
        self.scale = self.plan.scale
        self.scaled = scaled_training_data(data, self.plan.working_scale)
        self.memory_format = memory_format_for(self.plan.network_dims)
        # torch's own random stream of this run (initial weights, dropout), swapped in around each use so that the
        # process's stream (a test, the napari session) is left alone and the run is reproducible from its seed
        self.rng_state = torch.Generator().manual_seed(config.runtime.seed).get_state()
        with self.own_rng():
            self.teacher = DiffusionTwin(self.network_config).to(self.device, memory_format=self.memory_format)
            student_config = replace(self.network_config,
                                     base_channels=config.network.student_channels or self.network_config.base_channels)
            self.student = (None if config.method.labels_only or config.method.student == Student.AVERAGE
                            else DiffusionTwin(student_config).to(self.device, memory_format=self.memory_format))
        self.batch_size = self.plan.batch_size
        if self.plan.slice_axis is None:
            self.patch_size = effective_patch_size(self.plan.patch_size, self.scaled, self.teacher.size_multiple)
            self.sampler = PatchSampler(self.scaled, self.patch_size, seed=self._stream_seed())
        else:  # a 2D network on slices across the plan's axis
            sliced = sliced_training_data(self.scaled, self.plan.slice_axis)
            largest = np.max([image.shape[2:] for image in sliced.images], axis=0)
            self.patch_size = fit_patch(self.plan.patch_size, largest, self.teacher.size_multiple)
            self.sampler = SliceSampler(sliced, self.patch_size, seed=self._stream_seed())
        self.plan = replace(self.plan, patch_size=self.patch_size)  # fitted to the images: what the network sees
        lr = config.schedule.lr_cotrain if config.method.labels_only else config.schedule.lr_pretrain
        self.teacher_optimiser = torch.optim.Adam(self.teacher.parameters(), lr=lr)
        self.student_optimiser = (None if self.student is None
                                  else torch.optim.Adam(self.student.mask_path.parameters(), lr=config.schedule.lr_cotrain))
        # running weight averages of the twins, the source of the unlabelled targets (targets "average")
        self.averages: dict[str, WeightAverage] = {}
        if self.student is not None and config.method.targets == Targets.AVERAGE:
            self.averages = {"teacher": WeightAverage(self.teacher, config.method.average_decay),
                             "student": WeightAverage(self.student, config.method.average_decay)}
        elif not config.method.labels_only and config.method.student == Student.AVERAGE:
            self.averages = {"teacher": WeightAverage(self.teacher, config.method.average_decay)}
        self.step = 0
        # "copy": the student starts as a copy of the teacher's mask pathway at the end of the warm-up
        self.student_pending_copy = self.student is not None and config.method.warmup_twins == WarmupTwins.COPY
        self.stage = SUPERVISED if config.method.labels_only else PRETRAIN
        self.stage_start = 0.0  # budget fraction at which the current stage began (for the schedules)
        self.fit: FitReport | None = None  # of the last best.pt written
        self.loss_rows: list[dict] = []
        self.pseudo_label_count = 0

    def _stream_seed(self, step: int = 0) -> int:
        """Seed of this rank's patches, augmentations and noise: the run's seed on rank 0 (and in a single
        process), another stream on every other rank (after a resume, also another one than before it)."""
        if self.ranks is None or self.ranks.main:
            return self.config.runtime.seed
        return self.config.runtime.seed + 7919 * self.ranks.rank + 104729 * step

    def join_ranks(self, resumed: bool) -> None:
        """Start every rank from rank 0's weights; after a resume, give the other ranks fresh random streams (the
        restored ones are rank 0's)."""
        if self.ranks is None:
            return
        distributed.broadcast_weights([self.teacher, self.student])
        if resumed and not self.ranks.main:
            self.generator.manual_seed(self._stream_seed(self.step))
            self.sampler.rng = np.random.default_rng(self._stream_seed(self.step))

    def shared_fraction(self, clock: _Clock) -> float:
        """The budget fraction of rank 0's clock, on every rank (the clock alone in a single process)."""
        fraction = clock.fraction(self.step)
        return fraction if self.ranks is None else distributed.rank0_value(fraction, self.device)

    def _optimise(self, loss: torch.Tensor, optimisers: list, networks: list) -> None:
        """Backward pass, gradients averaged over the ranks (data-parallel runs), optimiser steps."""
        for optimiser in optimisers:
            optimiser.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # fp16: the loss scaled up so that small gradients do not vanish
        if self.ranks is not None:
            distributed.average_gradients(networks, self.ranks.world)  # every rank scales by the same factor
        for optimiser in optimisers:
            self.scaler.step(optimiser)  # fp16: unscaled, and skipped when a gradient overflowed
        self.scaler.update()

    @contextlib.contextmanager
    def own_rng(self) -> Iterator[None]:
        """Make this run's random stream torch's default one inside the block (CPU; dropout on a GPU draws from
        the device's stream, which is not swapped: GPU runs are not bit-reproducible anyway)."""
        outside = torch.get_rng_state()
        torch.set_rng_state(self.rng_state)
        try:
            yield
        finally:
            self.rng_state = torch.get_rng_state()
            torch.set_rng_state(outside)

    # ----- checkpoints -----
    def save_last(self, clock: _Clock) -> Path:
        path = self.out_dir / LAST
        RunCheckpoint(
            config=self.config.to_dict(), network=asdict(self.network_config), working_scale=self.scale,
            plan=self.plan.to_dict(),
            teacher=self.teacher.state_dict(), teacher_optimiser=self.teacher_optimiser.state_dict(), step=self.step,
            stage=str(self.stage), stage_start=self.stage_start, student_pending_copy=self.student_pending_copy,
            elapsed=clock.elapsed, overhead=clock.overhead, data=self.data.fingerprints(),
            rng={"torch": self.rng_state, "generator": self.generator.get_state(),
                 "numpy": self.sampler.rng.bit_generator.state},
            student=None if self.student is None else self.student.state_dict(),
            student_optimiser=None if self.student is None else self.student_optimiser.state_dict(),
        ).save(path)
        self._write_losses()
        return path

    def restore(self, saved: RunCheckpoint, full: bool) -> tuple[float, float]:
        """Load weights from a last.pt; ``full`` also restores optimisers, step, stage, clock and RNG.
        Returns the (optimisation, overhead) seconds already spent (zeros for a warm start)."""
        saved_network = saved.network or {}
        differences = [f"{key} {saved_network.get(key)} vs {value}"
                       for key, value in asdict(self.network_config).items() if saved_network.get(key) != value]
        if differences:
            raise ModelError("the checkpoint was trained with other network settings or another kind of image "
                             f"(checkpoint vs now: {', '.join(differences)})")
        if full and saved.data != self.data.fingerprints():
            # e.g. masks accepted while the run was stopped: go on with them, keeping the step and the schedule
            log.warning("the images or labels changed since the interrupted run; it continues with the current "
                        "ones (step, schedule and optimisers kept)")
        try:
            self.teacher.load_state_dict(saved.teacher)
            if self.student is not None and saved.student is not None:
                self.student.load_state_dict(saved.student)
            if not full:
                if saved.student is not None and not saved.student_pending_copy:
                    self.student_pending_copy = False  # a warm start from a trained round brings both twins
                # from a teacher pretrained without labels, or from a round stopped before its student was made,
                # the student still starts as warmup_twins says (with "copy": the teacher trains alone through the
                # warm-up, then the student becomes its copy)
                return 0.0, 0.0
            self.teacher_optimiser.load_state_dict(saved.teacher_optimiser)
            if self.student is not None:
                self.student_optimiser.load_state_dict(saved.student_optimiser)
            self.step = int(saved.step)
            self.stage = Stage(saved.stage)
            self.rng_state = saved.rng["torch"]
            self.generator.set_state(saved.rng["generator"])
            self.sampler.rng.bit_generator.state = saved.rng["numpy"]
        except (KeyError, RuntimeError, TypeError, ValueError) as error:
            raise ModelError(f"the checkpoint does not fit this run ({type(error).__name__}: {error})") from None
        self.stage_start = float(saved.stage_start)
        self.student_pending_copy = bool(saved.student_pending_copy)
        losses_path = self.out_dir / LOSSES_FILE
        if losses_path.exists():
            self.loss_rows = list(csv.DictReader(losses_path.open()))
        return float(saved.elapsed), float(saved.overhead)

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
        return autocast_context(self.device, self.bf16 or self.fp16, torch.float16 if self.fp16 else torch.bfloat16)

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        return devices.to_device(images, self.device).contiguous(memory_format=self.memory_format)

    def _augmented(self, images: torch.Tensor) -> torch.Tensor:
        return self._to_device(augment_intensity(images, self.generator, self.config.schedule.augment))

    def stage_progress(self, fraction: float) -> float:
        """How far the current stage has come, in [0, 1] (co-training and labels-only run to the budget's end)."""
        end = self.config.method.pretrain_fraction if self.stage == PRETRAIN else 1.0
        return min(1.0, max(0.0, (fraction - self.stage_start) / max(1e-8, end - self.stage_start)))

    def unlabelled_weight(self, progress: float) -> float:
        """lambda_u at this point of co-training: 0 through the supervised warm-up, then a linear ramp to 1 over
        ``unlabelled_ramp`` of the rest."""
        warmup, ramp = self.config.method.supervised_warmup, self.config.method.unlabelled_ramp
        if progress < warmup:
            return 0.0
        return min(1.0, (progress - warmup) / ((1 - warmup) * ramp))

    def set_learning_rates(self, fraction: float) -> None:
        """Poly schedule within co-training / labels-only training (stage 1 keeps its constant rate)."""
        if self.stage == PRETRAIN:
            return
        poly = self.config.schedule.lr_schedule == LrSchedule.POLY
        factor = poly_factor(self.stage_progress(fraction)) if poly else 1.0
        for optimiser in (self.teacher_optimiser, self.student_optimiser):
            if optimiser is not None:
                for group in optimiser.param_groups:
                    group["lr"] = self.config.schedule.lr_cotrain * factor

    def train_step(self, fraction: float) -> dict[str, float]:
        """One optimisation step of the current stage at budget ``fraction``; returns its losses."""
        self.set_learning_rates(fraction)
        self.teacher.train()
        if self.stage == PRETRAIN:
            return self._pretraining_step()
        # every network sees batch_size patches per step: all labelled in labels-only training and in the supervised
        # warm-up of co-training (no unlabelled patch while its weight is 0), half and half afterwards
        ramp = self.unlabelled_weight(self.stage_progress(fraction))
        unlabelled_indices = self.scaled.unlabelled_indices if ramp > 0 else []
        half = max(1, self.batch_size // 2)
        labelled, labels = self.sampler.labelled_batch(half if unlabelled_indices and self.stage == COTRAIN
                                                        else self.batch_size)
        labels = devices.to_device(labels, self.device)
        if self.stage == SUPERVISED or (self.student_pending_copy and not unlabelled_indices):
            return self._supervised_step(labelled, labels)
        if self.config.method.student == Student.AVERAGE:
            return (self._mean_teacher_step(labelled, labels, unlabelled_indices, half, ramp) if unlabelled_indices
                    else self._supervised_step(labelled, labels))
        if self.student_pending_copy:
            self._start_student_as_copy(fraction)
        return self._cotraining_step(labelled, labels, unlabelled_indices, half, ramp)

    def _pretraining_step(self) -> dict[str, float]:
        """Stage 1: the teacher reconstructs noise-corrupted images (cycle consistency), no label."""
        images = self._to_device(self.sampler.image_batch(self.batch_size))
        with self._autocast():
            loss = pretraining_loss(self.teacher, images, self.generator)
        self._optimise(loss, [self.teacher_optimiser], [self.teacher])
        return {"reconstruction": float(loss.detach())}

    def _supervised_step(self, labelled: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Labels-only training, and the supervised warm-up of co-training: the teacher on labelled patches."""
        with self._autocast():
            loss = supervised_loss(self.teacher, self._augmented(labelled), labels, self.generator,
                                   self.config.method.loss)
        self._optimise(loss, [self.teacher_optimiser], [self.teacher])
        if self.averages:
            self.averages["teacher"].update(self.teacher)
        return {"supervised": float(loss.detach())}

    def _start_student_as_copy(self, fraction: float) -> None:
        """End of a ``warmup_twins="copy"`` warm-up: the student starts as the teacher's copy, with a fresh optimiser."""
        self.student.mask_path.load_state_dict(self.teacher.mask_path.state_dict())
        self.student_optimiser = torch.optim.Adam(self.student.mask_path.parameters(),
                                                  lr=self.config.schedule.lr_cotrain)
        self.set_learning_rates(fraction)
        self.student_pending_copy = False
        if self.averages:
            self.averages["student"].reset(self.student)

    def _cotraining_step(self, labelled: torch.Tensor, labels: torch.Tensor, unlabelled_indices: list[int],
                         half: int, ramp: float) -> dict[str, float]:
        """Stage 2: teacher and student on labelled patches and, once the unlabelled weight ``ramp`` is above 0,
        on unlabelled ones through cross pseudo supervision and the teacher's pseudo-label rounds."""
        method = self.config.method
        self.student.train()
        if unlabelled_indices and self.averages:
            return self._weak_to_strong_step(labelled, labels, unlabelled_indices, half, ramp)
        patches = labelled
        if unlabelled_indices:
            patches = torch.cat([labelled, self.sampler.image_batch(half, unlabelled_indices)])
        teacher_view, student_view = self._augmented(patches), self._augmented(patches)
        n_l = labelled.shape[0]
        boxes = None
        if unlabelled_indices and method.cutmix:
            boxes = devices.to_device(cutmix_boxes((patches.shape[0] - n_l) // 2, tuple(patches.shape[2:]),
                                                   self.generator), self.device)
        with self._autocast():
            losses = cotraining_loss(
                self.teacher, self.student, teacher_view[:n_l], labels,
                teacher_view[n_l:] if unlabelled_indices else None, ramp,
                rounds=method.rounds if self.step % method.rounds_every == 0 else 0,
                chained=method.chained_rounds, lambda_d=method.lambda_d, generator=self.generator,
                student_view=student_view, loss=method.loss, mix_boxes=boxes,
            )
        self._optimise(losses.total, [self.teacher_optimiser, self.student_optimiser], [self.teacher, self.student])
        self._update_averages()
        return {**losses.parts, "unlabelled_weight": ramp}

    def _update_averages(self) -> None:
        for name, average in self.averages.items():
            average.update(self._twin_network(name))

    def _twin_network(self, name: str) -> DiffusionTwin:
        return self.teacher if name == "teacher" else self.student

    def reset_averages(self) -> None:
        """Restart the running averages from the live weights (after weights were loaded)."""
        for name, average in self.averages.items():
            average.reset(self._twin_network(name))

    def _strong_views(self, weak: torch.Tensor, labelled: torch.Tensor, labels: torch.Tensor, targets: list):
        """Per target (one per learning twin): a strong view of the unlabelled patches and an augmented view of the
        labelled ones, with the unlabelled patches and their targets mixed alike (copy-paste of labelled content,
        or CutMix in pairs). Returns (labelled views, unlabelled views, targets)."""
        method = self.config.method
        views = [self._to_device(strong_view(weak, self.generator, method.strong_augment)) for _ in targets]
        labelled_views = [self._augmented(labelled) for _ in targets]
        if method.copy_paste:
            boxes = cutmix_boxes(weak.shape[0], tuple(weak.shape[2:]), self.generator)
            views, targets = paste_labelled(views, labelled_views, labels, tuple(targets),
                                            devices.to_device(boxes, self.device))
        elif method.cutmix:
            boxes = devices.to_device(cutmix_boxes(weak.shape[0] // 2, tuple(weak.shape[2:]), self.generator),
                                      self.device)
            views = [swap_in_pairs(view, boxes) for view in views]
            targets = [tuple(swap_in_pairs(x, boxes) for x in pair) for pair in targets]
        return labelled_views, views, list(targets)

    def _weak_to_strong_step(self, labelled: torch.Tensor, labels: torch.Tensor, unlabelled_indices: list[int],
                             half: int, ramp: float) -> dict[str, float]:
        """Stage 2 with targets "average": each twin learns, on its own strong view of the unlabelled patches, the
        confident pixels of the other twin's running average evaluated at t = 0 on the weak view (the patch with
        its flips and rotations only); labelled patches as in ``_cotraining_step``."""
        method = self.config.method
        weak = self.sampler.image_batch(half, unlabelled_indices)
        with self._autocast():
            teacher_says = self.averages["teacher"].probabilities(self._to_device(weak))
            student_says = self.averages["student"].probabilities(self._to_device(weak))
        if method.targets_from == TargetsFrom.MEAN:
            teacher_says = student_says = (teacher_says + student_says) / 2
        for_student = confident_targets(teacher_says, method.confidence)
        for_teacher = confident_targets(student_says, method.confidence)
        labelled_views, views, (for_student, for_teacher) = self._strong_views(weak, labelled, labels,
                                                                             [for_student, for_teacher])
        teacher_view = torch.cat([labelled_views[0], views[0]])
        student_view = torch.cat([labelled_views[1], views[1]])
        n_l = labelled.shape[0]
        with self._autocast():
            losses = cotraining_loss(
                self.teacher, self.student, teacher_view[:n_l], labels, teacher_view[n_l:], ramp,
                rounds=method.rounds if self.step % method.rounds_every == 0 else 0,
                chained=method.chained_rounds, lambda_d=method.lambda_d, generator=self.generator,
                student_view=student_view, loss=method.loss,
                targets=UnlabelledTargets(for_student, for_teacher, method.unlabelled_loss),
            )
        self._optimise(losses.total, [self.teacher_optimiser, self.student_optimiser], [self.teacher, self.student])
        self._update_averages()
        return {**losses.parts, "unlabelled_weight": ramp}

    def _mean_teacher_step(self, labelled: torch.Tensor, labels: torch.Tensor, unlabelled_indices: list[int],
                           half: int, ramp: float) -> dict[str, float]:
        """Stage 2 with the student as the teacher's running average (Mean Teacher): one network trains, on
        labelled patches and on its strong view of unlabelled ones, whose targets are the confident pixels of the
        average at t = 0 on the weak view; no second network and no rounds (a step costs about what a labels-only
        step costs)."""
        method = self.config.method
        weak = self.sampler.image_batch(half, unlabelled_indices)
        with self._autocast():
            says = self.averages["teacher"].probabilities(self._to_device(weak))
        hard, valid = confident_targets(says, method.confidence)
        (labelled_view,), (view,), ((hard, valid),) = self._strong_views(weak, labelled, labels, [(hard, valid)])
        n_l = labelled.shape[0]
        with self._autocast():
            logits = self.teacher.random_mask_logits(torch.cat([labelled_view, view]), self.generator)
            supervised = segmentation_loss(logits[:n_l], labels, method.loss)
            unlabelled = masked_segmentation_loss(logits[n_l:], hard, valid, method.unlabelled_loss)
            total = supervised + ramp * unlabelled
        self._optimise(total, [self.teacher_optimiser], [self.teacher])
        self._update_averages()
        return {"supervised": float(supervised.detach()), "cps": float(unlabelled.detach()),
                "confident": float(valid.mean()), "unlabelled_weight": ramp}

    def advance(self, clock: _Clock, fraction: float) -> dict[str, float]:
        """One optimisation step at budget ``fraction``, counted and logged; returns its losses."""
        losses = self.checked_step(fraction)
        self.step += 1
        self.loss_rows.append({"step": self.step, "stage": self.stage, "elapsed": round(clock.elapsed, 2), **losses})
        return losses

    def checked_step(self, fraction: float) -> dict[str, float]:
        """``train_step``, with running out of memory turned into an error that says what to lower."""
        try:
            with self.own_rng():
                return self.train_step(fraction)
        except (MemoryError, RuntimeError) as error:
            text = str(error).lower()
            if not isinstance(error, MemoryError) and "out of memory" not in text and "can't allocate" not in text:
                raise
            raise InputError(
                f"out of memory on {self.device} with batch {self.batch_size}, patch "
                f"{'x'.join(map(str, self.patch_size))} and width {self.config.network.base_channels}: "
                "lower --batch-size, --patch-size or --width (Train panel: Advanced)") from None

    def enter_cotraining(self, fraction: float) -> None:
        self.stage = COTRAIN
        self.stage_start = fraction
        self.set_learning_rates(fraction)

    # ----- fit report, model, pseudo-labels -----
    @property
    def tile(self) -> tuple[int, ...]:
        return DEFAULT_TILE_2D if self.plan.network_dims == 2 else DEFAULT_TILE_3D

    def twins(self) -> dict[str, DiffusionTwin]:
        """The trained networks (the student only once it exists as more than a fresh or pending copy)."""
        if self.config.method.student == Student.AVERAGE and self.averages and self.stage == COTRAIN:
            return {"teacher": self.teacher, "student": self.averages["teacher"].twin}
        if self.student is None or self.student_pending_copy:
            return {"teacher": self.teacher}
        return {"teacher": self.teacher, "student": self.student}

    @property
    def kept_twin(self) -> str:
        """The twin whose weights the model keeps, as stored in the model card (a plain name)."""
        return (self.config.method.keep_twin if "student" in self.twins() else Twin.TEACHER).value

    def _probabilities(self, networks, index: int, draws: int = 0):
        """Probabilities of image ``index`` at the working scale, brought back to its full resolution."""
        # networks train in the same channels-last layout that tiled_probabilities uses, so predicting mid-run
        # (on a wall-clock schedule) leaves the numerics of a step-budget run unchanged
        probs = run_to_completion(predict_probabilities(networks, self.scaled.images[index], self.tile,
                                                        self.plan.slice_axis, draws=draws, device=self.device,
                                                        bf16=self.bf16, seed=self.config.runtime.seed))
        shape = self.data.images[index].shape[1:]
        probs.primary = resize_probabilities(probs.primary, shape)
        if probs.ensemble is not None:
            probs.ensemble = resize_probabilities(probs.ensemble, shape)
        if probs.second is not None:
            probs.second = resize_probabilities(probs.second, shape)
        return probs

    def measure_fit(self, clock: _Clock) -> FitReport:
        """Dice of each twin on the labelled images at the fixed threshold: how well the training labels are fitted
        (a report, not a validation: these are the images it trained on)."""
        indices = self.data.labelled_indices[: self.config.schedule.max_validation_images]
        truth = np.concatenate([self.data.labels[i].ravel() for i in indices])
        dice, foreground = {}, {}
        for name, network in self.twins().items():
            masks = [probabilities_to_mask(self._probabilities([network], i).primary, self.config.method.threshold)
                     for i in indices]
            predicted = np.concatenate([m.ravel() for m in masks])
            dice[name] = dice_score(predicted, truth)
            foreground[name] = float(np.count_nonzero(predicted)) / max(predicted.size, 1)
        return FitReport(self.kept_twin, self.config.method.threshold, dice, self.step, round(clock.elapsed, 1),
                         foreground, float(np.count_nonzero(truth)) / max(truth.size, 1))

    def save_best(self, clock: _Clock) -> CheckpointSaved:
        """Write the kept twin's mask pathway (the model to predict with) and the model card."""
        self.fit = self.measure_fit(clock)
        network = self.twins()[self.kept_twin]
        path = self.out_dir / BEST
        ModelCheckpoint(asdict(self.network_config), network.mask_path.state_dict(), self.config.method.threshold,
                        self.scale, self.kept_twin, self.plan.to_dict()).save(path)
        self.write_card(clock)
        return CheckpointSaved(path, CheckpointKind.BEST, self.fit)

    def write_card(self, clock: _Clock) -> None:
        write_model_card(self.out_dir, {
            "format": "napari-diffseg model card",
            "method": self.config.method.describe() + ("" if self.config.method.labels_only else " (arXiv 2504.01547)"),
            "config": self.config.to_dict(),
            "network": asdict(self.network_config),
            "working_scale": self.scale,
            "plan": {**self.plan.to_dict(), "text": self.plan.describe()},
            "patch_size": list(self.patch_size),
            "batch_size": self.batch_size,
            "data": self.data.fingerprints(),
            "threshold": self.config.method.threshold,
            "selected_twin": self.kept_twin,
            "metrics": self.fit.to_dict() if self.fit is not None else {},
            "validation_note": "final weights of the kept twin with a fixed threshold; the Dice under "
                               "metrics.validation is the fit on the labelled (training) images, not a validation",
            "training": {"steps": self.step, "stage": self.stage, "elapsed_seconds": round(clock.elapsed, 3),
                         "overhead_seconds": round(clock.overhead, 3)},
            "environment": {"torch": torch.__version__, "device": str(self.device), "threads": self.threads,
                            "bf16": self.bf16, "fp16": self.fp16},
            **({"objects": self.data.objects} if getattr(self.data, "objects", None) else {}),  # core/objects
        })

    def pseudo_labels(self) -> Iterator[StageProgress | PseudoLabelsReady]:
        """Masks of the kept twin (fixed threshold) for every unlabelled image, the per-pixel uncertainty (entropy
        of the twins' mean) and an image-level score: the twins' disagreement (1 - soft Dice between them), or
        the mean entropy when there is one network."""
        twins = self.twins()
        networks = [twins[self.kept_twin]] + [net for name, net in twins.items() if name != self.kept_twin]
        names, scores = [], {}
        indices = self.data.unlabelled_indices
        for done, index in enumerate(indices):
            yield StageProgress(PSEUDO_LABEL_STAGE, done, len(indices))
            name = self.data.names[index]
            probs = self._probabilities(networks, index, draws=self.config.method.uncertainty_draws)
            members = probs.ensemble if probs.ensemble is not None else probs.primary
            uncertainty = normalised_entropy(members)
            score = (disagreement(probs.primary, probs.second) if probs.second is not None
                     else float(uncertainty.mean()))
            mask = probabilities_to_mask(probs.primary, self.config.method.threshold)
            self.sink.write(name, mask, uncertainty, score, self.step)
            names.append(name)
            scores[name] = score
        self.pseudo_label_count += 1
        yield PseudoLabelsReady(self.step, self.sink.directory, names, scores)


def train(
    data: TrainingData,
    config: TrainConfig,
    out_dir: Path,
    resume: bool = False,
    warm_start: Path | None = None,
    sink: PseudoLabelSink | None = None,
    ranks: distributed.Ranks | None = None,
) -> Iterator[TrainingEvent]:
    """Run (or resume) training, yielding events; close the generator to cancel (a last.pt is still written).

    ``warm_start``: a model folder of an earlier round whose last.pt initialises the twins (and, unless the config
    fixes one, gives the working scale); pretraining is then skipped (the teacher already learned from all images).
    ``sink``: where the pseudo-labels go, image by image (default: ``out_dir/pseudo_labels``).
    ``ranks``: this process's place in a data-parallel run (core/method/distributed.py; the process group is joined);
    only rank 0 writes files, pseudo-labels and checkpoints, and its clock decides for all.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = None
    if resume:
        saved = RunCheckpoint.load(out_dir / LAST)
    elif warm_start is not None:
        saved = RunCheckpoint.load(Path(warm_start) / LAST)
    scale = None
    if (saved is not None and config.schedule.working_scale is None and saved.working_scale is not None
            and not saved.pretrain_only):  # a pretraining ran before any label could set the scale
        scale = float(saved.working_scale)
    plan = None
    if (saved is not None and saved.plan and not saved.pretrain_only and config.network.layout == "auto"
            and config.schedule.patch_size is None and config.schedule.batch_size is None
            and config.schedule.working_scale is None):
        plan = Plan.from_dict(saved.plan)  # the layout the network was trained in (another device may plan another)
    elif (saved is not None and saved.plan and saved.pretrain_only and config.network.layout == "auto"
          and config.schedule.patch_size is None):
        config = config.replace(layout=saved.plan["layout"])  # the pretrained teacher's layout; scale from labels
    run = TrainingRun(data, config, out_dir, scale, sink, ranks, plan)
    elapsed = overhead = 0.0
    if resume:
        elapsed, overhead = run.restore(saved, full=True)
        run.reset_averages()
        log.info("resuming at step %d (%s), %.0f s already spent", run.step, run.stage, elapsed)
    else:
        # the previous run's best.pt and card stay until this run writes its own (a crash or kill early in the new
        # run leaves a usable model); its step log and pseudo-labels go
        for stale in (LOSSES_FILE, PSEUDO_LABEL_DIR) if run.main else ():
            path = out_dir / stale
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        if warm_start is not None:
            run.restore(saved, full=False)
            run.reset_averages()
            if not config.method.labels_only:
                run.enter_cotraining(0.0)
    run.join_ranks(resumed=resume)
    log.info("%s", run.plan.describe() + ("" if plan is None else " (kept from the run it continues)"))
    clock = _Clock(config, elapsed, overhead)
    checkpoints = Every(config.schedule.checkpoint_every_seconds)
    checkpoints.start(clock.elapsed)
    pseudo_labels = Every(config.schedule.pseudo_labels_every_seconds,
                          first_after=config.schedule.first_pseudo_labels_after_seconds)
    # a round warm-started from a trained model (Next round) already has that round's pseudo-labels to review: no
    # early pass, the next one after pseudo_labels_every_seconds (or at the end), so its time goes to steps; a
    # start from the teacher pretrained without labels has nothing to review yet and keeps the early pass (its
    # schedule starts with co-training)
    if warm_start is not None and not resume and not saved.pretrain_only:
        pseudo_labels.done(clock.elapsed)

    def maybe_pseudo_label(now: float) -> Iterator[TrainingEvent]:
        if run.stage == PRETRAIN or not data.unlabelled_indices or not run.main:
            return
        if not pseudo_labels.started:
            pseudo_labels.start(now)
        if pseudo_labels.due(now) and clock.fraction(run.step) < 1.0:  # the end has its own pass
            with clock.paused():
                yield from run.pseudo_labels()
            pseudo_labels.done(clock.elapsed)

    def maybe_checkpoint(now: float) -> Iterator[TrainingEvent]:
        if run.main and checkpoints.due(now):
            checkpoints.done(now)
            with clock.paused():
                path = run.save_last(clock)
            yield CheckpointSaved(path, CheckpointKind.LAST)

    def finish() -> Iterator[TrainingEvent]:
        """The model, the final pseudo-labels, last.pt and the card; none of it counts against the budget."""
        with clock.paused():
            yield StageProgress(SAVING_STAGE, 0, 1)
            saved = run.save_best(clock)
        yield saved
        if data.unlabelled_indices:
            with clock.paused():
                yield from run.pseudo_labels()
        with clock.paused():
            last = run.save_last(clock)
            run.write_card(clock)
        return last

    finished = False
    try:
        yield PlanChosen(run.plan.describe(), run.plan.to_dict())
        while True:
            fraction = run.shared_fraction(clock)
            if run.stage == PRETRAIN and fraction >= config.method.pretrain_fraction:
                run.enter_cotraining(fraction)
            if fraction >= 1.0:
                break
            losses = run.advance(clock, fraction)
            now = clock.elapsed
            yield from maybe_pseudo_label(now)
            yield from maybe_checkpoint(now)
            yield Progress(run.stage, run.step, clock.fraction(run.step), clock.elapsed,
                           clock.remaining(run.step), losses)
        if not run.main:  # the other ranks' work ends with the steps
            finished = True
            return
        last = yield from finish()
        finished = True  # only now: closing at an earlier yield of the final phase must still leave a last.pt
        yield CheckpointSaved(last, CheckpointKind.LAST)
        yield Done(out_dir, run.fit)
    finally:
        if not finished and run.main:
            run.save_last(clock)
            if run.stage != PRETRAIN and (run.step > 0 or not (out_dir / BEST).exists()):
                run.save_best(clock)  # a stopped run's model replaces the earlier one once it has trained


def pretrain(data: TrainingData, config: TrainConfig, out_dir: Path) -> Iterator[TrainingEvent]:
    """Stage 1 alone, no label needed: the teacher learns by cycle consistency for ``config.schedule.budget_seconds``
    (or until the generator is closed), continuing the pretraining already in ``out_dir``. Its last.pt (written every
    ``checkpoint_every_seconds`` and when the run ends or is closed) holds the teacher and the pretraining seconds
    so far; ``train(..., warm_start=out_dir)`` co-trains from it. Progress events carry the total seconds.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # labels_only: a TrainingRun without a student (stage 1 trains the teacher alone)
    run = TrainingRun(data, config.replace(labels_only=True), out_dir,
                      scale=config.schedule.working_scale if config.schedule.working_scale is not None else 1.0)
    run.stage = PRETRAIN
    spent = 0.0
    previous = out_dir / LAST
    if previous.is_file():
        saved = RunCheckpoint.load(previous)
        if saved.pretrain_only and saved.network == asdict(run.network_config):
            run.teacher.load_state_dict(saved.teacher)
            run.teacher_optimiser.load_state_dict(saved.teacher_optimiser)
            run.step, spent = int(saved.step), float(saved.pretrain_seconds)
        else:
            log.info("pretraining from scratch: %s holds another kind of model", previous)
    for group in run.teacher_optimiser.param_groups:
        group["lr"] = config.schedule.lr_pretrain
    clock = _Clock(config)
    session_steps = 0

    def save() -> Path:
        RunCheckpoint(config.to_dict(), asdict(run.network_config), run.teacher.state_dict(),
                      run.teacher_optimiser.state_dict(), run.step, working_scale=run.scale, pretrain_only=True,
                      pretrain_seconds=spent + clock.elapsed, plan=run.plan.to_dict()).save(previous)
        return previous

    checkpoints = Every(config.schedule.checkpoint_every_seconds)
    checkpoints.start(0.0)
    try:
        while clock.fraction(session_steps) < 1.0:
            losses = run.checked_step(clock.fraction(session_steps))  # no loss log: pretraining can run for hours
            run.step += 1
            session_steps += 1
            if checkpoints.due(clock.elapsed):
                checkpoints.done(clock.elapsed)
                with clock.paused():
                    path = save()
                yield CheckpointSaved(path, CheckpointKind.LAST)
            yield Progress(PRETRAIN, run.step, clock.fraction(session_steps), spent + clock.elapsed,
                           clock.remaining(session_steps), losses)
    finally:
        save()


def pretraining_info(out_dir: Path) -> dict | None:
    """``{"seconds", "steps", "network", "plan"}`` of the stage-1 pretraining stored in ``out_dir``, or None."""
    path = Path(out_dir) / LAST
    if not path.is_file():
        return None
    try:
        saved = RunCheckpoint.load(path)
    except ModelError:
        return None
    if not saved.pretrain_only:
        return None
    return {"seconds": float(saved.pretrain_seconds), "steps": int(saved.step), "network": saved.network,
            "plan": saved.plan}
