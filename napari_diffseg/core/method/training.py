"""Training as a generator of events: stage 1 (unsupervised teacher pretraining), stage 2 (teacher-student
co-training), or the labels-only baseline: the drivers ``train`` and ``pretrain`` and the run's set-up (plan,
working scale, networks, sampler, optimisers, random streams). The steps of each stage are in ``steps``, last.pt in
``resume``, the model and pseudo-labels in ``outputs``, the budget's clock in ``clock``.

Callers (the CLI, the napari worker) iterate ``train(...)``; every optimisation step yields a ``Progress`` event,
so closing the generator cancels at the next step. A cancelled or finished run leaves ``last.pt`` to resume
from and ``best.pt`` to predict with (see ``checkpoint``). The budget is optimisation time in seconds and/or a
number of steps (steps make runs reproducible: with a fixed seed and no time budget, two runs give identical
weights). Pseudo-label passes, checkpoint writes and the final model write are timed apart and do not eat the
budget (``clock.Clock.paused``); the model card reports both times.

Model selection does not look at the labelled images (with 1-5 of them, "best on the training images" is the most
overfit model): the learning rate anneals to zero at the end of the budget (poly schedule, as nnU-Net), and the
final weights of the kept twin (``keep_twin``) are saved with a fixed threshold.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, replace
import contextlib
import logging
from pathlib import Path
import shutil

import numpy as np
import torch

from .. import device as devices

from . import distributed
from .clock import Clock, Every
from .config import Layout, Student, Targets, TrainConfig, WarmupTwins
from .events import (CheckpointKind, CheckpointSaved, Done, FitReport, PlanChosen, Progress,  # noqa: F401
                     PseudoLabelsReady, Stage, StageProgress, TrainingEvent)
from .checkpoint import BEST, LAST, RunCheckpoint
from .planner import Plan, plan_training
from .consistency import WeightAverage
from ..data.training_set import PatchSampler, SliceSampler, TrainingData, effective_patch_size, fit_patch
from ..errors import ModelError
from ..device import memory_format_for
from ..data.scale import resize_image, resize_labels, scaled_shape
from .teacher import DiffusionTwin, NetworkConfig
from .steps import COTRAIN, PRETRAIN, SUPERVISED, StageSteps, poly_factor  # noqa: F401
from .resume import LOSSES_FILE, RunResume
from .outputs import PSEUDO_LABEL_DIR, PSEUDO_LABEL_STAGE, FolderSink, PseudoLabelSink, RunOutputs  # noqa: F401

log = logging.getLogger(__name__)

SAVING_STAGE = Stage.SAVING  # StageProgress stage


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


class TrainingRun(StageSteps, RunResume, RunOutputs):
    """State of one training run, set up here; ``train`` drives it. Its parts: the optimisation steps of each stage
    (``steps.StageSteps``), last.pt and the step log (``resume.RunResume``), the fit report, best.pt, model card
    and pseudo-labels (``outputs.RunOutputs``)."""

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
        self.progress = 0.0  # of the current stage (steps.StageSteps.stage_progress), set by every step
        self.offline_passes = 0  # targets "offline": passes of the teacher over the pool made (core/method/offline.py)
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

    def shared_fraction(self, clock: Clock) -> float:
        """The budget fraction of rank 0's clock, on every rank (the clock alone in a single process)."""
        fraction = clock.fraction(self.step)
        return fraction if self.ranks is None else distributed.rank0_value(fraction, self.device)

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



def train(
    data: TrainingData,
    config: TrainConfig,
    out_dir: Path,
    resume: bool = False,
    warm_start: Path | None = None,
    sink: PseudoLabelSink | None = None,
    ranks: distributed.Ranks | None = None,
    final_pseudo_labels: bool = True,
) -> Iterator[TrainingEvent]:
    """Run (or resume) training, yielding events; close the generator to cancel (a last.pt is still written).

    ``warm_start``: a model folder of an earlier round whose last.pt initialises the twins (and, unless the config
    fixes one, gives the working scale); pretraining is then skipped (the teacher already learned from all images).
    ``sink``: where the pseudo-labels go, image by image (default: ``out_dir/pseudo_labels``).
    ``ranks``: this process's place in a data-parallel run (core/method/distributed.py; the process group is joined);
    only rank 0 writes files, pseudo-labels and checkpoints, and its clock decides for all.
    ``final_pseudo_labels``: False skips the pass after the last step (the members of layout "both", whose joined
    model makes the final pseudo-labels).
    """
    if config.network.layout == Layout.BOTH:  # two networks, one after the other (core/method/ensemble.py)
        from .ensemble import train_both

        return (yield from train_both(train, data, config, out_dir, resume, warm_start, sink, ranks))
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
    clock = Clock(config, elapsed, overhead)
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
        if data.unlabelled_indices and final_pseudo_labels:
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
    if config.network.layout == Layout.BOTH:  # one teacher to pretrain: the 2D member's, which trains first
        config = config.replace(layout=Layout.SLICES)
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
    clock = Clock(config)
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
