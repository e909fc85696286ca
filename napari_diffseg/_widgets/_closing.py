"""Closing napari, or the dock of a DiffSeg panel, while a round trains: ask first.

Three answers (:func:`ask_while_training`, a module-level function that tests replace):

- ``STOP``: stop the run at its next step and wait until its ``last.pt`` is written; the window (or dock) then
  closes, and the project offers to resume the run when it is opened again (``_state.stopped_run``);
- ``KEEP_TRAINING``: the window stays open and closes by itself once the round has ended; a dock closes at once
  while the round trains on (its progress shows again when the Train panel is reopened);
- ``CANCEL``: nothing closes.

Only a close the user can still cancel asks: napari's ``Viewer.close()`` (scripts, tests) tears the viewer down
before its window receives the close event, and such a close goes ahead as before (the worker is stopped by napari
and ``last.pt`` is still written).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any
import weakref

from qtpy.QtWidgets import QApplication, QDockWidget, QMessageBox, QWidget

from napari.utils import notifications

from napari_diffseg._state import DiffsegState
from napari_diffseg._workers import stop_training

log = logging.getLogger(__name__)

STOP, KEEP_TRAINING, CANCEL = "stop", "keep training", "cancel"
STOP_TIMEOUT_S = 60.0  # the longest wait for a stopped run to write its last.pt (a step plus the save)


def ask_while_training(parent: QWidget | None, closing: str) -> str:
    """Ask what to do with the running round before ``closing`` ("napari", "this panel") closes; returns STOP,
    KEEP_TRAINING or CANCEL. Tests replace this function."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle("Training is running")
    box.setText(f"A round is training. Close {closing}?")
    keep_text = ("napari then closes by itself when the round ends." if closing == "napari"
                 else "the round trains on; reopen the Train panel to see it.")
    box.setInformativeText("Stop and keep the run: it stops at its next step and saves last.pt; the project offers "
                           f"to resume it when you open it again.\nKeep training: {keep_text}")
    stop = box.addButton("Stop and keep the run", QMessageBox.ButtonRole.AcceptRole)
    keep = box.addButton("Keep training", QMessageBox.ButtonRole.ActionRole)
    cancel = box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(cancel)
    box.exec()
    clicked = box.clickedButton()
    return STOP if clicked is stop else KEEP_TRAINING if clicked is keep else CANCEL


def stop_and_wait(state: DiffsegState, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop the running round and keep the GUI responding until its worker has finished (``last.pt`` written);
    returns whether it finished in time."""
    stop_training(state)
    deadline = time.monotonic() + timeout_s
    while state.worker is not None and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.01)
    return state.worker is None


class WindowCloseGuard:
    """napari's main window asks before a close during training (see the module's docstring). It wraps the window's
    closeEvent rather than filtering its events: an event filter in Python would run for every event the window
    gets, each call waiting for the GIL that training holds."""

    def __init__(self, window: QWidget, state: DiffsegState):
        self.window = window
        self.state = state
        self.close_when_done = False
        self._close_event = window.closeEvent  # napari's
        window.closeEvent = self.close_event  # PyQt calls an instance's own attribute for a virtual method
        state.status_changed.connect(self._maybe_close)
        window.destroyed.connect(functools.partial(_disconnect, state, self._maybe_close))

    def close_event(self, event: Any) -> None:
        if self.state.busy and self._cancellable() and not self.may_close():
            event.ignore()
            return
        self._close_event(event)

    def _cancellable(self) -> bool:
        """napari's own close (Viewer.close) hides its viewer widget before the window's close event."""
        qt_viewer = getattr(self.window, "_qt_viewer", None)
        return qt_viewer is None or qt_viewer.isVisible()

    def may_close(self) -> bool:
        choice = ask_while_training(self.window, "napari")
        if choice == STOP:
            if not stop_and_wait(self.state):
                notifications.show_warning("the training did not stop in time; napari stays open")
                return False
            return True
        if choice == KEEP_TRAINING:
            self.close_when_done = True
            notifications.show_info("napari closes when the round ends")
        return False

    def _maybe_close(self, *_: Any) -> None:
        if self.close_when_done and not self.state.busy:
            self.close_when_done = False
            self.window.close()


def _disconnect(state: DiffsegState, slot: Any, *_: Any) -> None:
    try:
        state.status_changed.disconnect(slot)
    except (TypeError, ValueError, RuntimeError):
        pass


_GUARDED = "diffseg_close_guard"  # the window's guard (an attribute), the dock's Qt property once guarded


def guard_closing(panel: QWidget, state: DiffsegState) -> None:
    """Make napari's window and the dock holding ``panel`` ask before closing during training (call from the
    panel's showEvent: the dock exists only then; calling again does nothing)."""
    window = panel.window()
    if window is not panel and getattr(window, _GUARDED, None) is None:
        setattr(window, _GUARDED, WindowCloseGuard(window, state))  # (a Python reference keeps its slots alive)
    dock = panel.parentWidget()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    if dock is not None and not dock.property(_GUARDED) and hasattr(dock, "destroyOnClose"):
        dock.setProperty(_GUARDED, True)
        dock.topLevelChanged.connect(functools.partial(_hook_close_button, weakref.ref(dock), state))
        _hook_close_button(weakref.ref(dock), state)


def _hook_close_button(dock_ref: weakref.ref, state: DiffsegState, *_: Any) -> None:
    """napari's dock title bar (rebuilt when the dock floats or docks) has a close button calling destroyOnClose:
    route it through the question."""
    dock = dock_ref()
    button = getattr(getattr(dock, "title", None), "close_button", None)
    if button is None:
        return
    button.clicked.disconnect()
    button.clicked.connect(functools.partial(close_dock, dock_ref, state))


def close_dock(dock_ref: weakref.ref, state: DiffsegState, *_: Any) -> bool:
    """The dock's close button: during training ask first; returns whether the dock closed."""
    dock = dock_ref()
    if dock is None:
        return False
    if state.busy:
        choice = ask_while_training(dock, "this panel")
        if choice == CANCEL or (choice == STOP and not stop_and_wait(state)):
            return False
    dock.destroyOnClose()
    return True
