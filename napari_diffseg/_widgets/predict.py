"""Predict panel: run a trained model (default: the project's latest round) on an open layer, an image file or a
folder of images, 2D or 3D, in overlapping tiles, with progress and cancel; the result goes to a Labels layer
or to a folder on disk (uint8 TIFF masks, optionally float32 uncertainty maps).

An open layer's result is a "<layer> prediction" Labels layer beside it. Files and folders are segmented into a
browsable list: the chosen result is shown with its own image in two plugin layers that are reused, so results
never pile up without their images.

Image files over core.prediction.large.LARGE_IMAGE_PIXELS go to disk only, predicted block by block (a zarr mask and a tiled
TIFF, see core/prediction/large.py); the panel shows an overview that fills in as blocks are written (every n-th pixel, in
memory), then full resolution read lazily from the files once the output is complete (_layers.LargeOverview).

*Objects: one row per object* (_objects_table.py) measures the selected Labels layer or a whole objects project
(core/objects/measure.py, as ``diffseg measure``), shows the rows and saves them as CSV.

*Export for bioimage.io…* writes the chosen model as a bioimage.io model package in a worker
(core.prediction.bioimageio_export, the same function as ``diffseg export``); a failure is one line in the status and a
notification.

A 2D model applied to a 3D grey array (a volume or a stack of 2D images such as the sample) segments it plane by
plane. The work runs in a background worker; the layer data is snapshotted before it starts, and result layers
are added on the GUI thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
import logging
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QListWidget, QListWidgetItem,
                            QProgressBar, QPushButton, QVBoxLayout, QWidget)

from napari_diffseg._state import DiffsegState, state_for_viewer
from napari_diffseg._widgets import _layers
from napari_diffseg._widgets._objects_table import ObjectTableBox
from napari_diffseg._widgets._common import (LayerCombo, PathRow, connect_until_destroyed, forward_review_keys,
                                            user_errors, wrapping_label)
from napari_diffseg._workers import error_message, notify_error, start_job
from napari_diffseg.core.errors import InputError
from napari_diffseg.core.data.io import (UNCERTAINTY_SUFFIX, list_images, name_stem, read_image, refuse_overwriting_inputs,
                                    write_mask, write_tiff_atomic)
from napari_diffseg.core.project.store import sanitise_name

log = logging.getLogger(__name__)

SOURCE_LAYER, SOURCE_FILE, SOURCE_FOLDER = "open layer", "image file", "folder of images"
OUTPUT_LAYER, OUTPUT_DISK = "Labels layer", "folder on disk"
PREDICTION_SUFFIX = " prediction"
UNCERTAINTY_LAYER_SUFFIX = " uncertainty"  # layer name: "<source> uncertainty"


@dataclass
class PredictProgress:
    """Overall progress of a prediction job (fraction in [0, 1]) and the image being segmented."""

    fraction: float
    name: str


@dataclass
class PredictStatus:
    """What the job is doing, for the panel's status line."""

    text: str


@dataclass
class PredictResult:
    """One segmented image: for a layer output the arrays; for a disk output the written file."""

    name: str
    mask: np.ndarray | None
    uncertainty: np.ndarray | None
    source_layer: str | None
    path: Path | None = None
    source_path: Path | None = None  # the image file a result of a file / folder source came from


@dataclass
class OverviewPiece:
    """A block of a large image just written, as every ``step``-th pixel of its mask and image, and where it goes in
    the overview (``region``, in overview pixels) of the full image."""

    name: str
    source: Path
    zarr_path: Path
    step: int
    overview_shape: tuple[int, ...]
    region: tuple[slice, ...]
    mask: np.ndarray
    image: np.ndarray


def _overview_pieces(name: str, source: Path, target: Path):
    """A function from a written region of the large output of ``source`` to its OverviewPiece (runs in the worker:
    it reads the region back from the zarr mask and the image file)."""
    import zarr

    from napari_diffseg.core.prediction import large

    zarr_path = large.output_zarr(target)
    opened: dict = {}  # the mask and the image, opened when the first block is written (the zarr exists then)

    def piece(region: tuple[slice, ...]) -> OverviewPiece:
        if not opened:
            opened["mask"] = zarr.open_array(str(zarr_path), mode="r")
            opened["image"] = large.open_lazy(source)
        shape = tuple(opened["mask"].shape)
        step = large.overview_step(shape)
        where, mask = large.overview_of_region(opened["mask"], region, step)
        _, image = large.overview_of_region(opened["image"], region, step)
        large.release_mapped_pages(opened["image"])
        return OverviewPiece(name, source, zarr_path, step, large.overview_shape(shape, step), where, mask, image)

    return piece


def predict_job(model_dir: Path, sources: list[tuple[str, Any, str | None]], out_dir: Path | None,
                uncertainty: bool, mirror: bool = False) -> Iterator[PredictProgress | PredictResult]:
    """Segment each ``(name, array or path, source layer name)``, with test-time mirroring when ``mirror``; runs in
    a worker (imports torch here)."""
    from napari_diffseg.core.prediction.model import SegmentationModel
    from napari_diffseg.core.device import bf16_supported, select_device

    from napari_diffseg.core.prediction import large

    device = select_device("auto")
    yield PredictStatus(_loading_message(device))
    model = SegmentationModel.load(model_dir, device=device, bf16=bf16_supported(device), backend="auto")
    model.mirror = mirror  # every prediction below, the block-by-block ones of large images included
    from napari_diffseg.core.objects.files import card_objects

    objects = card_objects(model.card) is not None  # objects mode (core/objects): instance masks out
    yield PredictStatus(f"Segmenting {len(sources)} image(s)…")
    for index, (name, source, layer_name) in enumerate(sources):
        if isinstance(source, Path) and large.pixel_count(source) > large.LARGE_IMAGE_PIXELS:
            if out_dir is None:
                raise InputError(f"{source.name} is too large to segment in memory: choose '{OUTPUT_DISK}' as the "
                                 "output (it is then predicted block by block)")
            target = Path(out_dir) / f"{sanitise_name(name_stem(source))}.tif"
            blocks = large.predict_file(model, source, target)
            overview = _overview_pieces(name, source, target)
            while True:
                try:
                    progress = next(blocks)
                except StopIteration as stop:
                    if objects:  # the classes went block by block into <stem>.zarr; the objects into <stem>.tif
                        from napari_diffseg.core.objects.blocks import decode_large

                        yield PredictStatus(f"{name}: decoding the objects block by block…")
                        for _ in decode_large(large.output_zarr(target), target):
                            pass
                    yield PredictResult(name, None, None, layer_name, stop.value, source_path=source)
                    break
                if progress.region is not None:
                    yield overview(progress.region)
                yield PredictProgress((index + progress.done / progress.total) / len(sources), name)
            continue
        image = read_image(source) if isinstance(source, Path) else np.asarray(source)
        per_plane = model.image_dims == 2 and _is_stack_of_2d(image)  # (a model of 2D slices takes volumes)
        planes = list(image) if per_plane else [image]
        masks, maps = [], []
        for plane_index, plane in enumerate(planes):
            run = model.iter_predict(plane, uncertainty=uncertainty, name=name)
            while True:
                try:
                    tiles = next(run)
                except StopIteration as stop:
                    prediction = stop.value
                    break
                done = (plane_index + tiles.done / max(1, tiles.total)) / len(planes)
                yield PredictProgress((index + done) / len(sources), name)
            if objects:
                from napari_diffseg.core.objects.decode import probabilities_to_instances

                masks.append(probabilities_to_instances(prediction.probabilities))
            else:
                masks.append(prediction.mask)
            maps.append(prediction.uncertainty)
        mask = np.stack(masks) if per_plane else masks[0]
        unc = (np.stack(maps) if per_plane else maps[0]) if uncertainty else None
        if out_dir is None:
            yield PredictResult(name, mask, unc, layer_name,
                                source_path=source if isinstance(source, Path) else None)
            continue
        stem = sanitise_name(name_stem(source) if isinstance(source, Path) else name)
        path = Path(out_dir) / f"{stem}.tif"
        if objects:
            from napari_diffseg.core.objects.files import write_instances

            write_instances(path, mask)
        else:
            write_mask(path, mask)
        if unc is not None:
            write_tiff_atomic(Path(out_dir) / f"{stem}{UNCERTAINTY_SUFFIX}.tif", unc.astype(np.float32))
        yield PredictResult(name, None, None, layer_name, path)


def export_job(model_dir: Path, out: Path, overwrite: bool) -> Iterator[PredictStatus]:
    """Write the model in ``model_dir`` as a bioimage.io package (core.prediction.bioimageio_export); runs in a worker."""
    from napari_diffseg.core.prediction.bioimageio_export import export_bioimageio

    yield PredictStatus(f"Exporting {model_dir.name} for bioimage.io…")
    path = export_bioimageio(model_dir, out, overwrite=overwrite)
    yield PredictStatus(f"bioimage.io package written: {path}")


def _loading_message(device: Any) -> str:
    """The status while the model loads: on a CPU with OpenVINO a 2D model new to this computer is converted
    first (about 8-10 s, then cached), which would otherwise look like a stuck job."""
    from napari_diffseg.core.prediction import openvino_backend

    if device.type == "cpu" and openvino_backend.available():
        return ("Loading the model (a 2D model new to this computer is first converted for the fast CPU backend: "
                "about 10 s, once)…")
    return "Loading the model…"


def _is_stack_of_2d(image: np.ndarray) -> bool:
    """A 3D grey array (volume or stack of 2D planes, any number of planes) or a 4D stack of RGB(A) planes."""
    if image.ndim == 3:
        return image.shape[-1] not in (1, 3, 4)
    return image.ndim == 4 and image.shape[-1] in (3, 4)


class PredictPanel(QWidget):
    """Choose a model and a source, run, watch progress, cancel."""

    def __init__(self, viewer: Any, state: DiffsegState, parent: QWidget | None = None):
        super().__init__(parent)
        _layers.warm_up_layer_machinery()
        self.viewer = viewer
        self.state = state
        self.worker = None
        self.results: list[PredictResult] = []
        self.overview: _layers.LargeOverview | None = None  # a large image being segmented block by block
        self._auto_model = ""

        self.model_row = PathRow("model folder (with best.pt)")
        self.latest_button = QPushButton("Use the project's latest model")
        self.latest_button.clicked.connect(self.use_latest_model)
        self.export_worker = None
        self.export_button = QPushButton("Export for bioimage.io…")
        self.export_button.setToolTip("write the model as a bioimage.io model package (.zip) that bioimage.io tools "
                                      "run (needs napari-diffseg[export]); see docs/cli.md, 'export'")
        self.export_button.clicked.connect(lambda: self.export())
        self.source_combo = QComboBox()
        self.source_combo.addItems([SOURCE_LAYER, SOURCE_FILE, SOURCE_FOLDER])
        self.layer_combo = LayerCombo(viewer, (Image,))
        self.source_row = PathRow("image file or folder")
        self.output_combo = QComboBox()
        self.output_combo.addItems([OUTPUT_LAYER, OUTPUT_DISK])
        self.out_row = PathRow("output folder")
        self.uncertainty_check = QCheckBox("also the uncertainty map")
        self.mirror_check = QCheckBox("mirrored (4x slower)")
        self.mirror_check.setToolTip("Test-time mirroring, as diffseg predict --mirror: the image is predicted as it "
                                     "is and flipped along each axis, and the predictions are averaged (4x the time "
                                     "in 2D, 8x with a 3D network). What it gains is measured in How it works.")
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.status_label = wrapping_label("")
        self.results_list = QListWidget()  # results of a file / folder source: one shown at a time, with its image
        self.results_list.currentRowChanged.connect(self.show_result)
        self.results_list.setVisible(False)  # shown once a file / folder run has results
        self.source_combo.currentTextChanged.connect(self._update_visibility)
        self.output_combo.currentTextChanged.connect(self._update_visibility)

        form = QFormLayout()
        form.addRow("model", self.model_row)
        form.addRow(self.latest_button)
        form.addRow(self.export_button)
        form.addRow("source", self.source_combo)
        form.addRow("layer", self.layer_combo)
        form.addRow("path", self.source_row)
        form.addRow("output", self.output_combo)
        form.addRow("to", self.out_row)
        form.addRow(self.uncertainty_check)
        form.addRow(self.mirror_check)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label)
        layout.addWidget(self.results_list)
        self.objects_box = ObjectTableBox(viewer, state)  # the per-object table (#28)
        layout.addWidget(self.objects_box)
        self._shortcuts = forward_review_keys(self, viewer, state)  # the review keys work here too

        connect_until_destroyed(self, state.project_changed, self._on_project)
        connect_until_destroyed(self, state.status_changed, self._on_project)
        self._update_visibility()
        self._on_project()
        self._set_running(False)

    # ------------------------------------------------------------------ settings
    def _update_visibility(self, *_: Any) -> None:
        source = self.source_combo.currentText()
        self.layer_combo.setEnabled(source == SOURCE_LAYER)
        self.source_row.setEnabled(source != SOURCE_LAYER)
        self.source_row.mode = "file" if source == SOURCE_FILE else "folder"
        self.out_row.setEnabled(self.output_combo.currentText() == OUTPUT_DISK)

    def _on_project(self, *_: Any) -> None:
        """Follow the project's latest model unless the user chose another folder."""
        self.objects_box.update_enabled()
        if self.model_row.text() in ("", self._auto_model):
            self.use_latest_model()

    def use_latest_model(self) -> None:
        project = self.state.project
        if project is None:
            return
        latest = project.latest_model_dir()
        self._auto_model = "" if latest is None else str(latest)
        self.model_row.setText(self._auto_model)

    # ------------------------------------------------------------------ run
    def _sources(self) -> list[tuple[str, Any, str | None]]:
        source = self.source_combo.currentText()
        if source == SOURCE_LAYER:
            layer = self.layer_combo.layer()
            if layer is None:
                raise InputError("no image layer to segment: open an image first")
            return [(layer.name, np.asarray(layer.data).copy(), layer.name)]  # snapshot before the worker starts
        path = Path(self.source_row.text()) if self.source_row.text() else None
        if path is None:
            raise InputError(f"choose the {source} to segment")
        if source == SOURCE_FILE:
            return [(name_stem(path), path, None)]
        return [(name_stem(p), p, None) for p in list_images(path)]

    @user_errors
    def run(self) -> Any:
        """Start predicting; returns the worker."""
        if self.worker is not None:
            raise InputError("a prediction is already running")
        model_text = self.model_row.text()
        if not model_text:
            raise InputError("choose a model folder (train first, or browse to a model)")
        model_dir = Path(model_text)
        if not model_dir.is_dir():
            raise InputError(f"model folder not found: {model_dir}")
        sources = self._sources()
        out_dir = None
        if self.output_combo.currentText() == OUTPUT_DISK:
            if not self.out_row.text():
                raise InputError("choose the output folder")
            out_dir = Path(self.out_row.text())
            files = [source for _, source, _ in sources if isinstance(source, Path)]
            refuse_overwriting_inputs(files, [out_dir / f"{sanitise_name(name_stem(p))}.tif" for p in files],
                                      "choose another output folder")
        uncertainty, mirror = self.uncertainty_check.isChecked(), self.mirror_check.isChecked()
        self.results = []
        self.overview = None
        self.results_list.clear()
        self.results_list.setVisible(False)
        self.progress.setValue(0)
        self.status_label.setText(f"Segmenting {len(sources)} image(s)…")
        self._set_running(True)
        self.worker = start_job(lambda: predict_job(model_dir, sources, out_dir, uncertainty, mirror), self._on_event,
                                on_errored=self._on_error, on_finished=self._on_finished)
        self.worker.aborted.connect(lambda: self.status_label.setText("Cancelled."))
        return self.worker

    def _export_default(self, model_dir: Path) -> Path:
        """Where the export dialog proposes the package: beside the model folder, or in the home folder when that
        is inside a project open read-only (which cannot be written)."""
        default = model_dir.parent / f"{model_dir.name}.zip"
        project = self.state.project
        if self.state.read_only and project is not None and Path(project.folder) in default.parents:
            default = Path.home() / f"{Path(project.folder).name}_{model_dir.name}.zip"
        return default

    @user_errors
    def export(self, out: Path | None = None, overwrite: bool = False) -> Any:
        """Export the chosen model as a bioimage.io package to ``out`` (asked for with a file dialog when None, which
        confirms replacing a file itself); returns the worker."""
        if self.export_worker is not None:
            raise InputError("an export is already running")
        model_text = self.model_row.text()
        if not model_text or not Path(model_text).is_dir():
            raise InputError("choose a model folder to export (train first, or browse to a model)")
        model_dir = Path(model_text)
        if out is None:
            from qtpy.QtWidgets import QFileDialog

            chosen, _ = QFileDialog.getSaveFileName(self, "bioimage.io model package",
                                                    str(self._export_default(model_dir)), "zip (*.zip)")
            if not chosen:
                return None
            out, overwrite = Path(chosen), True
        self.export_button.setEnabled(False)
        self.export_worker = start_job(lambda: export_job(model_dir, Path(out), overwrite), self._on_event,
                                       on_errored=self._on_export_error, on_finished=self._on_export_finished)
        return self.export_worker

    def _on_export_error(self, error: BaseException) -> None:
        message = error_message(error)
        self.status_label.setText(f"Export failed: {message}")
        notify_error(message)

    def _on_export_finished(self) -> None:
        self.export_worker = None
        self.export_button.setEnabled(True)

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _on_event(self, event: Any) -> None:
        if isinstance(event, PredictStatus):
            self.status_label.setText(event.text)
            return
        if isinstance(event, PredictProgress):
            self.progress.setValue(int(round(event.fraction * 1000)))
            return
        if isinstance(event, OverviewPiece):
            if self.overview is None or self.overview.name != event.name:
                self.overview = _layers.LargeOverview(self.viewer, event)
            else:
                self.overview.paste(event)
            return
        if self.overview is not None and event.name == self.overview.name:
            self.overview.finish()
        self.results.append(event)
        if event.mask is not None and event.source_layer is None:
            self.results_list.setVisible(True)
            self.results_list.addItem(QListWidgetItem(event.name))
            if self.results_list.currentRow() < 0:
                self.results_list.setCurrentRow(0)  # the first result appears with its image at once
        elif event.mask is not None:
            self._show_result(event)
        self.status_label.setText(f"{len(self.results)} image(s) segmented"
                                  + (f", written to {event.path.parent}" if event.path is not None else ""))

    def browsed(self) -> list[PredictResult]:
        """The results of a file / folder source, in the order of the list."""
        return [r for r in self.results if r.mask is not None and r.source_layer is None]

    @user_errors
    def show_result(self, row: int) -> Any:
        """Show result ``row`` of the list with its image (re-read from its file) in the two reused plugin layers."""
        results = self.browsed()
        if not 0 <= row < len(results):
            return None
        result = results[row]
        image = read_image(result.source_path)
        _layers.show_prediction(self.viewer, image, result.mask, result.uncertainty, result.name)
        return result

    def _show_result(self, result: PredictResult) -> None:
        """Add (or update) the '<name> prediction' Labels layer, aligned with its source layer."""
        kwargs: dict = {}
        source = self.viewer.layers[result.source_layer] if result.source_layer in self.viewer.layers else None
        if source is not None and source.ndim == result.mask.ndim:
            kwargs = {"scale": source.scale, "translate": source.translate}
        name = f"{result.name}{PREDICTION_SUFFIX}"
        existing = self.viewer.layers[name] if name in self.viewer.layers else None
        if isinstance(existing, Labels) and existing.data.shape == result.mask.shape:
            existing.data = result.mask
        else:
            if existing is not None:
                self.viewer.layers.remove(existing)
            self.viewer.add_labels(result.mask, name=name, **kwargs)
        if result.mask.dtype.itemsize > 1:  # an objects model's instance ids: the per-object table as features
            self.viewer.layers[name].features = _layers.object_features(
                result.mask, np.asarray(source.data) if source is not None and kwargs else None)
        if result.uncertainty is not None:
            unc_name = f"{result.name}{UNCERTAINTY_LAYER_SUFFIX}"
            if unc_name in self.viewer.layers:
                self.viewer.layers.remove(unc_name)
            self.viewer.add_image(result.uncertainty, name=unc_name, **_layers.uncertainty_style(), **kwargs)

    def _on_error(self, error: BaseException) -> None:
        message = error_message(error)
        self.status_label.setText(f"Failed: {message}")
        notify_error(message)

    def _on_finished(self) -> None:
        self.worker = None
        self._set_running(False)
        if self.progress.value() and self.results:
            self.progress.setValue(1000)


class PredictWidget(PredictPanel):
    """npe2 entry point: the Predict panel of the viewer's shared state."""

    def __init__(self, napari_viewer: Any):
        super().__init__(napari_viewer, state_for_viewer(napari_viewer))
