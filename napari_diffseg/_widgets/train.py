"""Train panel: the training settings (time budget and labels-only up front, the rest folded under "Advanced"),
the torch build and device in use, Start / Stop, stage / step / elapsed / remaining time and a live loss plot.

Training runs in a background worker (``napari_diffseg._workers``); this panel only mirrors the shared state.
The loss plot is redrawn at most twice a second (a timer picks up new points), so fast training steps never
flood the GUI event loop. It uses matplotlib when available and a text sparkline otherwise.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QProgressBar,
                            QPushButton, QSpinBox, QToolButton, QVBoxLayout, QWidget)

from napari_diffseg._state import DiffsegState, Status, state_for_viewer
from napari_diffseg._widgets._common import connect_until_destroyed, format_duration, user_errors, wrapping_label
from napari_diffseg._workers import error_message, notify_error, start_training, stop_training
from napari_diffseg.core.errors import DiffsegError

log = logging.getLogger(__name__)

PLOT_INTERVAL_MS = 500
DEVICES = ("auto", "cpu", "cuda", "mps")
STAGE_NAMES = {"pretrain": "1 · teacher pretraining (no labels)", "cotrain": "2 · teacher-student co-training",
               "supervised": "supervised (labelled images only)"}
PLOTTED_LOSS = ("total", "supervised", "reconstruction")  # the first one present is plotted
STAGE_COLOURS = {"pretrain": "tab:orange", "cotrain": "tab:blue", "supervised": "tab:green"}


def plotted_value(losses: dict[str, float]) -> float | None:
    """The loss plotted for one step: 'total', else 'supervised', else 'reconstruction'."""
    for key in PLOTTED_LOSS:
        if key in losses:
            return float(losses[key])
    return None


class LossPlot(QWidget):
    """Loss per step, one line per stage; ``set_points`` is cheap, ``redraw`` draws (about 20 ms with matplotlib:
    the lines are updated in place, no layout pass)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.points: list[tuple[int, str, float]] = []
        self.draws = 0
        self._dirty = False
        self._lines: dict[str, Any] = {}
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        try:
            from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
            from matplotlib.figure import Figure
        except ImportError:  # matplotlib is optional: fall back to a text sparkline
            self.canvas = None
            self.axes = None
            self.sparkline = QLabel("")
            layout.addWidget(self.sparkline)
        else:
            self.figure = Figure(figsize=(4, 2.2))
            self.figure.subplots_adjust(left=0.16, right=0.97, bottom=0.2, top=0.95)
            self.axes = self.figure.add_subplot(111)
            self.axes.set_xlabel("step", fontsize=8)
            self.axes.set_ylabel("loss", fontsize=8)
            self.axes.tick_params(labelsize=7)
            self.canvas = FigureCanvasQTAgg(self.figure)
            self.canvas.setFixedHeight(180)  # a resize redraws synchronously: keep layout changes from causing it
            layout.addWidget(self.canvas)
            self.sparkline = None

    def set_points(self, points: list[tuple[int, str, float]]) -> None:
        self.points = points
        self._dirty = True

    def redraw_if_needed(self) -> None:
        if self._dirty:
            self.redraw()

    def redraw(self) -> None:
        self._dirty = False
        self.draws += 1
        finite = [(s, st, v) for s, st, v in self.points if math.isfinite(v)]
        if self.canvas is None:
            self.sparkline.setText(_sparkline([v for _, _, v in finite][-60:]))
            return
        axes = self.axes
        stages = list(dict.fromkeys(st for _, st, _ in finite))
        for stage in list(self._lines):
            if stage not in stages:
                self._lines.pop(stage).remove()
        for stage in stages:
            if stage not in self._lines:
                (self._lines[stage],) = axes.plot([], [], color=STAGE_COLOURS.get(stage), linewidth=1, label=stage)
            self._lines[stage].set_data([s for s, st, _ in finite if st == stage],
                                        [v for _, st, v in finite if st == stage])
        wanted_scale = "log" if finite and min(v for _, _, v in finite) > 0 else "linear"
        if axes.get_yscale() != wanted_scale:
            axes.set_yscale(wanted_scale)
        axes.relim()
        axes.autoscale_view()
        legend = axes.get_legend()
        if stages and (legend is None or len(legend.get_texts()) != len(stages)):
            axes.legend(fontsize=7, loc="upper right")
        elif not stages and legend is not None:
            legend.remove()
        self.canvas.draw_idle()


def _sparkline(values: list[float]) -> str:
    if not values:
        return ""
    bars = "▁▂▃▄▅▆▇█"
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(bars[min(7, int((v - low) / span * 7.999))] for v in values)


class TrainPanel(QWidget):
    """Settings, Start / Stop, progress and the loss plot of the project's training."""

    def __init__(self, viewer: Any, state: DiffsegState, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = viewer
        self.state = state
        self._syncing = False

        self.round_label = QLabel("")
        self.budget = QSpinBox()
        self.budget.setRange(0, 7 * 24 * 3600)
        self.budget.setSingleStep(60)
        self.budget.setSuffix(" s")
        self.budget.setSpecialValueText("no time limit")
        self.budget.setToolTip("Training time (wall clock) of one round; the run stops by itself after it.")
        self.labels_only = QCheckBox("labelled images only (supervised baseline)")

        self.advanced_toggle = QToolButton()
        self.advanced_toggle.setText("Advanced")
        self.advanced_toggle.setCheckable(True)
        self.advanced_toggle.toggled.connect(self._toggle_advanced)
        self.advanced = QGroupBox()
        form = QFormLayout(self.advanced)
        self.rounds = QSpinBox()
        self.rounds.setRange(0, 10)
        self.rounds.setToolTip("pseudo-label rounds K of the co-training (0 = none)")
        self.chained = QCheckBox("chained rounds")
        self.width = QSpinBox()
        self.width.setRange(4, 128)
        self.width.setToolTip("base channels of the U-Nets")
        self.patch = QSpinBox()
        self.patch.setRange(0, 1024)
        self.patch.setSingleStep(16)
        self.patch.setSpecialValueText("auto")
        self.patch.setToolTip("edge of the training patches in pixels (all axes); auto = 128 (2D) / 32x64x64 (3D)")
        self.max_steps = QSpinBox()
        self.max_steps.setRange(0, 10_000_000)
        self.max_steps.setSpecialValueText("no step limit")
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.resume = QCheckBox("resume the stopped run of this round")
        form.addRow("pseudo-label rounds", self.rounds)
        form.addRow(self.chained)
        form.addRow("network width", self.width)
        form.addRow("patch size", self.patch)
        form.addRow("steps", self.max_steps)
        form.addRow("seed", self.seed)
        form.addRow("device", self.device)
        form.addRow(self.resume)
        self.advanced.setVisible(False)

        self.torch_label = wrapping_label("")
        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.stage_label = QLabel("stage: -")
        self.step_label = QLabel("step: -")
        self.elapsed_label = QLabel("elapsed: -")
        self.remaining_label = QLabel("remaining: -")
        self.status_label = wrapping_label("")
        self.plot = LossPlot()

        settings = QFormLayout()
        settings.addRow("time budget", self.budget)
        settings.addRow(self.labels_only)
        layout = QVBoxLayout(self)
        layout.addWidget(self.round_label)
        layout.addLayout(settings)
        layout.addWidget(self.advanced_toggle)
        layout.addWidget(self.advanced)
        layout.addWidget(self.torch_label)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        times = QHBoxLayout()
        for label in (self.step_label, self.elapsed_label, self.remaining_label):
            times.addWidget(label)
        layout.addWidget(self.stage_label)
        layout.addLayout(times)
        layout.addWidget(self.plot)
        layout.addWidget(self.status_label)

        self.budget.valueChanged.connect(lambda v: self._apply(budget_seconds=float(v) if v else None))
        self.labels_only.toggled.connect(lambda v: self._apply(labels_only=bool(v)))
        self.rounds.valueChanged.connect(lambda v: self._apply(rounds=int(v)))
        self.chained.toggled.connect(lambda v: self._apply(chained_rounds=bool(v)))
        self.width.valueChanged.connect(lambda v: self._apply(base_channels=int(v)))
        self.patch.valueChanged.connect(self._apply_patch)
        self.max_steps.valueChanged.connect(lambda v: self._apply(max_steps=int(v) if v else None))
        self.seed.valueChanged.connect(lambda v: self._apply(seed=int(v)))
        self.device.currentTextChanged.connect(self._apply_device)

        self.plot_timer = QTimer(self)
        self.plot_timer.setInterval(PLOT_INTERVAL_MS)
        self.plot_timer.timeout.connect(self.plot.redraw_if_needed)
        self.plot_timer.start()

        connect_until_destroyed(self, state.config_changed, self._sync_from_config)
        connect_until_destroyed(self, state.status_changed, self._on_status)
        connect_until_destroyed(self, state.training_event, self._on_event)
        connect_until_destroyed(self, state.round_changed, self._on_round)
        connect_until_destroyed(self, state.project_changed, self._on_project)
        self._sync_from_config(state.config)
        self._update_torch_label()
        self._on_round(state.round)
        self._on_status(state.status)

    # ------------------------------------------------------------------ settings <-> state
    def _toggle_advanced(self, shown: bool) -> None:
        self.advanced.setVisible(shown)
        self.advanced_toggle.setText("Advanced ▾" if shown else "Advanced")

    def _sync_from_config(self, config: Any) -> None:
        self._syncing = True
        try:
            self.budget.setValue(int(config.budget_seconds or 0))
            self.labels_only.setChecked(bool(config.labels_only))
            self.rounds.setValue(int(config.rounds))
            self.chained.setChecked(bool(config.chained_rounds))
            self.width.setValue(int(config.base_channels))
            self.patch.setValue(int(config.patch_size[-1]) if config.patch_size else 0)
            self.max_steps.setValue(int(config.max_steps or 0))
            self.seed.setValue(int(config.seed))
            device = str(config.device)
            if self.device.findText(device) < 0:
                self.device.addItem(device)
            self.device.setCurrentText(device)
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
        dims = len(self.state.config.patch_size) if self.state.config.patch_size else self._spatial_dims()
        self._apply(patch_size=(int(value),) * dims if value else None)

    def _spatial_dims(self) -> int:
        project = self.state.project
        names = [] if project is None else project.names()
        if not names:
            return 2
        from napari_diffseg.core.io import image_layout

        return image_layout(project.image(names[0]))[0]

    def _apply_device(self, device: str) -> None:
        self._apply(device=device)
        self._update_torch_label()

    def _update_torch_label(self) -> None:
        from napari_diffseg.core.device import describe_torch, select_device

        try:
            self.torch_label.setText(describe_torch(select_device(self.state.config.device)))
        except DiffsegError as error:
            self.torch_label.setText(f"device not available: {error}")

    # ------------------------------------------------------------------ run
    def start(self) -> Any:
        """Start training the current round; returns the worker (None when it cannot start)."""
        if self.resume.isChecked():
            return start_training(self.state, resume=True)
        return start_training(self.state)

    def stop(self) -> None:
        stop_training(self.state)

    def _on_project(self, *_: Any) -> None:
        self._on_status(self.state.status)

    def _on_round(self, round_: int) -> None:
        self.round_label.setText(f"Round {round_}" if round_ else "No project open")

    def _on_status(self, status: Status) -> None:
        has_project = self.state.project is not None
        self.start_button.setEnabled(has_project and not self.state.busy)
        self.stop_button.setEnabled(status == Status.RUNNING)
        for widget in (self.budget, self.labels_only, self.advanced):
            widget.setEnabled(not self.state.busy)
        text = {
            Status.IDLE: "Ready." if has_project else "Open or create a project first (Project panel).",
            Status.RUNNING: "Training…",
            Status.STOPPING: "Stopping at the next step (saving last.pt)…",
            Status.DONE: "Done: review the pseudo-labels (Review panel) or segment new images (Predict panel).",
            Status.FAILED: f"Failed: {self.state.last_error}",
        }[status]
        if status == Status.IDLE and self.state.step:
            text = f"Stopped at step {self.state.step}; last.pt saved. Start again, or tick 'resume' under Advanced."
        self.status_label.setText(text)
        if status == Status.RUNNING:
            self.progress.setValue(0)
            self.plot.set_points([])
            self.plot.redraw()
        self._update_torch_label()

    def _on_event(self, event: Any) -> None:
        from napari_diffseg.core.rounds import RoundStarted
        from napari_diffseg.core.training import CheckpointSaved, Done, Progress, PseudoLabelsReady

        if isinstance(event, Progress):
            self.progress.setValue(int(round(event.fraction * 1000)))
            self.stage_label.setText(f"stage: {STAGE_NAMES.get(event.stage, event.stage)}")
            self.step_label.setText(f"step: {event.step}")
            self.elapsed_label.setText(f"elapsed: {format_duration(event.elapsed)}")
            self.remaining_label.setText(f"remaining: {format_duration(event.remaining)}")
            value = plotted_value(event.losses)
            if value is not None:
                self.plot.points.append((event.step, event.stage, value))
                self.plot.set_points(self.plot.points)
        elif isinstance(event, RoundStarted):
            self.status_label.setText(f"Round {event.round}: {event.note} ({event.labelled} labelled, "
                                      f"{event.unlabelled} unlabelled images)")
        elif isinstance(event, PseudoLabelsReady):
            self.status_label.setText(f"Pseudo-labels of {len(event.names)} image(s) ready at step {event.step} "
                                      "(Review panel).")
        elif isinstance(event, CheckpointSaved) and event.kind == "best":
            dice = event.metrics.get("validation", {}).get(event.metrics.get("selected_twin"), {}).get("dice")
            if dice is not None:
                self.status_label.setText(f"Best model so far: Dice {dice:.3f} on the labelled images "
                                          f"(step {event.metrics.get('step')}).")
        elif isinstance(event, Done):
            self.progress.setValue(1000)


class TrainWidget(TrainPanel):
    """npe2 entry point: the Train panel of the viewer's shared state."""

    def __init__(self, napari_viewer: Any):
        super().__init__(napari_viewer, state_for_viewer(napari_viewer))
