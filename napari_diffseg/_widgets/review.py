"""Review panel: the teacher's pseudo-labels, most uncertain first, as an editable Labels layer over the image with
an uncertainty layer; Prev / Next / Accept / Reject / Revert-to-teacher with keyboard shortcuts; counts; and
"Next round", which starts the next round warm-started from the last checkpoints.

Accept writes the (edited) Labels layer to the project at once: it becomes ground truth for the next round.
Reject keeps the image out of the ground truth (it stays unlabelled data and gets a new proposal next round).
Revert puts the teacher's proposal back into the layer. 3D images are reviewed as volumes: scroll through the
slices with the slider, edit any slice, accept the whole volume.

Shortcuts (viewer key bindings, active while the panel is on screen, removed when it is hidden or closed): N next,
Shift-N previous, A accept, R reject, T revert to the teacher. (P is napari's paint key for Labels layers, hence
Shift-N for "previous".) They work on the canvas and wherever the focus is in a DiffSeg panel (the queue list, a
button); Escape in a panel gives the keyboard back to the canvas without painting.

Objects projects (core/objects) get a row of object edits on the layer's selected label (pick an object with
napari's colour picker, L): Delete it, Split it into its pieces after erasing a line across it, Merge another id
into it (core/objects/edit.py). Each edit joins the layer's undo history (Ctrl-Z), like a brush stroke; painting
with a new label (M) still adds or re-draws objects. The outline toggle draws each object's outline.

A read-only project can be browsed but not changed: Accept, Reject, Undo and Next round are off.
"""

from __future__ import annotations

import functools
import logging
from typing import Any
import weakref

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (QCheckBox, QDockWidget, QGridLayout, QGroupBox, QListWidget, QListWidgetItem,
                            QPushButton, QSpinBox, QVBoxLayout, QWidget)

from napari.utils import notifications
from napari.utils.key_bindings import KeyBinding

from napari_diffseg._state import DiffsegState, Status, state_for_viewer
from napari_diffseg._widgets import _layers
from napari_diffseg._widgets._closing import guard_closing
from napari_diffseg._widgets._common import (CANVAS_KEY, REVIEW_HANDLER_PREFIX, REVIEW_SHORTCUTS, LayerSteps,
                                            busy_cursor, connect_until_destroyed, focus_canvas, follow_dock,
                                            forward_review_keys, on_screen, repaint_in_next_turn, short_name,
                                            user_errors, widget_grid, wrapping_label)
from napari_diffseg._workers import start_training
from napari_diffseg.core.errors import InputError
from napari_diffseg.core.project.store import ImageStatus

log = logging.getLogger(__name__)

SHORTCUTS = REVIEW_SHORTCUTS
EDITED_MARK = "✎ edited"  # queue rows of images with corrections not accepted yet


OBJECTS_HELP = ("The selected label is the object: pick it with napari's colour picker (L, then click it). Split: "
                "erase a line across it first (E).")


QUEUE_SCORE_HELP = ("The score is how much the two networks (teacher and student) disagree on the image: 1 - the "
                    "Dice between their masks, 0 = identical, 1 = nothing in common. Masks they disagree on tend to "
                    "be the wrong ones (benchmarks/quality), so correcting from the top helps the next round most.")


class ReviewPanel(QWidget):
    """Walk the pseudo-labels, most uncertain first; correct, accept or reject them; start the next round."""

    def __init__(self, viewer: Any, state: DiffsegState, parent: QWidget | None = None):
        super().__init__(parent)
        _layers.warm_up_layer_machinery()
        self.viewer = viewer
        self.state = state
        self.queue: list[str] = []
        self._loaded: tuple[str, np.ndarray] | None = None  # (image, pseudo-label as loaded): detects edits
        self.drafts: dict[str, np.ndarray] = {}  # corrections not accepted yet, per image: kept while browsing
        self._last_decision: str | None = None  # the image last accepted or rejected (for Undo)
        self._dock: QDockWidget | None = None
        self._layer_steps = LayerSteps(self, state, self._after_layer_steps)  # creating the review layers
        self._steps_image: str | None = None  # the image those steps end by showing
        self._top_after_round = QTimer(self, singleShot=True, interval=LayerSteps.STEP_INTERVAL_MS)
        self._top_after_round.timeout.connect(self._show_top_after_round)

        self.counts_label = wrapping_label("")
        self.read_only_label = wrapping_label("Read-only project: you can look, not accept or reject.")
        self.read_only_label.setVisible(False)
        self.current_label = wrapping_label("")
        self.queue_list = QListWidget()
        self.queue_list.setTextElideMode(Qt.ElideMiddle)  # a long name keeps its score, start, end and edit mark
        self.queue_list.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.queue_list.itemActivated.connect(lambda item: self.show_image(item.data(256)))
        self.queue_list.itemClicked.connect(lambda item: self.show_image(item.data(256)))
        self.prev_button = QPushButton("◀ Prev (Shift-N)")
        self.next_button = QPushButton("Next (N) ▶")
        self.accept_button = QPushButton("Accept (A)")
        self.reject_button = QPushButton("Reject (R)")
        self.revert_button = QPushButton("Revert (T)")
        self.revert_button.setToolTip("Put the teacher's pseudo-label back into the layer (your edits are dropped)")
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("Undo the last accept or reject: the image goes back to the queue, with its mask "
                                    "(until the next round starts)")
        self.show_pseudo = QCheckBox("pseudo-label")
        self.outline = QCheckBox("outline")
        self.show_uncertainty = QCheckBox("uncertainty")
        for box in (self.show_pseudo, self.outline, self.show_uncertainty):
            box.setChecked(True)
            box.toggled.connect(lambda _checked: self.apply_view_options())
        self.show_pseudo.setToolTip("Show the pseudo-label layer")
        self.outline.setToolTip("Draw the pseudo-label as an outline (the image under it stays readable)")
        self.show_uncertainty.setToolTip("Orange where the twins disagree or are unsure; transparent where sure")
        self.next_round_button = QPushButton("Next round")
        self.next_round_button.setToolTip("Accepted corrections join the ground truth; training warm-starts from "
                                          "the last checkpoints.")
        self.prev_button.clicked.connect(lambda: self.previous())
        self.next_button.clicked.connect(lambda: self.next())
        self.accept_button.clicked.connect(lambda: self.accept())
        self.reject_button.clicked.connect(lambda: self.reject())
        self.revert_button.clicked.connect(lambda: self.revert())
        self.undo_button.clicked.connect(lambda: self.undo())
        self.next_round_button.clicked.connect(lambda: self.next_round())

        grid = QGridLayout()
        grid.addWidget(self.prev_button, 0, 0)
        grid.addWidget(self.next_button, 0, 1)
        grid.addWidget(self.accept_button, 1, 0)
        grid.addWidget(self.reject_button, 1, 1)
        grid.addWidget(self.revert_button, 2, 0)
        grid.addWidget(self.undo_button, 2, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.read_only_label)
        layout.addWidget(self.counts_label)
        queue_title = wrapping_label("Queue, most doubtful first: score · image")
        queue_title.setToolTip(QUEUE_SCORE_HELP)
        self.queue_list.setToolTip(QUEUE_SCORE_HELP)
        layout.addWidget(queue_title)
        layout.addWidget(self.queue_list)
        layout.addWidget(self.current_label)
        layout.addLayout(grid)
        layout.addWidget(widget_grid(self.show_pseudo, self.outline, self.show_uncertainty))
        layout.addWidget(self._objects_box())
        self.canvas_button = QPushButton(f"Keys to the canvas ({CANVAS_KEY[:3]})")
        self.canvas_button.setToolTip("Give the keyboard to the image without clicking it (a click paints in paint "
                                      "mode); the review keys also work here in the panel")
        self.canvas_button.clicked.connect(lambda: focus_canvas(self.viewer))
        layout.addWidget(widget_grid(self.next_round_button, self.canvas_button))
        hint = wrapping_label("Edit the pseudo-label layer with the Labels tools, then Accept. 3D: scroll the slices. "
                              "Keys N, Shift-N, A, R, T work on the canvas and in this panel.")
        layout.addWidget(hint)
        self._shortcuts = forward_review_keys(self, viewer, state)

        self._key_handlers: dict[str, Any] = {}
        self.destroyed.connect(functools.partial(_unbind_keys, self.viewer, self._key_handlers, state))
        connect_until_destroyed(self, state.project_changed, self._on_project)
        connect_until_destroyed(self, state.records_changed, self.refresh)
        connect_until_destroyed(self, state.status_changed, self._on_status)
        connect_until_destroyed(self, state.round_changed, self._on_round)
        connect_until_destroyed(self, state.image_shown, self._on_image_shown)
        self.refresh()

    def _objects_box(self) -> QGroupBox:
        """Objects projects: Delete, Split and Merge the selected object (core/objects/edit.py)."""
        self.objects_box = QGroupBox("Objects")
        self.delete_button = QPushButton("Delete object")
        self.delete_button.setToolTip("The selected label's object becomes background")
        self.split_button = QPushButton("Split object")
        self.split_button.setToolTip("Erase a line across the selected object (E) where it should be cut, then "
                                     "Split: each piece becomes an object of its own (the largest keeps the id)")
        self.merge_id = QSpinBox()
        self.merge_id.setRange(1, 2**31 - 1)
        self.merge_id.setPrefix("id ")
        self.merge_id.setToolTip("The id of the object to merge into the selected one (hover it: napari shows its "
                                 "id in the status bar)")
        self.merge_button = QPushButton("Merge into selected")
        self.merge_button.setToolTip("The object with the id on the left becomes part of the selected object")
        self.delete_button.clicked.connect(lambda: self.edit_object("delete"))
        self.split_button.clicked.connect(lambda: self.edit_object("split"))
        self.merge_button.clicked.connect(lambda: self.edit_object("merge", self.merge_id.value()))
        box_layout = QVBoxLayout(self.objects_box)
        box_layout.addWidget(wrapping_label(OBJECTS_HELP))
        box_layout.addWidget(widget_grid(self.delete_button, self.split_button))
        box_layout.addWidget(widget_grid(self.merge_id, self.merge_button))
        self.objects_box.setVisible(False)  # shown for an objects project
        return self.objects_box

    # ------------------------------------------------------------------ shortcuts
    def bind_keys(self) -> None:
        """Bind the review keys on the viewer (napari needs named functions: its action manager lists them)."""
        if self._key_handlers:
            return
        for key, action in SHORTCUTS.items():
            handler = _key_handler(self, action)
            self.viewer.bind_key(key, handler, overwrite=True)
            self._key_handlers[key] = handler
        self.state.set_review_keys_active(True)  # the panels forward them too

    def unbind_keys(self) -> None:
        """Remove the review keys (only ours: a key the user rebound since stays)."""
        _unbind_keys(self.viewer, self._key_handlers, self.state)

    def _on_status(self, status: Status) -> None:
        self._update_enabled()
        if status == Status.DONE:  # in a turn of its own: the end of a run refreshes every panel in this one
            self._top_after_round.start()

    def _show_top_after_round(self) -> None:
        """A finished round: back to the top of the queue (its most doubtful image), unless the user is annotating
        or the review layers are not there yet (the Review tab shows the top when it comes up)."""
        if (self.state.status == Status.DONE and self.queue and self.current_name() not in (None, self.queue[0])
                and not self._annotating()):
            self.show_image(self.queue[0])

    def _on_round(self, *_: Any) -> None:
        self._last_decision = None  # a decision of an earlier round is ground truth now: nothing to undo
        self._update_enabled()

    def hideEvent(self, event: Any) -> None:  # noqa: N802 - Qt naming
        super().hideEvent(event)
        self.unbind_keys()

    # ------------------------------------------------------------------ queue
    def current_name(self) -> str | None:
        """The project image shown in the review layers."""
        return _layers.shown_image(self.viewer, _layers.REVIEW_PSEUDO)

    def pseudo_layer(self) -> Any | None:
        return _layers.find_layer(self.viewer, _layers.REVIEW_PSEUDO)

    def refresh(self, *_: Any, show_first: bool = False) -> None:
        """Re-read the queue and counts. With nothing shown yet, show the queue's first image when ``show_first``
        or when this panel is on screen and the user is not annotating (Annotate layers visible): new
        pseudo-labels never take the view away from painting, nor from another panel."""
        project = self.state.project
        self.queue = [] if project is None else project.review_queue()
        self.queue_list.blockSignals(True)
        self.queue_list.clear()
        records = {} if project is None else {r.name: r for r in project.records()}
        for name in self.queue:
            record = records[name]
            uncertainty = "?" if record.uncertainty is None else f"{record.uncertainty:.3f}"
            item = QListWidgetItem(f"{uncertainty}  {name}" + (f"  {EDITED_MARK}" if name in self.drafts else ""))
            item.setData(256, name)
            self.queue_list.addItem(item)
        self.queue_list.blockSignals(False)
        objects = project is not None and bool(project.objects)  # (read here, not on every status change)
        if self.objects_box.isVisibleTo(self) != objects:
            self.objects_box.setVisible(objects)
        if project is None:
            self.counts_label.setText("No project open")
        else:
            counts = project.status_counts()
            accepted, rejected = counts[ImageStatus.ACCEPTED], counts[ImageStatus.REJECTED]
            self.counts_label.setText(f"to review: {len(self.queue)} · reviewed: {accepted + rejected} · "
                                      f"accepted: {accepted} · rejected: {rejected}")
        current = self.current_name()
        if project is not None and self.queue and (current is None or current not in records):
            if show_first or (self.on_screen() and not self._annotating()):
                self._show_in_steps(self.queue[0])
            else:
                self._update_current()
        elif current in self.queue and self._newer_proposal(current):
            self.show_image(current)  # the teacher has a newer pseudo-label and the shown one was not edited
        else:
            self._update_current()

    def _on_project(self, *_: Any) -> None:
        self.drafts.clear()  # drafts and undo belong to the project they were made in
        self._last_decision = None
        self.refresh()

    def _annotating(self) -> bool:
        layer = _layers.find_layer(self.viewer, _layers.ANNOTATE_LABELS)
        return layer is not None and layer.visible

    def on_screen(self) -> bool:
        """Whether the panel is actually shown (not a dock in a background tab)."""
        return on_screen(self)

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt naming
        """Follow the dock's visibility: coming to the Review tab shows the queue's first image if none is shown."""
        super().showEvent(event)
        self.bind_keys()
        guard_closing(self, self.state)
        self._dock = follow_dock(self, self._dock, self._on_dock_visibility)
        self._on_dock_visibility(True)  # also coming to the Review tab of the "all panels" dock

    def _on_dock_visibility(self, visible: bool) -> None:
        if visible and self.state.project is not None and self.current_name() is None:
            self.refresh(show_first=True)

    def _newer_proposal(self, name: str) -> bool:
        layer = self.pseudo_layer()
        if layer is None or self._loaded is None or self._loaded[0] != name:
            return False
        if not np.array_equal(layer.data, self._loaded[1]):
            return False  # edited: never overwrite the user's work
        latest = self.state.project.pseudo(name)
        return latest is not None and not np.array_equal(latest[0], self._loaded[1])

    def _on_image_shown(self, kind: str, name: str) -> None:
        self._layer_steps.cancel()  # another image was shown (a click, a key, a restored project) meanwhile
        if kind == "review":
            layer = self.pseudo_layer()
            self._loaded = None if layer is None else (name, np.asarray(layer.data).copy())
            self._update_current()

    def _update_current(self) -> None:
        name = self.current_name()
        project = self.state.project
        if name is None or project is None or name not in project.names():
            self.current_label.setText("Nothing to review yet: train first." if not self.queue else "")
        else:
            record = project.record(name)
            position = f"{self.queue.index(name) + 1} of {len(self.queue)}" if name in self.queue else record.status.value
            self.current_label.setText(f"{short_name(name)}: {position}, pseudo-label of round "
                                       f"{(project.pseudo_rounds(name) or ['?'])[-1]}")
            for row in range(self.queue_list.count()):
                if self.queue_list.item(row).data(256) == name:
                    self.queue_list.setCurrentRow(row)
        self._update_enabled()

    def _update_enabled(self, *_: Any) -> None:
        project, writable = self.state.project, not self.state.read_only
        shown = self.current_name() is not None and project is not None
        for button in (self.accept_button, self.reject_button):
            button.setEnabled(shown and writable)
        self.revert_button.setEnabled(shown)
        self.undo_button.setEnabled(self._can_undo())
        self.prev_button.setEnabled(bool(self.queue))
        self.next_button.setEnabled(bool(self.queue))
        self.next_round_button.setEnabled(project is not None and writable and not self.state.busy)
        self.read_only_label.setVisible(project is not None and not writable)
        for button in (self.delete_button, self.split_button, self.merge_button):
            button.setEnabled(shown)

    def _can_undo(self) -> bool:
        """Whether Undo can act: the image last accepted or rejected still is, in this round (an earlier round's
        decision is ground truth already), and the project can be written."""
        project, name = self.state.project, self._last_decision
        if project is None or name is None or self.state.read_only or name not in project.names():
            return False
        record = project.record(name)
        return (record.status in (ImageStatus.ACCEPTED, ImageStatus.REJECTED)
                and record.round == project.current_round)

    def _show_in_steps(self, name: str) -> None:
        """Show ``name`` as show_image does, but when the review layers do not exist yet (the first visit of the
        Review tab, the first pseudo-labels), create them one per event-loop turn (LayerSteps): three at once froze
        the window for 0.65-1.2 s while training ran (benchmarks/gui_event_loop.md)."""
        if self._layer_steps.running:
            return  # the steps under way end by showing an image
        if all(_layers.find_layer(self.viewer, layer_name) is not None for layer_name in _layers.REVIEW_LAYERS):
            self.show_image(name)
            return
        self._steps_image = name
        self._layer_steps.start(_layers.create_review_layers(self.viewer, self.state.project, name))

    def _after_layer_steps(self, project: Any) -> None:
        name = self._steps_image
        if self.state.project is not project:
            if self.state.project is not None:
                self.refresh()  # another project was opened meanwhile: its refresh found these steps under way
        elif self.current_name() is None and self.on_screen() and not self._annotating():
            self.show_image(name if name in self.queue or not self.queue else self.queue[0])

    @user_errors
    def show_image(self, name: str) -> Any:
        """Show image ``name`` with its pseudo-label and uncertainty; returns the pseudo-label layer."""
        project = self.state.project
        if project is None:
            raise InputError("create or open a project first")
        self._keep_draft()
        with busy_cursor(), repaint_in_next_turn(self):  # napari's work in this turn, Qt's repaint in the next
            layer = _layers.show_for_review(self.viewer, project, name)
            layer.mode = "paint"
            layer.selected_label = 1
            self.state.image_shown.emit("review", name)  # remembers the teacher's mask as loaded
            if name in self.drafts:
                layer.data = self.drafts[name].copy()  # the corrections made earlier, not accepted yet
            self.apply_view_options()
        return layer

    def apply_view_options(self) -> None:
        """Show or hide the pseudo-label (outline or filled) and the uncertainty overlay as the toggles say."""
        pseudo, uncertainty = self.pseudo_layer(), _layers.find_layer(self.viewer, _layers.REVIEW_UNCERTAINTY)
        # napari redraws a layer on every assignment, even of an unchanged value: assign only what changes
        if pseudo is not None:
            if pseudo.visible != self.show_pseudo.isChecked():
                pseudo.visible = self.show_pseudo.isChecked()
            contour = _layers.OUTLINE_WIDTH if self.outline.isChecked() else 0
            if pseudo.contour != contour:
                pseudo.contour = contour
        if uncertainty is not None and uncertainty.visible != self.show_uncertainty.isChecked():
            uncertainty.visible = self.show_uncertainty.isChecked()

    def _keep_draft(self) -> None:
        """Remember the shown image's corrections before another image replaces them in the layer."""
        layer, name = self.pseudo_layer(), self.current_name()
        if layer is None or name is None or self._loaded is None or self._loaded[0] != name:
            return
        data = np.asarray(layer.data)
        if np.array_equal(data, self._loaded[1]):
            self.drafts.pop(name, None)  # back to the teacher's mask: nothing to keep
        elif name not in self.drafts or not np.array_equal(data, self.drafts[name]):
            self.drafts[name] = data.copy()
            self.refresh()  # the queue marks the image as edited

    def _neighbour(self, step: int) -> str | None:
        if not self.queue:
            return None
        current = self.current_name()
        if current not in self.queue:
            return self.queue[0]
        index = self.queue.index(current) + step
        return self.queue[min(max(index, 0), len(self.queue) - 1)]

    def next(self) -> str | None:
        name = self._neighbour(+1)
        if name is not None:
            self.show_image(name)
        return name

    def previous(self) -> str | None:
        name = self._neighbour(-1)
        if name is not None:
            self.show_image(name)
        return name

    # ------------------------------------------------------------------ decisions
    def _decided(self, name: str, old_queue: list[str]) -> None:
        """After accept / reject: refresh and move on to the next image still in the queue."""
        self.state.records_changed.emit()  # refreshes this panel's queue too
        later = old_queue[old_queue.index(name) + 1:] if name in old_queue else []
        following = next((n for n in later if n in self.queue), None)
        if following is None and self.queue:
            following = self.queue[0]
        if following is not None:
            self.show_image(following)
        else:
            self._update_current()

    @user_errors
    def accept(self) -> str | None:
        """Write the (edited) pseudo-label layer as ground truth of the shown image, at once; then go on."""
        project, name, layer = self.state.project, self.current_name(), self.pseudo_layer()
        if project is None or name is None or layer is None:
            raise InputError("nothing to accept: show a pseudo-label first")
        self.state.require_writable("accept")
        project.accept(name, np.asarray(layer.data).copy())
        self.drafts.pop(name, None)
        self._last_decision = name
        notifications.show_info(f"accepted {name}: its mask is ground truth for the next round")
        self._decided(name, list(self.queue))
        return name

    @user_errors
    def reject(self) -> str | None:
        project, name = self.state.project, self.current_name()
        if project is None or name is None:
            raise InputError("nothing to reject: show a pseudo-label first")
        self.state.require_writable("reject")
        project.reject(name)
        self.drafts.pop(name, None)
        self._last_decision = name
        self._decided(name, list(self.queue))
        return name

    @user_errors
    def undo(self) -> str | None:
        """Send the image last accepted or rejected back to the queue, with the accepted mask as its draft."""
        project, name = self.state.project, self._last_decision
        if project is None or name is None or not self._can_undo():
            raise InputError("nothing to undo: no accept or reject of this round to take back")
        mask = project.undo_review(name)
        self._last_decision = None
        if mask is not None:
            self.drafts[name] = np.asarray(mask, _layers.label_dtype(project))
        self.state.records_changed.emit()
        self.show_image(name)
        return name

    @user_errors
    def revert(self) -> bool:
        """Put the teacher's latest pseudo-label of the shown image back into the layer."""
        project, name, layer = self.state.project, self.current_name(), self.pseudo_layer()
        if project is None or name is None or layer is None:
            raise InputError("nothing to revert: show a pseudo-label first")
        pseudo = project.pseudo(name)
        if pseudo is None:
            raise InputError(f"{name} has no pseudo-label to revert to")
        layer.data = np.asarray(pseudo[0], _layers.label_dtype(project)).copy()  # objects: ids beyond 255 kept
        self.drafts.pop(name, None)
        self.refresh()
        return True

    @user_errors
    def edit_object(self, action: str, other: int | None = None) -> str:
        """Objects mode: ``"delete"``, ``"split"`` or ``"merge"`` (``other`` into it) the object of the layer's
        selected label (core/objects/edit.py), as one step of the layer's undo history; returns what was done."""
        from napari_diffseg.core.objects import edit

        project, name, layer = self.state.project, self.current_name(), self.pseudo_layer()
        if project is None or name is None or layer is None:
            raise InputError("nothing to edit: show a pseudo-label first")
        if not project.objects:
            raise InputError("object edits are for objects projects; edit this mask with the Labels tools")
        selected = int(layer.selected_label)
        before = np.asarray(layer.data)
        if action == "delete":
            after, done = edit.delete_id(before, selected), f"deleted object {selected}"
        elif action == "split":
            after = edit.split_by_components(before, selected)
            new_ids = int(after.max()) - int(before.max())
            done = f"split object {selected} into {new_ids + 1} (new id(s) from {int(before.max()) + 1})"
        elif action == "merge":
            after, done = edit.merge_ids(before, [selected, int(other or 0)], into=selected), \
                f"merged object {other} into {selected}"
        else:
            raise ValueError(f"unknown object edit {action!r}")
        where, values = edit.changed_pixels(before, after)
        layer.data_setitem(where, values)  # in place, in napari's undo history (Ctrl-Z)
        self.current_label.setText(f"{short_name(name)}: {done} (Ctrl-Z undoes it; Accept stores the ids)")
        return done

    def next_round(self) -> Any:
        """Start the next round (accepted corrections are ground truth now), warm-started; returns the worker."""
        return start_training(self.state, next_round=True)


def _key_handler(panel: ReviewPanel, action: str) -> Any:
    """A named viewer key binding that calls ``panel.<action>()``; it holds the panel weakly."""
    panel_ref = weakref.ref(panel)

    def handler(_viewer: Any = None) -> None:
        target = panel_ref()
        if target is None:
            return
        try:
            getattr(target, action)()
        except RuntimeError:  # the panel's Qt object was deleted
            log.debug("review shortcut ignored: panel closed")

    handler.__name__ = handler.__qualname__ = f"{REVIEW_HANDLER_PREFIX}{action}"
    return handler


def _unbind_keys(viewer: Any, handlers: dict[str, Any], state: DiffsegState, *_: Any) -> None:
    if handlers:
        state.set_review_keys_active(False)
    for key, handler in list(handlers.items()):
        try:
            if viewer.keymap.get(KeyBinding.from_str(key)) is handler:
                viewer.bind_key(key, None)
        except (KeyError, ValueError, RuntimeError):
            pass
    handlers.clear()


class ReviewWidget(ReviewPanel):
    """npe2 entry point: the Review panel of the viewer's shared state."""

    def __init__(self, napari_viewer: Any):
        super().__init__(napari_viewer, state_for_viewer(napari_viewer))
