"""What a run writes for its users: the fit report, ``best.pt`` (the kept twin's mask pathway) and the model card,
and the pseudo-labels of the unlabelled images with their uncertainty. A part of ``TrainingRun``
(``training.TrainingRun`` inherits it)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .clock import Clock
from .config import Student, Twin
from .events import CheckpointKind, CheckpointSaved, FitReport, PseudoLabelsReady, Stage, StageProgress
from .checkpoint import BEST, ModelCheckpoint, write_model_card
from ..data.io import UNCERTAINTY_SUFFIX, write_mask, write_tiff_atomic
from ..data.metrics import dice as dice_score
from ..prediction.predict import (DEFAULT_TILE_2D, DEFAULT_TILE_3D, disagreement, normalised_entropy,
                                  predict_probabilities, probabilities_to_mask, run_to_completion)
from ..data.scale import resize_probabilities
from .teacher import DiffusionTwin

PSEUDO_LABEL_DIR = "pseudo_labels"
PSEUDO_LABEL_STAGE = Stage.PSEUDO_LABELS  # StageProgress stage


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


class RunOutputs:
    """The outputs; uses the run's ``config``, ``data``, ``scaled``, ``plan``, ``scale``, ``network_config``,
    ``device``, ``bf16``, ``fp16``, ``threads``, ``out_dir``, ``sink``, the twins, ``averages``, ``step``,
    ``stage``, ``student_pending_copy``, ``patch_size``, ``batch_size``, ``fit`` and ``pseudo_label_count``."""

    @property
    def tile(self) -> tuple[int, ...]:
        return DEFAULT_TILE_2D if self.plan.network_dims == 2 else DEFAULT_TILE_3D

    def twins(self) -> dict[str, DiffusionTwin]:
        """The trained networks (the student only once it exists as more than a fresh or pending copy)."""
        if self.config.method.student == Student.AVERAGE and self.averages and self.stage == Stage.COTRAIN:
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

    def measure_fit(self, clock: Clock) -> FitReport:
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

    def save_best(self, clock: Clock) -> CheckpointSaved:
        """Write the kept twin's mask pathway (the model to predict with) and the model card."""
        self.fit = self.measure_fit(clock)
        network = self.twins()[self.kept_twin]
        path = self.out_dir / BEST
        ModelCheckpoint(asdict(self.network_config), network.mask_path.state_dict(), self.config.method.threshold,
                        self.scale, self.kept_twin, self.plan.to_dict()).save(path)
        self.write_card(clock)
        return CheckpointSaved(path, CheckpointKind.BEST, self.fit)

    def write_card(self, clock: Clock) -> None:
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
