"""One optimisation step of each stage: stage 1 pretraining, the supervised warm-up and labels-only training,
co-training (cross pseudo supervision, or weak-to-strong targets from running averages) and Mean Teacher; the
unlabelled weight's ramp and the learning-rate schedule. A part of ``TrainingRun`` (``training.TrainingRun``
inherits it)."""

from __future__ import annotations

import torch

from .. import device as devices

from . import distributed
from .appearance import transfer_appearance
from .clock import Clock
from .config import LrSchedule, Student, Targets, TargetsFrom
from .consistency import confident_targets, masked_segmentation_loss, paste_labelled, strong_view
from .offline import IGNORE, passes_due, pool_pseudo_labels
from .events import Stage
from ..data.training_set import augment_intensity, cutmix_boxes
from ..errors import InputError
from ..device import autocast_context
from .teacher import (DiffusionTwin, UnlabelledTargets, cotraining_loss, pretraining_loss, segmentation_loss,
                      supervised_loss, swap_in_pairs)

PRETRAIN, COTRAIN, SUPERVISED = Stage.PRETRAIN, Stage.COTRAIN, Stage.SUPERVISED
POLY_EXPONENT = 0.9


def poly_factor(progress: float) -> float:
    """nnU-Net's poly learning-rate factor (1 - progress) ** 0.9, progress in [0, 1] of the stage."""
    return max(0.0, 1.0 - min(1.0, max(0.0, progress))) ** POLY_EXPONENT


class StageSteps:
    """The steps; uses the run's ``config``, ``device``, ``bf16``, ``fp16``, ``scaler``, ``memory_format``, ``ranks``,
    ``generator``, ``sampler``, ``scaled``, ``batch_size``, ``patch_size``, the twins and their optimisers,
    ``averages``, ``step``, ``stage``, ``stage_start``, ``student_pending_copy``, ``loss_rows`` and ``own_rng``."""

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
        self.progress = self.stage_progress(fraction)
        # every network sees batch_size patches per step: all labelled in labels-only training and in the supervised
        # warm-up of co-training (no unlabelled patch while its weight is 0), half and half afterwards
        ramp = self.unlabelled_weight(self.stage_progress(fraction))
        unlabelled_indices = self.scaled.unlabelled_indices if ramp > 0 else []
        half = max(1, self.batch_size // 2)
        labelled, labels = self.sampler.labelled_batch(half if unlabelled_indices and self.stage == COTRAIN
                                                        else self.batch_size)
        labels = devices.to_device(labels, self.device)
        method = self.config.method
        if method.appearance > 0 and not method.labels_only and self.scaled.unlabelled_indices:
            # the collection's appearance on the labelled patches, from the first step (core/method/appearance.py)
            references = self.sampler.image_batch(labelled.shape[0], self.scaled.unlabelled_indices)
            labelled = transfer_appearance(labelled, references, self.generator, method.appearance,
                                           method.appearance_band)
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
        if unlabelled_indices and method.targets == Targets.OFFLINE:
            return self._offline_step(labelled, labels, unlabelled_indices, half, ramp)
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
                chained=method.chained_rounds, lambda_d=method.lambda_d, round_t_fraction=method.round_t_fraction,
                generator=self.generator,
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
        losses = self._twins_learn_targets(weak, labelled, labels, for_student, for_teacher, ramp)
        self._update_averages()
        return {**losses.parts, "unlabelled_weight": ramp}

    def _twins_learn_targets(self, weak: torch.Tensor, labelled: torch.Tensor, labels: torch.Tensor,
                             for_student: tuple, for_teacher: tuple, ramp: float):
        """One co-training step in which each twin learns the given (class map, valid pixels) targets of the
        unlabelled ``weak`` patches on its own strong view (``_strong_views``), labelled patches and the rounds as
        in ``_cotraining_step``; returns the losses."""
        method = self.config.method
        labelled_views, views, (for_student, for_teacher) = self._strong_views(weak, labelled, labels,
                                                                             [for_student, for_teacher])
        teacher_view = torch.cat([labelled_views[0], views[0]])
        student_view = torch.cat([labelled_views[1], views[1]])
        n_l = labelled.shape[0]
        with self._autocast():
            losses = cotraining_loss(
                self.teacher, self.student, teacher_view[:n_l], labels, teacher_view[n_l:], ramp,
                rounds=method.rounds if self.step % method.rounds_every == 0 else 0,
                chained=method.chained_rounds, lambda_d=method.lambda_d, round_t_fraction=method.round_t_fraction,
                generator=self.generator, student_view=student_view, loss=method.loss,
                targets=UnlabelledTargets(for_student, for_teacher, method.unlabelled_loss),
            )
        self._optimise(losses.total, [self.teacher_optimiser, self.student_optimiser], [self.teacher, self.student])
        return losses

    def _refresh_pseudo_labels(self, unlabelled_indices: list[int]) -> None:
        """Offline self-training: a pass of the teacher over the pool when one is due (core/method/offline.py);
        after a resume, the first step makes the pass the run had made."""
        due = passes_due(self.progress, self.config.method.supervised_warmup)
        if due <= self.offline_passes and self.sampler.pseudo_labels:
            return
        with torch.no_grad():
            maps = pool_pseudo_labels(self.teacher, self.sampler.images, unlabelled_indices,
                                      sliced=self.plan.slice_axis is not None, confidence=self.config.method.confidence,
                                      device=self.device, bf16=self.bf16)
        self.teacher.train()
        self.sampler.set_pseudo_labels(maps, IGNORE)
        self.offline_passes = max(1, due)

    def _offline_step(self, labelled: torch.Tensor, labels: torch.Tensor, unlabelled_indices: list[int], half: int,
                      ramp: float) -> dict[str, float]:
        """Stage 2 with targets "offline": the unlabelled half of the batch are patches of pool images with the
        teacher's confident maps of the last pass, learnt by both twins on their own strong views (the masked loss
        of the confident pixels); labelled patches and the rounds as in ``_cotraining_step``."""
        self._refresh_pseudo_labels(unlabelled_indices)
        weak, hard, valid = self.sampler.pseudo_batch(half)
        target = (devices.to_device(hard, self.device), devices.to_device(valid, self.device))
        losses = self._twins_learn_targets(weak, labelled, labels, target, target, ramp)
        return {**losses.parts, "unlabelled_weight": ramp, "offline_passes": self.offline_passes}

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

    def advance(self, clock: Clock, fraction: float) -> dict[str, float]:
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
