"""Annotate panel: pick a project image, paint its mask in a Labels layer of the right shape (created for you, in
paint mode with label 1), and save it as ground truth. The layer starts from the image's saved ground truth, else
from its latest pseudo-label (correcting is quicker than painting), else empty. 3D images get a 3D Labels
layer: paint slice by slice. Saving writes the mask to the project at once.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from napari.utils import notifications
from qtpy.QtWidgets import QComboBox, QLabel, QPushButton, QVBoxLayout, QWidget

from napari_diffseg._state import DiffsegState, state_for_viewer
from napari_diffseg._widgets import _layers
from napari_diffseg._widgets._common import (LayerSteps, busy_cursor, connect_until_destroyed, follow_dock,
                                            forward_review_keys, on_screen, repaint_in_next_turn, short_name,
                                            user_errors, widget_grid, wrapping_label)
from napari_diffseg.core.errors import InputError
from napari_diffseg.core.project.store import ImageStatus

log = logging.getLogger(__name__)

HELP = ("Paint the objects with label 1 (0 erases). Keys: P paint, E erase, F fill, [ and ] brush size. "
        "For 3D images, paint slice by slice with the slider.")
OBJECTS_HELP = ("Objects project: paint each object with its own label. Press M for the next free label (napari's "
                "new-label key), paint the object, M again for the next one; touching objects need different labels; "
                "0 erases. Keys: P paint, E erase, F fill, [ and ] brush size. 3D: slice by slice with the slider.")


class AnnotatePanel(QWidget):
    """Paint ground truth for one project image at a time."""

    def __init__(self, viewer: Any, state: DiffsegState, parent: QWidget | None = None):
        super().__init__(parent)
        _layers.warm_up_layer_machinery()
        self.viewer = viewer
        self.state = state
        self.image_combo = QComboBox()
        self.open_button = QPushButton("Open for labelling")
        self.save_button = QPushButton("Save as ground truth")
        self.clear_button = QPushButton("Clear")
        self.next_unlabelled_button = QPushButton("Next unlabelled ▶")
        self.next_unlabelled_button.setToolTip("Open the next image that has no ground truth yet")
        self.next_unlabelled_button.clicked.connect(lambda: self.open_next_unlabelled())
        self.open_button.clicked.connect(lambda: self.open_image())
        self.save_button.clicked.connect(lambda: self.save())
        self.clear_button.clicked.connect(self.clear)
        self.current_label = wrapping_label("")
        self.help_label = help_label = wrapping_label(HELP)

        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Image"))
        layout.addWidget(self.image_combo)
        layout.addWidget(widget_grid(self.open_button, self.next_unlabelled_button))
        layout.addWidget(self.current_label)
        layout.addWidget(widget_grid(self.save_button, self.clear_button))
        layout.addWidget(help_label)
        self._shortcuts = forward_review_keys(self, viewer, state)  # the review keys work here too

        self._layer_steps = LayerSteps(self, state, lambda project: None)  # the layers wait, hidden, for a click
        self._dock: Any = None  # the dock followed for its tab coming to the front

        connect_until_destroyed(self, state.project_changed, self.refresh)
        connect_until_destroyed(self, state.records_changed, self.refresh)
        connect_until_destroyed(self, state.image_shown, self._on_image_shown)
        self.refresh()
        self._update_current()

    # ------------------------------------------------------------------ image list
    def refresh(self, *_: Any) -> None:
        """Fill the image list: images without ground truth first, then labelled ones."""
        project = self.state.project
        self.help_label.setText(OBJECTS_HELP if project is not None and project.objects else HELP)
        current = self.image_combo.currentData()
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        if project is not None:
            records = project.records()
            records.sort(key=lambda r: r.status in (ImageStatus.LABELLED, ImageStatus.ACCEPTED))
            for record in records:
                self.image_combo.addItem(f"{record.name}  [{record.status.value}]", record.name)
            index = self.image_combo.findData(current)
            if index >= 0:
                self.image_combo.setCurrentIndex(index)
        self.image_combo.blockSignals(False)
        enabled = project is not None and self.image_combo.count() > 0
        self.open_button.setEnabled(enabled)
        self.next_unlabelled_button.setEnabled(enabled)
        self._update_current()
        if enabled and on_screen(self):
            self._prepare_layers()  # a project opened (or images added) with the Annotate tab in front

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt naming
        """Coming to the Annotate tab builds the annotation layers ahead of the first "Open for labelling"."""
        super().showEvent(event)
        self._dock = follow_dock(self, self._dock, self._on_dock_visibility)
        if on_screen(self):
            self._prepare_layers()

    def _on_dock_visibility(self, visible: bool) -> None:
        if visible:  # the dock's tab came to the front (its widget may not be laid out yet)
            self._prepare_layers()

    def _prepare_layers(self) -> None:
        name = self.image_combo.currentData()
        if (self.state.project is None or not name or self._layer_steps.running
                or all(_layers.find_layer(self.viewer, n) is not None for n in _layers.ANNOTATE_LAYERS)):
            return
        self._layer_steps.start(_layers.create_annotate_layers(self.viewer, self.state.project, name))

    def _on_image_shown(self, kind: str, name: str) -> None:
        if kind == "annotate":
            index = self.image_combo.findData(name)
            if index >= 0:
                self.image_combo.setCurrentIndex(index)
            self._update_current()

    def current_name(self) -> str | None:
        """The project image shown in the annotation layers."""
        return _layers.shown_image(self.viewer, _layers.ANNOTATE_LABELS)

    def labels_layer(self) -> Any | None:
        return _layers.find_layer(self.viewer, _layers.ANNOTATE_LABELS)

    def _update_current(self) -> None:
        name = self.current_name()
        project = self.state.project
        if name is None or project is None or name not in project.names():
            self.current_label.setText("No image open for labelling.")
            self.save_button.setEnabled(False)
            self.clear_button.setEnabled(False)
            return
        read_only = " · read-only project: cannot save" if self.state.read_only else ""
        status = project.record(name).status.value
        self.current_label.setText(f"Labelling {short_name(name)} ({status}){read_only}")
        self.save_button.setEnabled(not self.state.read_only)
        self.clear_button.setEnabled(True)

    # ------------------------------------------------------------------ actions
    @user_errors
    def open_next_unlabelled(self) -> Any:
        """Open the first image after the shown one (in project order, wrapping) that has no ground truth."""
        project = self.state.project
        if project is None:
            raise InputError("create or open a project first")
        names = project.names()
        waiting = {r.name for r in project.records() if r.status not in (ImageStatus.LABELLED, ImageStatus.ACCEPTED)}
        current = self.current_name()
        start = names.index(current) + 1 if current in names else 0
        following = [n for n in names[start:] + names[:start] if n in waiting and n != current]
        if not following:
            raise InputError("every image has ground truth: train, or review the pseudo-labels")
        return self.open_image(following[0])

    @user_errors
    def open_image(self, name: str | None = None) -> Any:
        """Show ``name`` (default: the chosen image) with its Labels layer, ready to paint; returns the layer."""
        project = self.state.project
        if project is None:
            raise InputError("create or open a project first")
        name = name or self.image_combo.currentData()
        if not name:
            raise InputError("the project has no images: add images first")
        self._layer_steps.cancel()  # the click comes first: what is missing is created now
        with busy_cursor(), repaint_in_next_turn(self):  # napari's work in this turn, Qt's repaint in the next
            labels = _layers.show_for_annotation(self.viewer, project, name)
            self.viewer.layers.selection.active = labels
            labels.selected_label = 1
            labels.mode = "paint"
            self.state.image_shown.emit("annotate", name)
        return labels

    @user_errors
    def save(self) -> bool:
        """Save the painted mask as the ground truth of the shown image (written at once)."""
        project = self.state.project
        name = self.current_name()
        layer = self.labels_layer()
        if project is None or name is None or layer is None:
            raise InputError("open an image for labelling first")
        self.state.require_writable("save the mask")
        mask = np.asarray(layer.data).copy()
        project.save_label(name, mask)
        if not mask.any():
            notifications.show_warning(f"saved an empty mask for {name}: it teaches 'no object here'")
        elif project.objects:
            count = len(np.unique(mask)) - 1
            notifications.show_info(f"saved the {count} object(s) of {name} as ground truth, each with its id")
        elif project.num_classes == 2 and mask.max() > 1:
            notifications.show_info(f"saved the mask of {name} as ground truth; labels 2-{int(mask.max())} were saved "
                                    "as foreground (1): this project has one foreground class")
        else:
            notifications.show_info(f"saved the mask of {name} as ground truth")
        self.state.clear_failure()  # a new label answers e.g. "no labelled image": no stale failure message
        self.state.records_changed.emit()
        return True

    def clear(self) -> None:
        layer = self.labels_layer()
        if layer is not None:
            layer.data = np.zeros_like(layer.data)


class AnnotateWidget(AnnotatePanel):
    """npe2 entry point: the Annotate panel of the viewer's shared state."""

    def __init__(self, napari_viewer: Any):
        super().__init__(napari_viewer, state_for_viewer(napari_viewer))
