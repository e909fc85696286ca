"""Small Qt helpers shared by the panels: layer pickers, path rows, labels and rows that fit a narrow dock, the
review keys wherever the focus is in a panel, safe error reporting."""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
import functools
import logging
from typing import Any
import weakref

from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QCursor, QKeySequence, QShortcut
from qtpy.QtWidgets import (QApplication, QComboBox, QDockWidget, QFileDialog, QGridLayout, QHBoxLayout, QLabel,
                            QLineEdit, QPushButton, QSizePolicy, QWidget)

from napari_diffseg._widgets._layers import NAME_KEY as PLUGIN_LAYER_KEY
from napari_diffseg._workers import error_message, notify_error
from napari_diffseg.core.errors import DiffsegError

log = logging.getLogger(__name__)

NO_LAYER = "(none)"
DOCK_WIDTH = 340  # every panel fits a dock this wide (a 1280 x 800 laptop screen) without a horizontal scrollbar

# the Review panel's keys (viewer key bindings while it is on screen; in the panels through forward_review_keys)
REVIEW_SHORTCUTS = {"N": "next", "Shift-N": "previous", "A": "accept", "R": "reject", "T": "revert"}
REVIEW_HANDLER_PREFIX = "diffseg_review_"  # the names of the bound handlers
CANVAS_KEY = "Escape"  # in a panel: the keyboard goes back to the canvas (nothing is painted)


@contextlib.contextmanager
def busy_cursor() -> Iterator[None]:
    """The wait cursor while the GUI thread does something the user waits for (napari building new layers takes
    0.1-0.7 s each on a laptop without a GPU: benchmarks/bench_layer_cost.py)."""
    QApplication.setOverrideCursor(QCursor(Qt.CursorShape.WaitCursor))
    try:
        yield
    finally:
        QApplication.restoreOverrideCursor()


@contextlib.contextmanager
def repaint_in_next_turn(widget: QWidget) -> Iterator[None]:
    """Hold back the repaint of ``widget``'s window during the block and let Qt repaint it in the next event-loop
    turn. Adding a napari layer costs 100-150 ms and the repaint of the whole window that follows (its canvas is
    software OpenGL on a laptop without a GPU) another 60-150 ms, which Qt otherwise runs in the same turn: one
    stall of over 200 ms becomes two shorter ones (benchmarks/gui_event_loop.md). The window is released by a
    timer that belongs to it, so a panel closed meanwhile cannot leave it unpainted."""
    window = widget.window()
    if not window.updatesEnabled():  # held already (a block inside another): the outer one releases it
        yield
        return
    window.setUpdatesEnabled(False)
    try:
        yield
    finally:
        release = QTimer(window, singleShot=True, interval=1)  # not 0: Qt runs zero timers ahead of due ones
        release.timeout.connect(functools.partial(_release_repaint, weakref.ref(window)))  # weak: a closed
        release.timeout.connect(release.deleteLater)  # viewer's window must not be kept alive by its timer
        release.start()


def on_screen(widget: QWidget) -> bool:
    """Whether ``widget`` is actually shown (a dock in a background tab counts as visible to Qt)."""
    return widget.isVisible() and not widget.visibleRegion().isEmpty()


def follow_dock(widget: QWidget, followed: Any, slot: Callable[[bool], None]) -> Any:
    """Connect ``slot`` to the ``visibilityChanged`` of the dock that holds ``widget`` unless ``followed`` is that
    dock already; returns the dock (or ``followed``). Call from showEvent: a dock in a tab group keeps its widget
    "visible" while another tab is in front, so showEvent alone misses the tab coming to the front."""
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    if parent is None or parent is followed:
        return followed
    parent.visibilityChanged.connect(slot)
    return parent


class LayerSteps:
    """Run the steps of a generator that adds napari layers, one step per event-loop turn, each with the window's
    repaint held to the turn after (repaint_in_next_turn); then ``finish(project)`` with the project the steps
    were started for (the steps stop early when ``state.project`` changes meanwhile). Adding several layers in one
    turn froze the window for 0.4-1.2 s on 2 cores without a GPU (benchmarks/gui_event_loop.md); one layer per
    turn, no turn reaches 200 ms."""

    STEP_INTERVAL_MS = 20  # time for the held repaint (released 1 ms after a step) to run in a turn of its own

    def __init__(self, owner: QWidget, state: Any, finish: Callable[[Any], None]):
        self.owner, self.state, self.finish = owner, state, finish
        self.project: Any = None
        self._steps: Iterator[Any] | None = None
        self._timer = QTimer(owner, singleShot=True, interval=self.STEP_INTERVAL_MS)
        self._timer.timeout.connect(self._step)

    @property
    def running(self) -> bool:
        return self._steps is not None

    def start(self, steps: Iterator[Any]) -> None:
        """Run ``steps`` from the next turn on (the first layer too: the turn of a tab switch repaints first)."""
        self.cancel()
        self.project, self._steps = self.state.project, steps
        self._timer.start()

    def cancel(self) -> None:
        """End the steps without calling ``finish`` (another image was shown meanwhile)."""
        if self._steps is not None:
            self._timer.stop()
            self._steps.close()
            self._steps = None

    def _step(self) -> None:
        with repaint_in_next_turn(self.owner):
            more = self.state.project is self.project
            if more:
                try:
                    more = next(self._steps, _DONE) is not _DONE
                except Exception:  # napari refused a layer: what finish shows reports it the usual way
                    log.debug("creating layers failed", exc_info=True)
                    more = False
            if more:
                self._timer.start()
                return
            self._steps.close()
            self._steps = None
            self.finish(self.project)


_DONE = object()


def _release_repaint(window_ref: weakref.ref) -> None:
    window = window_ref()
    if window is not None:
        window.setUpdatesEnabled(True)


def wrapping_label(text: str = "") -> QLabel:
    """A word-wrapped label that never widens its dock (long image names are cut at the edge instead)."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
    label.setMinimumWidth(1)
    return label


def user_errors(method: Callable) -> Callable:
    """Decorator for GUI actions: a DiffsegError becomes an error notification instead of a traceback."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except DiffsegError as error:
            notify_error(error_message(error))
            return None

    return wrapper


def connect_until_destroyed(widget: QWidget, signal: Any, slot: Callable) -> None:
    """Connect a state (psygnal) or viewer (napari event) signal to a widget's slot, and disconnect it when the
    widget's Qt object is destroyed: the state and the viewer outlive a closed panel, which must not be called.
    """
    signal.connect(slot)
    widget.destroyed.connect(functools.partial(_disconnect_signal, signal, slot))


def _disconnect_signal(signal: Any, slot: Callable, *_: Any) -> None:
    try:
        signal.disconnect(slot)
    except (TypeError, ValueError, RuntimeError):
        pass


class LayerCombo(QComboBox):
    """A combo box listing the viewer's layers of some kinds, kept up to date as layers come and go."""

    def __init__(self, viewer: Any, kinds: tuple[type, ...], optional: bool = False, parent: QWidget | None = None):
        super().__init__(parent)
        self._viewer = viewer
        self._kinds = kinds
        self._optional = optional
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.moved):
            connect_until_destroyed(self, event, self.refresh)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        current = self.currentText()
        # the user's layers only: the plugin's own annotate / review / result layers are tagged with the image they show
        names = [layer.name for layer in self._viewer.layers
                 if isinstance(layer, self._kinds) and PLUGIN_LAYER_KEY not in layer.metadata]
        if self._optional:
            names.insert(0, NO_LAYER)
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        self.blockSignals(False)
        if current not in names:
            self.currentTextChanged.emit(self.currentText())

    def layer(self) -> Any | None:
        name = self.currentText()
        if not name or name == NO_LAYER or name not in self._viewer.layers:
            return None
        return self._viewer.layers[name]


class PathRow(QWidget):
    """A line edit with a Browse button opening a file or folder dialog."""

    def __init__(self, placeholder: str, mode: str = "folder", parent: QWidget | None = None):
        super().__init__(parent)
        self.mode = mode
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.button = QPushButton("Browse…")
        self.button.clicked.connect(self.browse)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit)
        layout.addWidget(self.button)

    def browse(self) -> None:
        if self.mode == "file":
            path, _ = QFileDialog.getOpenFileName(self, "Choose an image", self.text(),
                                                  "Images (*.tif *.tiff *.png *.jpg *.jpeg)")
        else:
            path = QFileDialog.getExistingDirectory(self, "Choose a folder", self.text())
        if path:
            self.edit.setText(path)

    def text(self) -> str:
        return self.edit.text().strip()

    def setText(self, text: str) -> None:  # noqa: N802 - Qt naming
        self.edit.setText(text)


def short_name(name: str, most: int = 30) -> str:
    """An image name for a line of text, cut in the middle when longer than ``most`` characters (a name without
    spaces cannot wrap and would be cut at the dock's edge)."""
    if len(name) <= most:
        return name
    keep = (most - 1) // 2
    return f"{name[:keep]}…{name[-keep:]}"


class ElidedLabel(QLabel):
    """A one-line label that shows a long text (a folder path) cut in the middle with an ellipsis instead of
    widening its dock; the whole text is its tooltip."""

    def __init__(self, text: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self._full = ""
        self.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.setMinimumWidth(1)
        self.setText(text)

    def setText(self, text: str) -> None:  # noqa: N802 - Qt naming
        self._full = text
        self.setToolTip(text)
        self._elide()

    def full_text(self) -> str:
        return self._full

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 - Qt naming
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        shown = self.fontMetrics().elidedText(self._full, Qt.ElideMiddle, max(1, self.width()))
        super().setText(shown)


def widget_grid(*widgets: QWidget, columns: int | None = None) -> QWidget:
    """Widgets in rows of ``columns`` (default: all in one row), each column as wide as the others. Laid out by
    Qt's own QGridLayout: a layout written in Python is called back for every layout pass, each call waiting for
    the GIL that training holds, which stretched the first Review visit's stalls from ~190 to ~450 ms
    (benchmarks/gui_event_loop.md)."""
    grid = QWidget()
    layout = QGridLayout(grid)
    layout.setContentsMargins(0, 0, 0, 0)
    columns = columns or len(widgets)
    for index, widget in enumerate(widgets):
        layout.addWidget(widget, index // columns, index % columns)
    for column in range(columns):
        layout.setColumnStretch(column, 1)
    return grid


def real_viewer(viewer: Any) -> Any:
    """The viewer behind napari's PublicOnlyProxy (plugins get the proxy)."""
    return getattr(viewer, "__wrapped__", viewer)


def focus_canvas(viewer: Any) -> bool:
    """Give the keyboard to the viewer's canvas without clicking it (a click paints in paint mode)."""
    try:
        canvas = real_viewer(viewer).window._qt_viewer.canvas.native
    except (AttributeError, RuntimeError):
        return False
    canvas.setFocus(Qt.ShortcutFocusReason)
    return True


def forward_review_keys(panel: QWidget, viewer: Any, state: Any) -> list[QShortcut]:
    """The review keys (REVIEW_SHORTCUTS) work wherever the focus is inside ``panel`` (its list, buttons, check
    boxes): a list would otherwise take letters as type-ahead search. Each key calls what the viewer has bound to
    it, and only while the Review panel has its keys bound (``state.review_keys_bound``; otherwise the panel's
    widgets keep their letters), so the keys mean the same here and on the canvas. Text fields keep their keys
    (they claim them before shortcuts). Escape gives the keyboard to the canvas."""
    letters = []
    for key in REVIEW_SHORTCUTS:
        shortcut = QShortcut(QKeySequence(key.replace("-", "+")), panel)
        shortcut.setContext(Qt.WidgetWithChildrenShortcut)
        shortcut.setEnabled(state.review_keys_active)
        shortcut.activated.connect(functools.partial(_call_review_key, weakref.ref(panel), viewer, key))
        letters.append(shortcut)
    connect_until_destroyed(panel, state.review_keys_bound,
                            functools.partial(_enable_shortcuts, [weakref.ref(s) for s in letters]))
    back = QShortcut(QKeySequence(CANVAS_KEY), panel)
    back.setContext(Qt.WidgetWithChildrenShortcut)
    back.activated.connect(functools.partial(focus_canvas, viewer))
    return [*letters, back]


def _enable_shortcuts(shortcut_refs: list[weakref.ref], enabled: bool) -> None:
    for ref in shortcut_refs:
        shortcut = ref()
        if shortcut is not None:
            shortcut.setEnabled(enabled)


def _call_review_key(panel_ref: weakref.ref, viewer: Any, key: str) -> None:
    from napari.utils.key_bindings import KeyBinding

    if panel_ref() is None:
        return
    handler = real_viewer(viewer).keymap.get(KeyBinding.from_str(key))
    if handler is not None and getattr(handler, "__name__", "").startswith(REVIEW_HANDLER_PREFIX):
        handler(viewer)
