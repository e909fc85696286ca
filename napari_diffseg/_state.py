"""The evented state shared by the napari panels of one viewer: the open project, the training settings, and the
status of the training run (idle / running / stopping / done / failed, round, step, losses), whether the project is
open read-only (:func:`folder_writable`, a real write probe), and the run of the current round that was stopped or
killed before it finished (:func:`stopped_run`, from a note kept in the project while a run goes on).

Panels receive the state in their constructors and talk to each other only through its signals (psygnal, which
ships with napari; no Qt needed here). Signals are emitted on the GUI thread: the worker bridge
(``napari_diffseg._workers``) relays worker events to the state from Qt slots.

Per-viewer registry: napari creates dock widgets through npe2 with only the viewer, so
:func:`state_for_viewer` finds or creates the one state of that viewer in a ``WeakKeyDictionary`` keyed by the
viewer. That is a registry, not a global state: each viewer has its own state, and it goes away with its viewer
(the state never holds a reference to the viewer). Importing this module does not import torch: the training
settings (``core.method.training.TrainConfig``) are built on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
import uuid
import weakref

from psygnal import Signal

from napari_diffseg.core.errors import DiffsegError, InputError
from napari_diffseg.core.data.io import LAST
from napari_diffseg.core.project.store import DB_NAME, Project

if TYPE_CHECKING:
    from napari_diffseg.core.method.config import TrainConfig

log = logging.getLogger(__name__)


# the default of the Train panel's "pretrain the teacher while I label": off, because stage 1 before co-training
# gained nothing in 3 minutes and cost GlaS 2-3 Dice points after 15 (benchmarks/quality/ABLATIONS.md)
PRETRAIN_IN_BACKGROUND = False


UNFINISHED_RUN_KEY = "gui_unfinished_run"  # in the project's config: {"round": k} from the first step of a run in
# napari until it ends with Done; what stays there after a Stop, a close or a killed napari makes stopped_run offer a
# resume (a run refused or failed before its first step leaves it as it was)


def folder_writable(folder: Path) -> bool:
    """Whether this process can write in the project ``folder``: a real probe (a hidden file created and removed, and
    the manifest opened for writing without changing it), because permission bits say nothing for root or on a
    read-only mount. Tests replace this function to force a read-only project."""
    probe = Path(folder) / f".diffseg-write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "x", encoding="utf-8"):
            pass
        probe.unlink()
        with open(Path(folder) / DB_NAME, "r+b"):
            pass
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class StoppedRun:
    """A training run of the project's current round that was stopped or killed before it finished: its
    ``last.pt`` can be resumed (optimisers, step and clock)."""

    round: int
    step: int  # the last step whose losses were logged (0 when none were)
    checkpoint: Path


def stopped_run(project: Project | None) -> StoppedRun | None:
    """The current round's run that napari started and that did not finish (stopped, closed, killed, crashed),
    when its ``last.pt`` is there to resume from. The engine writes the same files for a finished and a stopped run
    (last.pt, best.pt, the card), so the start and the end of each run are noted in the project
    (:func:`note_unfinished_run`)."""
    if project is None:
        return None
    try:
        round_ = project.current_round
        noted = project.config.get(UNFINISHED_RUN_KEY) or {}
        last = project.checkpoints_dir(round_, create=False) / LAST
        if noted.get("round") != round_ or not last.is_file():
            return None
        steps = [entry.step for entry in project.loss_history(round_number=round_)]
    except (OSError, DiffsegError):
        return None
    return StoppedRun(round_, max(steps, default=0), last)


def note_unfinished_run(project: Project, round_: int | None) -> None:
    """Note that a run of ``round_`` made its first step (None: that it finished). A project that cannot be written
    trains nothing, so a failed note is only logged."""
    try:
        project.update_config({UNFINISHED_RUN_KEY: None if round_ is None else {"round": int(round_)}})
    except DiffsegError as error:
        log.warning("could not note the training run in the project: %s", error)


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
    training_event = Signal(object)  # core.method.training.TrainingEvent (and core.project.rounds.RoundStarted)
    records_changed = Signal()  # image statuses / pseudo-labels / labels in the project changed
    error = Signal(str)  # one-line message of the last failure
    image_shown = Signal(str, str)  # ("annotate" | "review", image name): a panel's layers now show that image
    pretrain_changed = Signal(float)  # seconds the teacher has pretrained in the background (also on start/stop)
    review_keys_bound = Signal(bool)  # the Review panel bound (True) or removed (False) its keys on the viewer

    def __init__(self) -> None:
        self.project: Project | None = None
        self.read_only = False  # the open project's folder cannot be written: look, predict and export elsewhere
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
        self.review_keys_active = False  # whether the review keys are bound (the Review panel is on screen)

    def set_review_keys_active(self, active: bool) -> None:
        if active != self.review_keys_active:
            self.review_keys_active = active
            self.review_keys_bound.emit(active)

    # ------------------------------------------------------------------ project
    def set_project(self, project: Project | None) -> None:
        """Make ``project`` the open project; its stored training settings (if any) become the settings."""
        if self.busy:
            raise RuntimeError("cannot change the project while training runs")
        self.project = project
        self.read_only = project is not None and not folder_writable(project.folder)
        stored = None if project is None else project.config.get("train")
        if stored:
            self._use_stored_config(dict(stored))
        if project is not None and self.config.network.num_classes != project.num_classes:
            # the project's classes decide (3 for an objects project): a training with others is refused
            self._config = self.config.replace(num_classes=project.num_classes)
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
        from napari_diffseg.core.method.config import TrainConfig

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
            from napari_diffseg.core.method.config import TrainConfig

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

    def require_writable(self, action: str) -> None:
        """InputError when the open project is read-only; ``action`` says what could not be done ("accept")."""
        if self.project is not None and self.read_only:
            raise InputError(f"cannot {action}: the project is open read-only (its folder is not writable); copy it "
                             f"to a writable folder to change it: {self.project.folder}")

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
