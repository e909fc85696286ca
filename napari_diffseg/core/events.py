"""The events that training yields (``core.training.train``, ``core.rounds.train_round``), in a module without
torch, so that the GUI and the CLI can name them without importing the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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
class StageProgress(TrainingEvent):
    """Progress of a pass outside the optimisation steps (its time is not budget): "pseudo_labels" (one event per
    image, before it) or "saving" (the final model)."""

    stage: str
    done: int
    total: int


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
    mean_uncertainty: dict[str, float]  # image-level uncertainty score per name (orders the review queue)


@dataclass
class Done(TrainingEvent):
    model_dir: Path
    metrics: dict
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
