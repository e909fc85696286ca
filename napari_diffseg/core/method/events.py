"""The events that training yields (``core.method.training.train``, ``core.project.rounds.train_round``), in a module without
torch, so that the GUI and the CLI can name them without importing the engine."""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
from dataclasses import dataclass, field
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
    foreground: dict[str, float] = field(default_factory=dict)  # per twin: predicted foreground fraction
    true_foreground: float | None = None  # the labels' foreground fraction on the same images

    @property
    def kept_dice(self) -> float:
        return self.dice[self.kept_twin]

    @property
    def collapse(self) -> str | None:
        """"empty" or "all foreground" when the kept twin's masks of its own labelled images collapsed to (almost)
        nothing or (almost) everything while the labels hold both: a failed run, whatever its loss said."""
        predicted = self.foreground.get(self.kept_twin)
        return collapse_of(predicted, self.true_foreground) if predicted is not None else None

    def describe(self) -> str:
        text = (f"{self.kept_twin} (final weights), threshold {self.threshold:.2f}, "
                f"Dice on the labelled training images {self.kept_dice:.4f}")
        return text + (f"; MASK COLLAPSED ({self.collapse})" if self.collapse else "")

    def to_dict(self) -> dict:
        """The model card's "metrics" section (its JSON shape since the first model cards, plus the foreground
        fractions and the collapse verdict)."""
        metrics = {"selected_twin": self.kept_twin, "step": self.step, "elapsed": self.elapsed,
                   "validation": {twin: {"threshold": self.threshold, "dice": dice} for twin, dice in self.dice.items()}}
        if self.foreground:
            metrics.update(foreground=dict(self.foreground), true_foreground=self.true_foreground,
                           collapse=self.collapse)
        return metrics

    @classmethod
    def from_dict(cls, metrics: dict) -> FitReport | None:
        """From a model card's "metrics" section; None when it has no fit of the kept twin."""
        try:
            twin = metrics["selected_twin"]
            fits = metrics["validation"]
            true = metrics.get("true_foreground")
            return cls(twin, float(fits[twin]["threshold"]), {t: float(f["dice"]) for t, f in fits.items()},
                       int(metrics.get("step", 0)), float(metrics.get("elapsed", 0.0)),
                       {t: float(v) for t, v in (metrics.get("foreground") or {}).items()},
                       float(true) if true is not None else None)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


COLLAPSE_RATIO = 0.05  # predicted foreground (or background) under 5 % of the labels' is a collapse


def collapse_of(predicted: float, true: float | None) -> str | None:
    """The collapse verdict for a predicted foreground fraction against the labels' fraction on the same pixels:
    "empty" when it is under COLLAPSE_RATIO of the true one, "all foreground" when the predicted background is
    under COLLAPSE_RATIO of the true background; None otherwise (or when the labels are all one class)."""
    if true is None or not 0.0 < true < 1.0:
        return None
    if predicted < COLLAPSE_RATIO * true:
        return "empty"
    if 1.0 - predicted < COLLAPSE_RATIO * (1.0 - true):
        return "all foreground"
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
class PlanChosen(TrainingEvent):
    """The plan a run trains in (core/method/planner.py), yielded before its first step."""

    text: str  # Plan.describe(): one line for people
    plan: dict  # Plan.to_dict()


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
