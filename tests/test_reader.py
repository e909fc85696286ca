"""npe2 readers (napari_diffseg/_reader.py): a project folder opened through napari (viewer.open, a drop on the
canvas) opens in the DiffSeg panels; a model folder becomes the Predict panel's model with its card's summary; the
reader declines everything else, quickly and without raising."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_diffseg import _reader
from napari_diffseg._state import state_for_viewer
from napari_diffseg.core.project.store import Project

SAMPLE = Path(__file__).resolve().parents[1] / "napari_diffseg" / "sample_data" / "train"


@pytest.fixture
def project_dir(tmp_path) -> Path:
    Project.create_from_folders(tmp_path / "my project", SAMPLE / "images", SAMPLE / "masks")
    return tmp_path / "my project"


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A model folder as the reader sees it: best.pt (not loaded by the reader) and a model card."""
    folder = tmp_path / "round_1 model"
    folder.mkdir()
    (folder / "best.pt").write_bytes(b"not loaded by the reader")
    card = {"method": "diffusion teacher + student", "network": {"spatial_dims": 2, "image_channels": 1,
                                                                 "num_classes": 2},
            "data": [{"name": "a", "label_sha256": "x"}, {"name": "b"}], "training": {"steps": 120}}
    (folder / "model_card.json").write_text(json.dumps(card))
    return folder


def _diffseg_widget(viewer):
    from napari_diffseg._widgets.main import DiffsegWidget

    found = [w for w in viewer.window.dock_widgets.values() if isinstance(w, DiffsegWidget)]
    assert len(found) == 1
    return found[0]


def test_marker_names_agree_with_the_engine():
    from napari_diffseg.core.method.checkpoint import CARD
    from napari_diffseg.core.data.io import BEST
    from napari_diffseg.core.project.store import DB_NAME

    assert (_reader.PROJECT_FILE, _reader.MODEL_FILE, _reader.CARD_FILE) == (DB_NAME, BEST, CARD)


def test_the_reader_declines_foreign_paths_quickly_and_without_raising(tmp_path, project_dir, model_dir):
    (tmp_path / "images").mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", np.zeros((8, 8), np.uint8))
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model_card.json").write_text("{}")  # a card without best.pt: not a model folder
    (tmp_path / "other" / "project.sqlite").mkdir()  # a folder with the name of the manifest is not one
    foreign = [tmp_path / "images", tmp_path / "images" / "a.tif", tmp_path / "empty", tmp_path / "missing",
               tmp_path / "other", tmp_path / "other" / "model_card.json", str(tmp_path / "x\0y"), "",
               "https://example.org/project.sqlite", None, 3, [project_dir, model_dir], [], b"bytes"]
    started = time.perf_counter()
    for path in foreign:
        assert _reader.get_reader(path) is None, path
    assert time.perf_counter() - started < 1.0
    assert _reader.classify(project_dir) == ("project", project_dir)
    assert _reader.classify(str(project_dir / "project.sqlite")) == ("project", project_dir)
    assert _reader.classify([model_dir]) == ("model", model_dir)
    assert _reader.classify(model_dir / "model_card.json") == ("model", model_dir)
    assert _reader.classify(model_dir / "best.pt") == ("model", model_dir)


def test_a_project_folder_opened_with_the_plugin_opens_in_the_project_panel(make_napari_viewer, project_dir):
    viewer = make_napari_viewer()
    layers = viewer.open(str(project_dir), plugin="napari-diffseg")
    state = state_for_viewer(viewer)
    assert state.project is not None and state.project.folder == project_dir
    widget = _diffseg_widget(viewer)
    assert widget.tabText(widget.currentIndex()) == "Project"
    panel = widget.panels["Project"]
    assert panel.project_label.text() == str(project_dir)
    assert panel.table.rowCount() == len(list((SAMPLE / "images").iterdir()))
    assert all(layer.name != project_dir.name for layer in layers)  # panels, not a layer named after the folder


def test_a_project_folder_dropped_on_the_canvas_opens_after_napari_asks_for_the_reader(make_napari_viewer,
                                                                                      project_dir, monkeypatch):
    """napari's builtin reader also takes folders, so napari asks; choosing DiffSeg opens the project."""
    from napari._qt.dialogs.qt_reader_dialog import QtReaderDialog
    from qtpy.QtCore import QUrl

    offered: list[list[str]] = []

    def choose_diffseg(dialog):
        buttons = dialog.reader_btn_group.buttons()
        offered.append([button.text() for button in buttons])
        next(b for b in buttons if b.text() == "DiffSeg").setChecked(True)
        return 1

    monkeypatch.setattr(QtReaderDialog, "exec_", choose_diffseg)
    viewer = make_napari_viewer()
    # what QtViewer.dropEvent does with the dropped URLs
    viewer.window._qt_viewer._open_from_list_of_urls_data([QUrl.fromLocalFile(str(project_dir))], stack=False,
                                                          choose_plugin=False)
    assert offered == [["DiffSeg", "napari builtins"]]
    assert state_for_viewer(viewer).project.folder == project_dir
    assert len(viewer.layers) == 0 or all(layer.name != project_dir.name for layer in viewer.layers)


def test_a_dropped_project_file_opens_without_a_question(make_napari_viewer, project_dir, monkeypatch):
    from napari._qt.dialogs.qt_reader_dialog import QtReaderDialog
    from qtpy.QtCore import QUrl

    monkeypatch.setattr(QtReaderDialog, "exec_", lambda dialog: pytest.fail("napari asked for a reader"))
    viewer = make_napari_viewer()
    viewer.window._qt_viewer._open_from_list_of_urls_data([QUrl.fromLocalFile(str(project_dir / "project.sqlite"))],
                                                          stack=False, choose_plugin=False)
    assert state_for_viewer(viewer).project.folder == project_dir


def test_a_model_folder_opens_its_card_in_the_predict_panel(make_napari_viewer, project_dir, model_dir):
    viewer = make_napari_viewer()
    viewer.open(str(project_dir), plugin="napari-diffseg")
    viewer.open(str(model_dir), plugin="napari-diffseg")  # reuses the docked panels
    widget = _diffseg_widget(viewer)
    assert widget.tabText(widget.currentIndex()) == "Predict"
    panel = widget.panels["Predict"]
    assert panel.model_row.text() == str(model_dir)
    summary = panel.status_label.text()
    assert "round_1 model" in summary and "2D grey images, 2 classes" in summary
    assert "2 image(s), 1 labelled; 120 steps" in summary
    assert state_for_viewer(viewer).project.folder == project_dir  # the open project stays open
    panel.model_row.setText("")
    # plugin=None: napari chooses (viewer.open's default is its builtin reader); the only reader of that name
    viewer.open(str(model_dir / "model_card.json"), plugin=None)
    assert panel.model_row.text() == str(model_dir)


def test_a_separately_docked_panel_is_used(make_napari_viewer, model_dir):
    from napari_diffseg._widgets.predict import PredictPanel

    viewer = make_napari_viewer()
    _, separate = viewer.window.add_plugin_dock_widget("napari-diffseg", "Predict")
    viewer.open(str(model_dir), plugin="napari-diffseg")
    assert isinstance(separate, PredictPanel) and separate.model_row.text() == str(model_dir)
    assert len(viewer.window.dock_widgets) == 1


def test_a_broken_model_card_is_said_not_raised(model_dir):
    (model_dir / "model_card.json").write_text("{not json")
    assert "unreadable" in _reader.model_summary(model_dir)
    (model_dir / "model_card.json").write_text(json.dumps({"network": [1], "data": 3}))
    assert "not understood" in _reader.model_summary(model_dir)
    (model_dir / "model_card.json").unlink()
    assert "without its card" in _reader.model_summary(model_dir)


def test_the_manifest_declares_the_reader_for_folders_and_marker_files():
    from npe2 import PluginManifest

    readers = PluginManifest.from_distribution("napari-diffseg").contributions.readers
    assert [(r.command, r.accepts_directories, r.filename_patterns) for r in readers] == [
        ("napari-diffseg.get_reader", True, ["project.sqlite", "best.pt", "model_card.json"])]


def test_asking_the_reader_imports_neither_torch_nor_qt(project_dir):
    import subprocess
    import sys

    code = ("import sys, napari_diffseg._reader as r; "
            f"assert r.get_reader({str(project_dir)!r}) is not None; "
            "print('torch' in sys.modules, 'qtpy' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False False"
