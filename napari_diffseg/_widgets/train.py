"""Train panel: the training settings (time budget and labels-only up front, the rest folded under "Advanced"),
the torch build and device in use, Start / Stop, stage / step / elapsed / remaining time and a live loss plot.

Training runs in a background worker (``napari_diffseg._workers``); this panel only mirrors the shared state.
Progress events only record the latest step and the new loss point; a timer applies them to the labels, the
progress bar and the loss plot at most twice a second, so fast training steps never flood the GUI event loop
(every repaint of a widget recomposes the whole napari window, which costs ~10 ms or more without a GPU).
The loss plot lives in ``_loss_plot``.

The stage and status lines always say what is true now: after Done, Stop or a failure, and when a project is opened
(a run of its current round that was stopped or killed is offered for resume: ``_state.stopped_run``). A read-only
project cannot train (the panel says so; Start is off).
"""

from __future__ import annotations

import logging
from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QProgressBar,
                            QPushButton, QSpinBox, QToolButton, QVBoxLayout, QWidget)

from napari_diffseg._state import DiffsegState, Status, state_for_viewer, stopped_run
from napari_diffseg._widgets._closing import guard_closing
from napari_diffseg._widgets._common import (connect_until_destroyed, forward_review_keys, user_errors, widget_grid,
                                            wrapping_label)
from napari_diffseg._widgets._loss_plot import PLOT_HELP, LossPlot
from napari_diffseg._workers import (KEEP_THREADS, error_message, import_torch_once, notify_collapse, notify_error,
                                     start_job, start_pretraining, start_training, stop_pretraining, stop_training,
                                     torch_loaded)
from napari_diffseg.core.method.config import LIMITS, Layout
from napari_diffseg.core.errors import DiffsegError
from napari_diffseg.core.method.events import (CheckpointSaved, Done, PlanChosen, Progress, PseudoLabelsReady,
                                               RoundStarted, StageProgress)
from napari_diffseg.core.data.io import format_duration

log = logging.getLogger(__name__)

PLOT_INTERVAL_MS = 500  # the progress display (labels, bar, loss plot) is refreshed at most this often
DEVICES = ("auto", "cpu", "cuda", "mps")
MIN_BUDGET_SECONDS = 10  # the smallest time budget offered when no step limit ends the run
STAGE_NAMES = {"pretrain": "1 · teacher pretraining (no labels)", "cotrain": "2 · teacher-student co-training",
               "supervised": "supervised (labelled images only)", "starting": "starting (reading the images)",
               "pseudo_labels": "pseudo-labels for review (the clock is paused)",
               "saving": "writing the model (the clock is paused)"}


ADVANCED_HELP = {  # the tooltip of each Advanced field (and of its label)
    "rounds": "Pseudo-label rounds K: how often, in a co-training step, the teacher rebuilds the image from its own "
              "mask and learns from the result (0 = never). More rounds: slower steps.",
    "chained": "Each pseudo-label round starts from the previous round's mask instead of the teacher's first one.",
    "width": "Base channels of the two U-Nets: wider learns more but trains slower and needs more memory. A new "
             "width cannot warm-start from an earlier round (it trains from scratch).",
    "patch": "Edge of the training patches in pixels (all axes); auto = 128 (2D) / 32x64x64 (3D). Larger patches see "
             "more context per step; each step takes longer.",
    "steps": "Stop after this many optimisation steps. With a step limit the time budget may be 'no time limit'; "
             "otherwise the budget alone ends the round.",
    "seed": "Random seed: the same seed, images, labels and settings train the same model.",
    "device": "Where training runs: auto takes a GPU (CUDA, Apple MPS) when there is one, else the CPU.",
    "layout": "Volumes: auto lets the planner choose (its plan shows below while training); 2d trains a network on "
              "slices, 3d one on 3D patches, both trains the two one after the other (half the time each) and "
              "averages their probabilities. 2D images always train in 2d.",
}


def budget_help() -> str:
    """What the time budget means, with the default of the training settings (core.method.config.TrainConfig)."""
    from napari_diffseg.core.method.config import TrainConfig

    default = TrainConfig().schedule.budget_seconds
    default_text = format_duration(default, clock=True) if default else "no time limit"
    return (f"Optimisation time per round (default {default_text}); writing pseudo-labels and the model does not "
            "count.")


def _range(setting: str) -> tuple[int, int]:
    """A spin box range from the setting's bounds in core.method.config.LIMITS (the CLI checks the same bounds)."""
    bounds = LIMITS[setting]
    return int(bounds.minimum), int(bounds.maximum if bounds.maximum is not None else 2**31 - 1)


class TrainPanel(QWidget):
    """Settings, Start / Stop, progress and the loss plot of the project's training."""

    def __init__(self, viewer: Any, state: DiffsegState, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = viewer
        self.state = state
        self._syncing = False
        self._torch_loader: Any = None  # the worker importing torch the first time

        self.round_label = QLabel("")
        self.budget = QSpinBox()
        self.budget.setRange(0, 7 * 24 * 3600)
        self.budget.setSingleStep(60)
        self.budget.setSuffix(" s")
        self.budget.setSpecialValueText("no time limit")
        self.budget.setToolTip("Training time of one round; the run stops by itself after it and the learning rate "
                               "anneals over it. \"No time limit\" needs a step limit (Advanced).")
        self.budget_help = wrapping_label(budget_help())
        self.labels_only = QCheckBox("labelled images only")
        self.labels_only.setToolTip("The supervised baseline: the networks learn from the labelled images alone and "
                                    "the unlabelled ones are not used (no pseudo-labels to review).")

        self.advanced_toggle = QToolButton()
        self.advanced_toggle.setText("Advanced")
        self.advanced_toggle.setCheckable(True)
        self.advanced_toggle.toggled.connect(self._toggle_advanced)
        self.advanced = QGroupBox()
        form = QFormLayout(self.advanced)
        self.rounds = QSpinBox()
        self.rounds.setRange(*_range("rounds"))
        self.chained = QCheckBox("chained rounds")
        self.width = QSpinBox()
        self.width.setRange(*_range("base_channels"))
        self.patch = QSpinBox()
        self.patch.setRange(0, _range("patch_edge")[1])  # 0: auto
        self.patch.setSingleStep(16)
        self.patch.setSpecialValueText("auto")
        self.max_steps = QSpinBox()
        self.max_steps.setRange(0, 10_000_000)  # 0: no step limit (else LIMITS["max_steps"], from 1)
        self.max_steps.setSpecialValueText("no step limit")
        self.seed = QSpinBox()
        self.seed.setRange(*_range("seed"))
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.layout_choice = QComboBox()
        self.layout_choice.addItems([layout.value for layout in Layout])
        self.resume = QCheckBox("resume the stopped run")
        self.resume.setToolTip("Continue the stopped run of this round from its last.pt (its steps, clock and "
                               "optimisers); untick to train the round from its start again.")
        self.resume.setVisible(False)  # shown while the current round has a stopped run (_state.stopped_run)
        for label, widget, key in (("pseudo-label rounds", self.rounds, "rounds"), (None, self.chained, "chained"),
                                   ("network width", self.width, "width"), ("patch size", self.patch, "patch"),
                                   ("steps", self.max_steps, "steps"), ("seed", self.seed, "seed"),
                                   ("device", self.device, "device"), ("volumes as", self.layout_choice, "layout")):
            widget.setToolTip(ADVANCED_HELP[key])
            if label is None:
                form.addRow(widget)
            else:
                title = QLabel(label)
                title.setToolTip(ADVANCED_HELP[key])
                form.addRow(title, widget)
        form.addRow(QLabel("Hover over a field for what it does."))
        self.advanced.setVisible(False)

        self.torch_label = wrapping_label("")
        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.stage_label = wrapping_label("stage: -")
        self.step_label = QLabel("step: -")
        self.elapsed_label = QLabel("elapsed: -")
        self.remaining_label = QLabel("remaining: -")
        self.status_label = wrapping_label("")
        self.plan_label = wrapping_label("")  # the run's plan (core/method/planner.py): layout, scale, patch, why
        self.plot = LossPlot()
        self.plot.set_points(state.losses)
        self.plot_help = wrapping_label(PLOT_HELP)
        self.pretrain_check = QCheckBox("pretrain the teacher while I label")
        self.pretrain_check.setChecked(state.pretrain_enabled)
        self.pretrain_check.setToolTip("Stage 1 of the method needs no labels: it runs in the background (one "
                                       "thread, lowest priority) until you press Start; round 1 then co-trains "
                                       "from this teacher.")
        self.pretrain_label = wrapping_label("")

        settings = QFormLayout()
        settings.addRow("time budget", self.budget)
        options = QVBoxLayout()  # (wrapping labels get their height in a box layout; a form row clips them)
        for widget in (self.budget_help, self.labels_only, self.pretrain_check, self.pretrain_label):
            options.addWidget(widget)
        layout = QVBoxLayout(self)
        layout.addWidget(self.round_label)
        layout.addLayout(settings)
        layout.addLayout(options)
        layout.addWidget(self.advanced_toggle)
        layout.addWidget(self.advanced)
        layout.addWidget(self.torch_label)
        layout.addWidget(self.resume)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.stage_label)
        layout.addWidget(self.plan_label)
        layout.addWidget(widget_grid(self.step_label, self.elapsed_label, self.remaining_label, columns=2))
        layout.addWidget(self.plot)
        layout.addWidget(self.plot_help)
        layout.addWidget(self.status_label)
        self._shortcuts = forward_review_keys(self, viewer, state)  # the review keys work here too

        self.budget.valueChanged.connect(lambda v: self._apply(budget_seconds=float(v) if v else None))
        self.labels_only.toggled.connect(lambda v: self._apply(labels_only=bool(v)))
        self.rounds.valueChanged.connect(lambda v: self._apply(rounds=int(v)))
        self.chained.toggled.connect(lambda v: self._apply(chained_rounds=bool(v)))
        self.width.valueChanged.connect(lambda v: self._apply(base_channels=int(v)))
        self.patch.valueChanged.connect(self._apply_patch)
        self.max_steps.valueChanged.connect(lambda v: self._apply(max_steps=int(v) if v else None))
        self.seed.valueChanged.connect(lambda v: self._apply(seed=int(v)))
        self.device.currentTextChanged.connect(self._apply_device)
        self.layout_choice.currentTextChanged.connect(lambda v: self._apply(layout=v))

        self._pending_progress: Any = None  # the latest Progress event not shown yet
        self.plot_timer = QTimer(self)
        self.plot_timer.setInterval(PLOT_INTERVAL_MS)
        self.plot_timer.timeout.connect(self._refresh_progress)
        self.plot_timer.start()

        connect_until_destroyed(self, state.config_changed, self._sync_from_config)
        connect_until_destroyed(self, state.status_changed, self._on_status)
        connect_until_destroyed(self, state.training_event, self._on_event)
        connect_until_destroyed(self, state.round_changed, self._on_round)
        connect_until_destroyed(self, state.pretrain_changed, self._show_pretraining)
        connect_until_destroyed(self, state.records_changed, self._maybe_pretrain)  # e.g. the first images added
        self.pretrain_check.toggled.connect(self._toggle_pretraining)
        self.destroyed.connect(lambda *_: stop_pretraining(state))
        connect_until_destroyed(self, state.project_changed, self._on_project)
        self._sync_from_config(state.config)
        self._update_torch_label()
        self._on_round(state.round)
        self._on_status(state.status)

    # ------------------------------------------------------------------ settings <-> state
    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt naming
        super().showEvent(event)
        guard_closing(self, self.state)

    def _toggle_advanced(self, shown: bool) -> None:
        self.advanced.setVisible(shown)
        self.advanced_toggle.setText("Advanced ▾" if shown else "Advanced")

    def _sync_from_config(self, config: Any) -> None:
        self._syncing = True
        try:
            # "no time limit" (0) only exists while a step limit ends the run: the schedules need a known end
            self.budget.setMinimum(0 if config.schedule.max_steps else MIN_BUDGET_SECONDS)
            self.budget.setValue(int(config.schedule.budget_seconds or 0))
            self.labels_only.setChecked(bool(config.method.labels_only))
            self.rounds.setValue(int(config.method.rounds))
            self.chained.setChecked(bool(config.method.chained_rounds))
            self.width.setValue(int(config.network.base_channels))
            self.patch.setValue(int(config.schedule.patch_size[-1]) if config.schedule.patch_size else 0)
            self.max_steps.setValue(int(config.schedule.max_steps or 0))
            self.seed.setValue(int(config.runtime.seed))
            device = str(config.runtime.device)
            if self.device.findText(device) < 0:
                self.device.addItem(device)
            self.device.setCurrentText(device)
            self.layout_choice.setCurrentText(str(config.network.layout))
        finally:
            self._syncing = False

    def _apply(self, **changes: Any) -> None:
        if self._syncing:
            return
        try:
            self.state.update_config(**changes)
        except DiffsegError as error:
            notify_error(error_message(error))
            self._sync_from_config(self.state.config)

    @user_errors
    def _apply_patch(self, value: int) -> None:
        if self._syncing:
            return
        patch_size = self.state.config.schedule.patch_size
        dims = len(patch_size) if patch_size else self._spatial_dims()
        self._apply(patch_size=(int(value),) * dims if value else None)

    def _spatial_dims(self) -> int:
        project = self.state.project
        names = [] if project is None else project.names()
        if not names:
            return 2
        from napari_diffseg.core.data.io import image_layout

        return image_layout(project.image(names[0]))[0]

    def _apply_device(self, device: str) -> None:
        self._apply(device=device)
        self._update_torch_label()

    def _update_torch_label(self) -> None:
        """The torch version, device and threads; the first import of torch (seconds) runs in a worker thread, so
        that opening the panel never freezes the viewer."""
        if torch_loaded():
            self.torch_label.setText(_describe_torch(self.state.config))
            return
        if self._torch_loader is not None:
            return
        self.torch_label.setText("torch: loading…")
        config = self.state.config

        def load():
            import_torch_once(optimisers=False)  # training jobs import the rest (torch._dynamo) when they start
            yield _describe_torch(config)

        def loaded(text: str) -> None:
            self._torch_loader = None
            self.torch_label.setText(text)

        self._torch_loader = start_job(load, loaded, threads=KEEP_THREADS, needs_torch=False)

    # ------------------------------------------------------------------ run
    def start(self) -> Any:
        """Start training the current round; returns the worker (None when it cannot start)."""
        if not self.resume.isHidden() and self.resume.isChecked():
            return start_training(self.state, resume=True)
        return start_training(self.state)

    def stop(self) -> None:
        stop_training(self.state)

    def _on_project(self, *_: Any) -> None:
        self._on_status(self.state.status)
        self.state.pretrain_seconds = 0.0
        stop_pretraining(self.state)  # the new project's pretraining starts when the old one has stopped
        self._maybe_pretrain()

    # ------------------------------------------------------------------ background pretraining
    def _maybe_pretrain(self, *_: Any) -> None:
        start_pretraining(self.state)
        self._show_pretraining(self.state.pretrain_seconds)

    def _toggle_pretraining(self, enabled: bool) -> None:
        self.state.pretrain_enabled = bool(enabled)
        if enabled:
            self._maybe_pretrain()
        else:
            stop_pretraining(self.state)

    def _show_pretraining(self, seconds: float) -> None:
        running = self.state.pretrain_worker is not None
        if running:
            text = f"teacher pretraining in the background: {format_duration(seconds, clock=True)}"
        elif seconds > 0:
            text = f"teacher pretrained: {format_duration(seconds, clock=True)} (round 1 starts from it)"
        else:
            text = ""
        self.pretrain_label.setText(text)
        self.pretrain_label.setVisible(bool(text))  # an empty line would push the plot down

    def _on_round(self, round_: int) -> None:
        self.round_label.setText(f"Round {round_}" if round_ else "No project open")

    def _on_status(self, status: Status) -> None:
        if not self.state.busy:
            self._refresh_progress()  # the last steps of a stopped or failed run
            self._maybe_pretrain()  # e.g. after a failed first round
        project, busy, read_only = self.state.project, self.state.busy, self.state.read_only
        stopped = None if busy else stopped_run(project)
        self.start_button.setEnabled(project is not None and not busy and not read_only)
        self.stop_button.setEnabled(status == Status.RUNNING)
        for widget in (self.budget, self.labels_only, self.advanced, self.resume):
            widget.setEnabled(not busy)
        self.pretrain_check.setEnabled(not read_only)
        if (stopped is not None) != (not self.resume.isHidden()):
            self.resume.setChecked(stopped is not None)  # offered, and ticked, while there is a run to resume
            self.resume.setVisible(stopped is not None)
        if stopped is not None:  # (the status line says which; a check box's text never wraps)
            self.resume.setToolTip(f"Continue round {stopped.round} from step {stopped.step} (its last.pt: steps, "
                                   "clock and optimisers); untick to train the round from its start again.")
        status_text, stage_text = self._describe(status, stopped)
        self.status_label.setText(status_text)
        if stage_text is not None:
            self.stage_label.setText(f"stage: {stage_text}")
        if status == Status.RUNNING:
            self._reset_progress("starting")
        self._update_torch_label()

    def _describe(self, status: Status, stopped: Any) -> tuple[str, str | None]:
        """(status line, stage line or None to keep it) for a status: always what is true now."""
        project, step = self.state.project, self.state.step
        if status == Status.IDLE:
            if project is None:
                return "Open or create a project first (Project panel).", "-"
            if self.state.read_only:
                return ("Read-only project: training is off (its folder is not writable). Predict still works, "
                        "with the output written elsewhere."), "-"
            if stopped is not None:
                return (f"Stopped at step {stopped.step} of round {stopped.round}; last.pt saved. Start resumes it "
                        "(untick 'resume' to train the round from its start)."), f"stopped at step {stopped.step}"
            if step:
                return f"Stopped at step {step}.", f"stopped at step {step}"
            return "Ready.", "-"
        if status == Status.RUNNING:
            return "Training…", None
        if status == Status.STOPPING:
            return "Stopping at the next step (saving last.pt)…", None
        if status == Status.DONE:
            return ("Done: review the pseudo-labels (Review panel) or segment new images (Predict panel).",
                    f"finished at step {step}")
        return f"Failed: {self.state.last_error}", (f"failed at step {step}" if step else "did not start")

    def _refresh_progress(self) -> None:
        """Show the latest progress (timer slot, and when the run ends): labels, bar and loss plot."""
        event, self._pending_progress = self._pending_progress, None
        if event is not None:
            self.progress.setValue(int(round(event.fraction * 1000)))
            self.stage_label.setText(f"stage: {STAGE_NAMES.get(event.stage, event.stage)}")
            self.step_label.setText(f"step: {event.step}")
            self.elapsed_label.setText(f"elapsed: {format_duration(event.elapsed, clock=True)}")
            self.remaining_label.setText(f"remaining: {format_duration(event.remaining, clock=True)}")
        self.plot.redraw_if_needed()

    def _reset_progress(self, stage: str) -> None:
        """A new run or round: nothing of the previous one stays on screen."""
        self._pending_progress = None
        self.progress.setValue(0)
        self.stage_label.setText(f"stage: {STAGE_NAMES.get(stage, stage)}")
        for label, text in ((self.step_label, "step: 0"), (self.elapsed_label, "elapsed: -"),
                            (self.remaining_label, "remaining: -")):
            label.setText(text)
        self.plot.set_points(self.state.losses)  # the new run's list (start_training makes a new one)
        self.plot.redraw()

    def _on_event(self, event: Any) -> None:
        if isinstance(event, StageProgress):  # a pass outside the optimisation steps, shown at once
            self._refresh_progress()
            self.stage_label.setText(f"stage: {STAGE_NAMES.get(event.stage, event.stage)} · "
                                     f"{event.done}/{event.total}")
        elif isinstance(event, Progress):  # cheap: shown by the next _refresh_progress
            self._pending_progress = event
            self.plot.set_points(self.state.losses)  # the worker bridge appended the step's losses to it
        elif isinstance(event, PlanChosen):
            self.plan_label.setText(event.text)
        elif isinstance(event, RoundStarted):
            self._reset_progress("starting")
            self.status_label.setText(f"Round {event.round}: {event.note} ({event.labelled} labelled, "
                                      f"{event.unlabelled} unlabelled images)")
        elif isinstance(event, PseudoLabelsReady):
            self.status_label.setText(f"Pseudo-labels of {len(event.names)} image(s) ready at step {event.step} "
                                      "(Review panel).")
        elif isinstance(event, CheckpointSaved) and event.fit is not None:
            self.status_label.setText(f"Model written at step {event.fit.step}: Dice {event.fit.kept_dice:.3f} "
                                      "on the labelled (training) images.")
        elif isinstance(event, Done):
            self._refresh_progress()
            self.progress.setValue(1000)
            if event.fit is not None and event.fit.collapse:
                notify_collapse(event.fit)


def _describe_torch(config: Any) -> str:
    from napari_diffseg.core.device import default_threads, describe_torch, select_device

    try:  # the worker sets these threads for itself (cores - 1 by default)
        return describe_torch(select_device(config.runtime.device), config.runtime.threads or default_threads())
    except DiffsegError as error:
        return f"device not available: {error}"


class TrainWidget(TrainPanel):
    """npe2 entry point: the Train panel of the viewer's shared state."""

    def __init__(self, napari_viewer: Any):
        super().__init__(napari_viewer, state_for_viewer(napari_viewer))
