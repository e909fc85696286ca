"""The per-object table in napari (#28), a box of the Predict panel: measure the selected Labels layer (one row per
object id) or every image of an objects project (its current mask, in a worker), see the rows, save them as CSV.
The measuring is core/objects/measure.py's (``object_table``, ``measure_project``, ``write_table``), the same as
``diffseg measure``; this box only picks the layers, shows rows and asks for a file name."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QAbstractItemView, QFileDialog, QGroupBox, QPushButton, QTableWidget, QTableWidgetItem,
                            QVBoxLayout)

from napari_diffseg._widgets import _layers
from napari_diffseg._widgets._common import busy_cursor, user_errors, widget_grid, wrapping_label
from napari_diffseg._workers import KEEP_THREADS, error_message, notify_error, start_job
from napari_diffseg.core.errors import InputError

log = logging.getLogger(__name__)

ROWS_SHOWN = 500  # rows put in the table view (a project can have tens of thousands of objects); the CSV has all
SHOWN_COLUMNS_FIRST = ("image", "id", "area", "volume", "mean_intensity")  # the columns worth seeing in 340 px
PREDICTION_SUFFIX = " prediction"  # the Predict panel's "<layer> prediction" layers: their image is "<layer>"
PLUGIN_IMAGE_OF = {_layers.PREDICT_MASK: _layers.PREDICT_IMAGE, _layers.REVIEW_PSEUDO: _layers.REVIEW_IMAGE,
                   _layers.ANNOTATE_LABELS: _layers.ANNOTATE_IMAGE}
TABLE_HELP = ("One row per object: id, area (2D) or volume (3D) in pixels, centroid, mean intensity of its image, "
              "bounding box (min inclusive, max exclusive). Click a row of a layer's table to select that object's "
              "label. Save writes every row as CSV, as diffseg measure does.")


def image_for_labels(viewer: Any, labels: Any) -> np.ndarray | None:
    """The image under a Labels layer, for the mean intensity: the Predict / Review / Annotate layer it was shown
    with, or the source layer of a '<layer> prediction'; None when there is none of the same spatial shape."""
    name = PLUGIN_IMAGE_OF.get(labels.name)
    if name is None and labels.name.endswith(PREDICTION_SUFFIX):
        name = labels.name[: -len(PREDICTION_SUFFIX)]
    image = _layers.find_layer(viewer, name) if name else None
    if not isinstance(image, Image) or image.multiscale:
        return None
    data = np.asarray(image.data)
    spatial = data.shape[:-1] if image.rgb else data.shape
    return data if spatial == np.shape(labels.data) else None


def layer_rows(viewer: Any, labels: Any) -> list[dict]:
    """The object table of a Labels layer (its ids as they are; a mask of one value is split into its connected
    components by core.objects.targets.as_instances), with intensities when its image is found."""
    from napari_diffseg.core.objects.measure import object_table
    from napari_diffseg.core.objects.targets import as_instances

    if labels.multiscale:
        raise InputError(f"{labels.name!r} is a large image shown at several resolutions; measure its instance TIFF "
                         "with diffseg measure IMAGE MASK --out TABLE.csv")
    instances = as_instances(np.asarray(labels.data), name=labels.name)
    return object_table(instances, image_for_labels(viewer, labels))


class ObjectTableBox(QGroupBox):
    """Measure the selected Labels layer or the project; show the rows; save them as CSV."""

    def __init__(self, viewer: Any, state: Any, parent: Any = None):
        super().__init__("Objects: one row per object", parent)
        self.viewer, self.state = viewer, state
        self.rows: list[dict] = []
        self.source = ""  # what the rows measure: a layer's name or "project"
        self.layer_name: str | None = None  # the Labels layer measured (for selecting an object from a row)
        self.worker = None
        self.layer_button = QPushButton("Measure layer")
        self.layer_button.setToolTip("Measure the Labels layer selected in napari's layer list (e.g. a prediction "
                                     "of an objects model): one row per object id")
        self.project_button = QPushButton("Measure project")
        self.project_button.setToolTip("Measure every image of the objects project: its ground truth, accepted "
                                       "mask or latest pseudo-label (rejected images and images without a mask are "
                                       "left out)")
        self.save_button = QPushButton("Save table (CSV)…")
        self.save_button.setToolTip("Write the rows as CSV (the selected layer's, if nothing is measured yet)")
        self.layer_button.clicked.connect(lambda: self.measure_layer())
        self.project_button.clicked.connect(lambda: self.measure_project())
        self.save_button.clicked.connect(lambda: self.save())
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.verticalHeader().setVisible(False)
        self.table.setMaximumHeight(200)
        self.table.setToolTip(TABLE_HELP)
        self.table.setVisible(False)
        self.table.cellClicked.connect(self.select_object)
        self.status = wrapping_label("")
        layout = QVBoxLayout(self)
        layout.addWidget(widget_grid(self.layer_button, self.project_button))
        layout.addWidget(self.table)
        layout.addWidget(self.status)
        layout.addWidget(self.save_button)
        self.update_enabled()

    def update_enabled(self, *_: Any) -> None:
        project = self.state.project
        self.project_button.setEnabled(project is not None and bool(project.objects) and self.worker is None)
        self.layer_button.setEnabled(self.worker is None)
        self.save_button.setEnabled(self.worker is None)

    # ------------------------------------------------------------------ measuring
    def selected_labels(self) -> Any:
        layer = self.viewer.layers.selection.active
        if not isinstance(layer, Labels):
            raise InputError("select a Labels layer in the layer list first (a prediction of an objects model, or "
                             "labels painted with one id per object)")
        return layer

    @user_errors
    def measure_layer(self, layer: Any = None) -> list[dict]:
        """Measure ``layer`` (default: the selected Labels layer) and show its rows; returns them."""
        layer = layer if layer is not None else self.selected_labels()
        with busy_cursor():
            rows = layer_rows(self.viewer, layer)
        self.layer_name = layer.name
        self._show(rows, layer.name)
        return rows

    @user_errors
    def measure_project(self) -> Any:
        """Measure every image of the objects project in a worker (core.objects.measure.measure_project); returns
        the worker. The rows are shown as the images are measured."""
        project = self.state.project
        if project is None:
            raise InputError("open an objects project first (or measure a Labels layer)")
        if not project.objects:
            raise InputError("this is a regions project: its masks hold classes, not objects; measure a Labels "
                             "layer of object ids instead")
        if self.worker is not None:
            raise InputError("the project is still being measured")
        from napari_diffseg.core.objects.measure import measure_project

        names = project.names()
        self.layer_name = None
        self._show([], "project")
        self.status.setText(f"Measuring {len(names)} image(s)…")

        def events():  # image by image, so that the progress counts the images without a mask too
            for index, name in enumerate(names, start=1):
                for _name, rows in measure_project(project, [name]):
                    yield index, len(names), name, rows
                    break
                else:
                    yield index, len(names), name, []

        self.worker = start_job(events, self._on_measured, on_errored=self._on_error,
                                on_finished=self._on_finished, threads=KEEP_THREADS, needs_torch=False)
        self.update_enabled()
        return self.worker

    def _on_measured(self, event: tuple[int, int, str, list[dict]]) -> None:
        _done, total, _name, rows = event
        self.rows += rows
        self._show(self.rows, "project", measured=(_done, total))

    def _on_error(self, error: BaseException) -> None:
        message = error_message(error)
        self.status.setText(f"Measuring failed: {message}")
        notify_error(message)

    def _on_finished(self) -> None:
        self.worker = None
        self.update_enabled()

    # ------------------------------------------------------------------ showing
    def _show(self, rows: list[dict], source: str, measured: tuple[int, int] | None = None) -> None:
        self.rows, self.source = rows, source
        columns: list[str] = []
        for row in rows[:ROWS_SHOWN]:
            columns += [key for key in row if key not in columns]
        columns.sort(key=lambda c: SHOWN_COLUMNS_FIRST.index(c) if c in SHOWN_COLUMNS_FIRST else
                     len(SHOWN_COLUMNS_FIRST))  # stable: the rest keep the table's order
        shown = rows[:ROWS_SHOWN]
        self.table.setUpdatesEnabled(False)
        try:
            self.table.clear()
            self.table.setColumnCount(len(columns))
            self.table.setHorizontalHeaderLabels(columns)
            self.table.setRowCount(len(shown))
            for row_index, row in enumerate(shown):
                for column, key in enumerate(columns):
                    value = row.get(key, "")
                    text = f"{value:.4g}" if isinstance(value, float) else str(value)
                    item = QTableWidgetItem(text)
                    if key != "image":
                        item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                    self.table.setItem(row_index, column, item)
            self.table.resizeColumnsToContents()
        finally:
            self.table.setUpdatesEnabled(True)
        self.table.setVisible(bool(columns))
        images = len({row.get("image") for row in rows}) if source == "project" else None
        text = f"{len(rows)} object(s) in {source!r}" if images is None else \
            f"{len(rows)} object(s) in {images} image(s) of the project"
        if measured is not None and measured[0] < measured[1]:
            text += f" (measured {measured[0]} of {measured[1]} images…)"
        if len(rows) > ROWS_SHOWN:
            text += f"; the first {ROWS_SHOWN} rows are shown, the CSV has all"
        if rows and "mean_intensity" not in rows[0] and not any(k.startswith("mean_intensity") for k in rows[0]):
            text += "; no mean intensity: no image of the same size under this layer"
        self.status.setText(text)

    def select_object(self, row: int, _column: int = 0) -> None:
        """A row of a layer's table: its object's id becomes the layer's selected label."""
        layer = _layers.find_layer(self.viewer, self.layer_name) if self.layer_name else None
        if layer is None or not 0 <= row < min(len(self.rows), ROWS_SHOWN):
            return
        layer.selected_label = int(self.rows[row]["id"])

    # ------------------------------------------------------------------ saving
    def _default_path(self) -> Path:
        """Beside the project folder (never inside it: it may be read-only), else in the home folder."""
        from napari_diffseg.core.project.store import sanitise_name

        project = self.state.project
        folder = Path(project.folder).parent if project is not None else Path.home()
        stem = Path(project.folder).name if self.source == "project" and project is not None else self.source
        return folder / f"{sanitise_name(stem) or 'objects'}_objects.csv"

    @user_errors
    def save(self, path: str | Path | None = None) -> Path | None:
        """Write the rows shown (measuring the selected layer first when none are) as CSV to ``path`` (asked for
        with a file dialog when None, which confirms replacing a file); returns the path written."""
        if self.worker is not None:
            raise InputError("the project is still being measured; save when it is done")
        if not self.source:
            if self.measure_layer() is None:
                return None
        if path is None:
            chosen, _ = QFileDialog.getSaveFileName(self, "Save the object table", str(self._default_path()),
                                                    "CSV (*.csv)")
            if not chosen:
                return None
            path = chosen
        path = Path(path)
        if path.suffix.lower() != ".csv":
            path = path.with_name(path.name + ".csv")
        if path.is_dir():
            raise InputError(f"{path} is a folder; give a file name for the table")
        from napari_diffseg.core.objects.measure import write_table

        try:
            write_table(self.rows, path)
        except OSError as error:  # a folder that cannot be written, a full disk: said, the viewer goes on
            raise InputError(f"could not write the table ({error.strerror or error}): {path}") from error
        self.status.setText(f"{len(self.rows)} object(s) saved: {path}")
        return path
