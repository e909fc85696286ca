"""The evented state shared by the napari panels of one viewer: the open project, the training settings, and the
status of the training run (idle / running / stopping / done / failed, round, step, losses).

Panels receive the state in their constructors and talk to each other only through its signals (psygnal, which
ships with napari; no Qt needed here). Signals are emitted on the GUI thread: the worker bridge
(``napari_diffseg._workers``) relays worker events to the state from Qt slots.

Per-viewer registry: napari creates dock widgets through npe2 with only the viewer, so
:func:`state_for_viewer` finds or creates the one state of that viewer in a ``WeakKeyDictionary`` keyed by the
viewer. That is a registry, not a global state: each viewer has its own state, and it goes away with its viewer
(the state never holds a reference to the viewer). Importing this module does not import torch: the training
settings (``core.training.TrainConfig``) are built on first use.
"""

from __future__ import annotations

from enum import Enum
import logging
from typing import TYPE_CHECKING, Any
import weakref

from psygnal import Signal

from napari_diffseg.core.project import Project

if TYPE_CHECKING:
    from napari_diffseg.core.config import TrainConfig

log = logging.getLogger(__name__)


# the default of the Train panel's "pretrain the teacher while I label": off, because stage 1 before co-training
# gained nothing in 3 minutes and cost GlaS 2-3 Dice points after 15 (benchmarks/quality/ABLATIONS.md)
PRETRAIN_IN_BACKGROUND = False


class Status(str, Enum):
    """Status of the training run of a state."""

    IDLE = "idle"
    RUNNING = "running"
    STOPPING = "stopping"
    DONE = "done"
    FAILED = "failed"


class DiffsegState:
    """One open project with its training settings and run status; panels listen to the signals."""

    project_changed = Signal(object)  # Project | None
    config_changed = Signal(object)  # TrainConfig
    status_changed = Signal(object)  # Status
    round_changed = Signal(int)
    training_event = Signal(object)  # core.training.TrainingEvent (and core.rounds.RoundStarted)
    records_changed = Signal()  # image statuses / pseudo-labels / labels in the project changed
    error = Signal(str)  # one-line message of the last failure
    image_shown = Signal(str, str)  # ("annotate" | "review", image name): a panel's layers now show that image
    pretrain_changed = Signal(float)  # seconds the teacher has pretrained in the background (also on start/stop)

    def __init__(self) -> None:
        self.project: Project | None = None
        self._config: TrainConfig | None = None
        self.status = Status.IDLE
        self.round = 0
        self.step = 0
        self.losses: list[tuple[int, str, dict[str, float]]] = []  # (step, stage, losses) of the current run
        self.last_error = ""
        self.worker: Any = None  # the running training worker (napari_diffseg._workers), if any
        self.pretrain_enabled = PRETRAIN_IN_BACKGROUND  # pretrain the teacher while the user labels
        self.pretrain_worker: Any = None
        self.pretrain_seconds = 0.0

    # ------------------------------------------------------------------ project
    def set_project(self, project: Project | None) -> None:
        """Make ``project`` the open project; its stored training settings (if any) become the settings."""
        if self.busy:
            raise RuntimeError("cannot change the project while training runs")
        self.project = project
        stored = None if project is None else project.config.get("train")
        if stored:
            self._use_stored_config(dict(stored))
        self.round = 0 if project is None else project.current_round
        self.step = 0
        self.losses = []
        self.last_error = ""
        self.project_changed.emit(project)
        self.set_status(Status.IDLE)
        self.round_changed.emit(self.round)
        if stored:
            self.config_changed.emit(self.config)
        self.records_changed.emit()

    def _use_stored_config(self, stored: dict) -> None:
        from napari_diffseg.core.config import TrainConfig

        self._config = TrainConfig.from_stored(stored)

    def refresh_round(self) -> None:
        if self.project is not None and self.project.current_round != self.round:
            self.round = self.project.current_round
            self.round_changed.emit(self.round)

    # ------------------------------------------------------------------ training settings
    @property
    def config(self) -> TrainConfig:
        """The training settings (the defaults until set, or until a project with stored settings is opened)."""
        if self._config is None:
            from napari_diffseg.core.config import TrainConfig

            self._config = TrainConfig()
        return self._config

    @config.setter
    def config(self, config: TrainConfig) -> None:
        self._config = config
        self.config_changed.emit(config)

    def update_config(self, **changes: Any) -> TrainConfig:
        """Replace some settings (validated by TrainConfig: InputError for impossible values)."""
        self.config = self.config.replace(**changes)
        return self._config

    # ------------------------------------------------------------------ status
    @property
    def busy(self) -> bool:
        return self.status in (Status.RUNNING, Status.STOPPING)

    def clear_failure(self) -> None:
        """Back to idle after a failed run once the user changed something (its error was shown already)."""
        if self.status == Status.FAILED:
            self.last_error = ""
            self.set_status(Status.IDLE)

    def set_status(self, status: Status) -> None:
        if status != self.status:
            log.debug("training status %s -> %s", self.status.value, status.value)
            self.status = status
            self.status_changed.emit(status)


_REGISTRY: weakref.WeakKeyDictionary[Any, DiffsegState] = weakref.WeakKeyDictionary()


def state_for_viewer(viewer: Any) -> DiffsegState:
    """The state of ``viewer`` (created on first use); napari's proxy of the viewer maps to the same state."""
    key = getattr(viewer, "__wrapped__", viewer)  # napari hands plugins a PublicOnlyProxy of the viewer
    state = _REGISTRY.get(key)
    if state is None:
        state = _REGISTRY[key] = DiffsegState()
    return state
