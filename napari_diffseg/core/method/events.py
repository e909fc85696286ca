"""The events that training yields (``core.method.training.train``, ``core.project.rounds.train_round``), in a module without
torch, so that the GUI and the CLI can name them without importing the engine."""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class Stage(StrEnum):
    """What a run is doing: the optimisation stages (Progress) and the passes outside the budget (StageProgress).
    Members are strings ("pretrain", ...), so they compare, hash and serialise as before."""

    PRETRAIN = "pretrain"  # stage 1: the teacher learns without labels
    COTRAIN = "cotrain"  # stage 2: teacher and student co-train
    SUPERVISED = "supervised"  # the labels-only baseline
    PSEUDO_LABELS = "pseudo_labels"  # predicting the unlabelled images for review
    SAVING = "saving"  # writing the model


class CheckpointKind(StrEnum):
    LAST = "last"  # everything to resume or warm-start
    BEST = "best"  # the model to predict with


@dataclass
class TrainingEvent:
    """Base of everything ``train`` yields."""


@dataclass
class Progress(TrainingEvent):
    stage: Stage
    step: int
    fraction: float
    elapsed: float
    remaining: float
    losses: dict[str, float]


@dataclass
class StageProgress(TrainingEvent):
    """Progress of a pass outside the optimisation steps (its time is not budget): "pseudo_labels" (one event per
    image, before it) or "saving" (the final model)."""

    stage: Stage
    done: int
    total: int


@dataclass
class FitReport:
    """How well each twin fits the labelled (training) images at the threshold, and which one is kept: a report,
    not a validation (there are no held-out labels with a few labelled images)."""

    kept_twin: str
    threshold: float
    dice: dict[str, float]  # per twin ("teacher", "student")
    step: int
    elapsed: float

    @property
    def kept_dice(self) -> float:
        return self.dice[self.kept_twin]

    def describe(self) -> str:
        return (f"{self.kept_twin} (final weights), threshold {self.threshold:.2f}, "
                f"Dice on the labelled training images {self.kept_dice:.4f}")

    def to_dict(self) -> dict:
        """The model card's "metrics" section (its JSON shape since the first model cards)."""
        return {"selected_twin": self.kept_twin, "step": self.step, "elapsed": self.elapsed,
                "validation": {twin: {"threshold": self.threshold, "dice": dice} for twin, dice in self.dice.items()}}

    @classmethod
    def from_dict(cls, metrics: dict) -> FitReport | None:
        """From a model card's "metrics" section; None when it has no fit of the kept twin."""
        try:
            twin = metrics["selected_twin"]
            fits = metrics["validation"]
            return cls(twin, float(fits[twin]["threshold"]), {t: float(f["dice"]) for t, f in fits.items()},
                       int(metrics.get("step", 0)), float(metrics.get("elapsed", 0.0)))
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


@dataclass
class CheckpointSaved(TrainingEvent):
    path: Path
    kind: CheckpointKind
    fit: FitReport | None = None  # with BEST


@dataclass
class PseudoLabelsReady(TrainingEvent):
    step: int
    directory: Path
    names: list[str]
    mean_uncertainty: dict[str, float]  # image-level uncertainty score per name (orders the review queue)


@dataclass
class Done(TrainingEvent):
    model_dir: Path
    fit: FitReport | None
    cancelled: bool = False


@dataclass
class RoundStarted(TrainingEvent):
    """First event of ``train_round``: what is being trained, and from where."""

    round: int
    out_dir: Path
    warm_start: Path | None
    resumed: bool
    labelled: int
    unlabelled: int
    note: str = ""


def require_a_step(events: Iterator[TrainingEvent], budget_seconds: float | None) -> Iterator[TrainingEvent]:
    """Pass a run's events through, raising UntrainedRunError when the run reaches its end (the final save, or Done)
    without an optimisation step (the budget ended first): its model would be an untrained network passing for a
    trained one. Raised before the final pass, so an earlier model and the project's pseudo-labels stay as they
    were. Not for a resumed run (its steps were made before). Closing this generator closes the run."""
    from ..errors import UntrainedRunError

    stepped = False
    with contextlib.closing(events):
        for event in events:
            stepped = stepped or isinstance(event, Progress)
            ending = isinstance(event, Done) or (isinstance(event, StageProgress) and event.stage == Stage.SAVING)
            if ending and not stepped:
                budget = f"the time budget ({budget_seconds:g} s)" if budget_seconds else "the budget"
                raise UntrainedRunError(f"{budget} ended before the first training step: nothing was learned and no "
                                 "trained model was written; give a larger --budget")
            yield event
