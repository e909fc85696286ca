"""Project panel: create or open a project folder, add images (from open layers, files or folders), and the table
of images with their status and counts. Opening a project restores the annotate / review layers it had open.

Adding images copies their pixels into the project in a background worker (layer data is snapshotted first).
A Labels layer can come along with an image layer: its non-empty planes (or the whole mask) are saved as ground
truth, so the bundled sample (an image stack and a labels stack) becomes a project in one click.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils import notifications
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QAbstractItemView, QCheckBox, QFileDialog, QFormLayout, QGroupBox,
                            QHeaderView, QProgressBar, QPushButton, QTableWidget, QTableWidgetItem,
                            QVBoxLayout, QWidget)

from napari_diffseg._state import DiffsegState, state_for_viewer
from napari_diffseg._widgets import _layers
from napari_diffseg._widgets._common import (ElidedLabel, LayerCombo, busy_cursor, connect_until_destroyed,
                                            forward_review_keys, user_errors, widget_grid, wrapping_label)
from napari_diffseg._workers import KEEP_THREADS, start_job
from napari_diffseg.core.errors import DuplicateImageError, InputError
from napari_diffseg.core.data.io import image_layout, list_images
from napari_diffseg.core.project.store import ImageRecord, ImageStatus, Project

log = logging.getLogger(__name__)

COLUMNS = ("Image", "Status", "Round", "Uncertainty")
OBJECTS_COLUMN = "Objects"  # an objects project's column: objects in each image's current mask


def status_text(record: ImageRecord) -> str:
    """'unlabelled', 'labelled', 'pseudo round 2', 'accepted', 'rejected'."""
    if record.status == ImageStatus.PSEUDO:
        return f"pseudo round {record.round}"
    return record.status.value


def counts_text(project: Project) -> str:
    counts = project.status_counts()
    total = sum(counts.values())
    parts = [f"{counts[status]} {status.value}" for status in ImageStatus if counts[status]]
    return f"{total} image(s)" + (": " + ", ".join(parts) if parts else "")


def _layer_planes(layer: Any, split: bool) -> list[tuple[np.ndarray, str]]:
    """(array, name) pairs of an image layer: one per plane of a stack with ``split``, else the whole layer."""
    data = np.asarray(layer.data).copy()  # snapshot before the worker starts
    if not split:
        return [(data, layer.name)]
    if data.ndim < 3 or (getattr(layer, "rgb", False) and data.ndim < 4):
        raise InputError(f"layer {layer.name!r} is not a stack of 2D images; untick 'one image per plane'")
    names = list(layer.metadata.get("names") or [])
    if len(names) != data.shape[0]:
        names = [f"{layer.name}_{index:03d}" for index in range(data.shape[0])]
    return [(data[index], names[index]) for index in range(data.shape[0])]


class ProjectPanel(QWidget):
    """Create / open a project, add images and see every image's status."""

    def __init__(self, viewer: Any, state: DiffsegState, parent: QWidget | None = None):
        super().__init__(parent)
        _layers.warm_up_layer_machinery()
        self.viewer = viewer
        self.state = state
        self.import_worker = None

        self.project_label = ElidedLabel("No project open")  # a long folder path is cut in the middle
        self.read_only_label = wrapping_label("Read-only: this folder cannot be written. You can look at the "
                                              "images, predict and export to another folder; to label, review or "
                                              "train, copy the project to a writable folder.")
        self.read_only_label.setVisible(False)
        self.new_button = QPushButton("New project…")
        self.open_button = QPushButton("Open project…")
        self.new_button.clicked.connect(self._choose_new)
        self.objects_check = QCheckBox("new project: objects (one id per object)")
        self.objects_check.setToolTip("Objects mode: label each object with its own id (nuclei, cells); the model "
                                      "learns object interior and boundary and gives objects back (instance masks). "
                                      "Off: regions (every label > 0 is one foreground class)")
        self.open_button.clicked.connect(self._choose_open)

        self.layer_combo = LayerCombo(viewer, (Image,))
        self.labels_combo = LayerCombo(viewer, (Labels,), optional=True)
        self.split_check = QCheckBox("one image per plane")
        self.split_check.setToolTip("The layer is a stack of 2D images: each plane becomes a project image")
        self.add_layer_button = QPushButton("Add layer")
        self.add_files_button = QPushButton("Add files…")
        self.add_folder_button = QPushButton("Add folder…")
        self.add_layer_button.clicked.connect(lambda: self.add_layer())
        self.add_files_button.clicked.connect(self._choose_files)
        self.add_folder_button.clicked.connect(self._choose_folder)
        self.layer_combo.currentTextChanged.connect(self._guess_layer_options)
        self.import_progress = QProgressBar()
        self.import_progress.setVisible(False)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        for column in range(1, len(COLUMNS)):
            self.table.horizontalHeader().setSectionResizeMode(column, QHeaderView.ResizeToContents)
        self.table.verticalHeader().setVisible(False)
        self.table.setTextElideMode(Qt.ElideMiddle)  # long image names keep their start and their end
        self.table.cellDoubleClicked.connect(self._show_row)
        self.counts_label = wrapping_label("")

        project_box = QGroupBox("Project folder")
        project_layout = QVBoxLayout(project_box)
        project_layout.addWidget(widget_grid(self.new_button, self.open_button))
        project_layout.addWidget(self.objects_check)
        project_layout.addWidget(self.project_label)
        project_layout.addWidget(self.read_only_label)

        add_box = QGroupBox("Add images")
        add_layout = QFormLayout(add_box)
        add_layout.addRow("image layer", self.layer_combo)
        add_layout.addRow("with labels", self.labels_combo)
        add_layout.addRow(self.split_check)
        add_layout.addRow(self.add_layer_button)
        add_layout.addRow(widget_grid(self.add_files_button, self.add_folder_button))
        add_layout.addRow(self.import_progress)

        layout = QVBoxLayout(self)
        layout.addWidget(project_box)
        layout.addWidget(add_box)
        layout.addWidget(self.counts_label)
        layout.addWidget(self.table)
        hint = wrapping_label("Double-click an image to show it (Annotate for labelling, Review for pseudo-labels).")
        layout.addWidget(hint)
        self._shortcuts = forward_review_keys(self, viewer, state)  # the review keys work here too

        # after the combos refreshed: pick the options for a newly opened layer (e.g. File > Open Sample)
        connect_until_destroyed(self, viewer.layers.events.inserted, self._guess_layer_options)
        connect_until_destroyed(self, state.project_changed, self._on_project_changed)
        connect_until_destroyed(self, state.records_changed, self.refresh)
        connect_until_destroyed(self, state.status_changed, self._update_enabled)
        self._guess_layer_options()
        self._on_project_changed(state.project)

    # ------------------------------------------------------------------ opening
    def _choose_new(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a new, empty folder for the project")
        if folder:
            self.create_project(folder)

    def _choose_open(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a napari-diffseg project folder")
        if folder:
            self.open_project(folder)

    def _can_switch(self) -> bool:
        if self.state.busy:
            notifications.show_warning("stop the training before switching projects")
            return False
        return True

    @user_errors
    def create_project(self, folder: str | Path, objects: bool | None = None) -> Project | None:
        """Create a new project in ``folder`` and make it the open project; ``objects`` (default: the panel's box)
        makes it an objects-mode project (core/objects: instance labels, three-class training)."""
        if not self._can_switch():
            return None
        if objects is None:
            objects = self.objects_check.isChecked()
        from napari_diffseg.core.objects.files import objects_card

        project = Project.create(Path(folder), config={"num_classes": 3, "objects": objects_card()} if objects else None)
        _layers.remove_plugin_layers(self.viewer)
        self.state.set_project(project)
        return project

    @user_errors
    def open_project(self, folder: str | Path) -> Project | None:
        """Open the project in ``folder``: statuses, training settings and the layers it had open come back."""
        if not self._can_switch():
            return None
        project = Project.open(Path(folder))
        _layers.remove_plugin_layers(self.viewer)
        self.state.set_project(project)
        if self.state.read_only:  # said once, here; the panels keep a line about it
            notifications.show_warning(f"opened read-only: the folder is not writable, so labelling, review and "
                                       f"training are off (predicting still works): {project.folder}")
        with busy_cursor():
            restored = _layers.restore_layers(self.viewer, project)
        for kind, name in restored:
            self.state.image_shown.emit(kind, name)
        return project

    def _on_project_changed(self, project: Project | None) -> None:
        self.project_label.setText("No project open" if project is None else str(project.folder))
        self.read_only_label.setVisible(project is not None and self.state.read_only)
        self._update_enabled()
        self.refresh()

    def _update_enabled(self, *_: Any) -> None:
        has_project = self.state.project is not None
        importing = self.import_worker is not None
        for button in (self.add_layer_button, self.add_files_button, self.add_folder_button):
            button.setEnabled(has_project and not importing and not self.state.read_only)
        for button in (self.new_button, self.open_button):
            button.setEnabled(not self.state.busy)

    # ------------------------------------------------------------------ adding images
    def _guess_layer_options(self, *_: Any) -> None:
        """Tick 'one image per plane' for stacks that name their planes (like the sample); pick matching labels."""
        layer = self.layer_combo.layer()
        if layer is None:
            return
        names = layer.metadata.get("names") or []
        self.split_check.setChecked(bool(names) and len(names) == layer.data.shape[0] and layer.data.ndim >= 3)
        for candidate in self.viewer.layers:
            if isinstance(candidate, Labels) and candidate.data.shape == layer.data.shape[: candidate.data.ndim] \
                    and candidate.data.ndim == layer.ndim:
                self.labels_combo.setCurrentText(candidate.name)
                break
        else:
            self.labels_combo.setCurrentIndex(0)

    @user_errors
    def add_layer(self, layer_name: str | None = None, labels_name: str | None = None,
                  split: bool | None = None) -> Any:
        """Add an image layer (default: the chosen one) to the project, optionally with ground truth from a
        Labels layer of the same shape; returns the import worker."""
        project = self._require_project()
        layer = self.viewer.layers[layer_name] if layer_name else self.layer_combo.layer()
        if layer is None:
            raise InputError("no image layer chosen: open an image first")
        labels_layer = (self.viewer.layers[labels_name] if labels_name else self.labels_combo.layer())
        split = self.split_check.isChecked() if split is None else split
        planes = _layer_planes(layer, split)
        masks: list[np.ndarray | None] = [None] * len(planes)
        spatial_dims = image_layout(planes[0][0], name=layer.name)[0]
        spacing = tuple(float(v) for v in layer.scale)[-spatial_dims:]  # the layer's voxel size, for the planner
        if labels_layer is not None:
            label_data = np.asarray(labels_layer.data).copy()
            spatial = planes[0][0].shape[:spatial_dims]
            expected = (len(planes), *spatial) if split else spatial
            if label_data.shape != expected:
                raise InputError(f"labels layer {labels_layer.name!r} has shape {label_data.shape}, which does not "
                                 f"match image layer {layer.name!r} ({expected})")
            masks = list(label_data) if split else [label_data]
        items = [(array, name, mask, spacing) for (array, name), mask in zip(planes, masks)]
        return self._start_import(project, items)

    def _choose_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Add images", "", "Images (*.tif *.tiff *.png *.jpg *.jpeg)")
        if paths:
            self.add_files(paths)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add every image of a folder")
        if folder:
            self.add_folder(folder)

    @user_errors
    def add_files(self, paths: list[str | Path]) -> Any:
        """Add image files (read in the worker); returns the import worker."""
        project = self._require_project()
        return self._start_import(project, [(Path(path), None, None, None) for path in paths])

    @user_errors
    def add_folder(self, folder: str | Path) -> Any:
        return self.add_files(list_images(Path(folder)))

    def _require_project(self) -> Project:
        if self.state.project is None:
            raise InputError("create or open a project first")
        self.state.require_writable("add images")
        return self.state.project

    def _start_import(self, project: Project,
                      items: list[tuple[Any, str | None, np.ndarray | None, tuple[float, ...] | None]]) -> Any:
        if self.import_worker is not None:
            raise InputError("images are still being added; wait for them")

        skipped: list[str] = []

        def events():
            for index, (source, name, mask, spacing) in enumerate(items):
                try:
                    record = project.add_image(source, name=name, spacing=spacing)
                except DuplicateImageError as duplicate:  # the rest of the batch still comes in
                    skipped.append(duplicate.existing)
                else:
                    if mask is not None and np.any(mask):
                        project.save_label(record.name, mask)
                yield index + 1, len(items)

        def on_progress(progress: tuple[int, int]) -> None:
            done, total = progress
            self.import_progress.setMaximum(total)
            self.import_progress.setValue(done)

        def on_finished() -> None:
            self.import_worker = None
            if skipped:
                shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
                notifications.show_warning(f"{len(skipped)} image(s) were already in the project (the same pixels) "
                                           f"and were not added again: {shown}")
            self.import_progress.setVisible(False)
            self._update_enabled()
            self.state.records_changed.emit()

        self.import_progress.setRange(0, len(items))
        self.import_progress.setValue(0)
        self.import_progress.setVisible(True)
        self.import_worker = start_job(events, on_progress, on_finished=on_finished, threads=KEEP_THREADS,
                                       needs_torch=False)
        self._update_enabled()
        return self.import_worker

    # ------------------------------------------------------------------ table
    def refresh(self, *_: Any) -> None:
        project = self.state.project
        records = [] if project is None else project.records()
        counts = None if project is None or not project.objects else project.object_counts()  # objects mode
        columns = COLUMNS + (() if counts is None else (OBJECTS_COLUMN,))
        if self.table.columnCount() != len(columns):
            self.table.setColumnCount(len(columns))
            self.table.setHorizontalHeaderLabels(columns)
        self.table.setRowCount(len(records))
        for row, record in enumerate(records):
            uncertainty = "" if record.uncertainty is None else f"{record.uncertainty:.3f}"
            cells = (record.name, status_text(record), str(record.round), uncertainty)
            if counts is not None:
                cells += (str(counts.get(record.name, "")),)
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if column:
                    item.setTextAlignment(Qt.AlignCenter)
                self.table.setItem(row, column, item)
        self.counts_label.setText("" if project is None else counts_text(project))

    def statuses(self) -> dict[str, str]:
        """Image name -> status text as shown in the table."""
        return {self.table.item(row, 0).text(): self.table.item(row, 1).text() for row in range(self.table.rowCount())}

    @user_errors
    def _show_row(self, row: int, _column: int = 0) -> None:
        project = self.state.project
        if project is None:
            return
        name = self.table.item(row, 0).text()
        review = project.record(name).status == ImageStatus.PSEUDO
        with busy_cursor():
            (_layers.show_for_review if review else _layers.show_for_annotation)(self.viewer, project, name)
        self.state.image_shown.emit("review" if review else "annotate", name)


class ProjectWidget(ProjectPanel):
    """npe2 entry point: the Project panel of the viewer's shared state."""

    def __init__(self, napari_viewer: Any):
        super().__init__(napari_viewer, state_for_viewer(napari_viewer))
