"""napari in objects mode (#28): the Review panel shows an objects project's pseudo-labels with their ids (not
cut to 8 bits), one colour per object, and Accept stores the ids; Annotate opens the ids as they are."""

from __future__ import annotations

import numpy as np
import pytest
from napari.utils import notifications
from napari.utils.colormaps import CyclicLabelColormap

from napari_diffseg._widgets import _layers
from napari_diffseg.core.objects.files import objects_card
from napari_diffseg.core.project.store import ImageStatus, Project

PLUGIN = "napari-diffseg"


def _objects_project(folder) -> Project:
    project = Project.create(folder, config={"num_classes": 3, "objects": objects_card()})
    rng = np.random.default_rng(0)
    for index in range(3):
        project.add_image((rng.random((48, 48)) * 255).astype(np.uint8), name=f"img_{index}")
    truth = np.zeros((48, 48), np.uint16)
    truth[4:12, 4:12], truth[4:12, 12:20] = 1, 2
    project.save_label("img_0", truth)
    for rank, name in enumerate(("img_1", "img_2")):
        classes = np.zeros((48, 48), np.uint8)  # what training writes: the three classes
        classes[10:30, 10:30] = 2
        classes[12:28, 12:19] = 1
        classes[12:28, 21:28] = 1  # two interiors: two objects
        project.save_pseudo(name, classes, np.full((48, 48), 0.1, np.float32), round_number=1, model_id="t",
                            mean_uncertainty=0.1 * (rank + 1))
    return project


def test_review_and_annotate_keep_object_ids(make_napari_viewer, tmp_path, monkeypatch):
    messages = []
    for kind in ("error", "warning", "info"):
        monkeypatch.setattr(notifications, f"show_{kind}", lambda message, _k=kind: messages.append((_k, message)))
    viewer = make_napari_viewer()
    review = viewer.window.add_plugin_dock_widget(PLUGIN, "Review")[1]
    project = _objects_project(tmp_path / "proj")
    review.state.set_project(project)
    name = review.queue[0]
    review.show_image(name)
    layer = review.pseudo_layer()
    assert isinstance(layer.colormap, CyclicLabelColormap)  # one colour per object
    assert layer.data.dtype == np.uint32 and set(np.unique(layer.data)) == {0, 1, 2}
    edited = np.asarray(layer.data).copy()
    edited[40:46, 40:46] = 300  # a new object with an id beyond uint8
    layer.data = edited
    review.accept()
    assert project.record(name).status == ImageStatus.ACCEPTED
    np.testing.assert_array_equal(project.label(name), edited)
    review.undo()  # the accepted ids come back as the draft
    np.testing.assert_array_equal(review.pseudo_layer().data, edited)
    labels = _layers.show_for_annotation(viewer, project, "img_0")
    assert labels.data.dtype == np.uint32 and int(labels.data.max()) == 2
    assert not [m for k, m in messages if k == "error"]


def test_predict_panel_job_writes_and_shows_objects(make_napari_viewer, tmp_path, monkeypatch):
    """The Predict panel's job with an objects model: instance masks to disk (as diffseg predict writes them) and
    in memory, shown with one colour per object."""
    import tifffile

    from napari_diffseg._widgets.predict import PredictResult, predict_job
    from test_cli import run_cli
    from test_cli_objects import FAST, _touching_discs

    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    for index in range(3):
        image, instances = _touching_discs(index)
        tifffile.imwrite(tmp_path / "images" / f"img_{index}.tif", image)
        if index < 2:
            tifffile.imwrite(tmp_path / "labels" / f"img_{index}.tif", instances)
    model = tmp_path / "model"
    code, _, err = run_cli(["train", tmp_path / "images", "--labels", tmp_path / "labels", "--out", model,
                            "--objects", *FAST])
    assert code == 0, err
    code, _, err = run_cli(["predict", model, tmp_path / "images" / "img_2.tif", "--out", tmp_path / "cli"])
    assert code == 0, err
    source = tmp_path / "images" / "img_2.tif"
    events = list(predict_job(model, [("img_2", source, None)], tmp_path / "panel", uncertainty=False))
    assert any(isinstance(e, PredictResult) for e in events)
    written = tifffile.imread(tmp_path / "panel" / "img_2.tif")
    assert written.dtype == np.uint16
    np.testing.assert_array_equal(written, tifffile.imread(tmp_path / "cli" / "img_2.tif"))
    in_memory = [e for e in predict_job(model, [("img_2", source, None)], None, uncertainty=False)
                 if isinstance(e, PredictResult)][0]
    np.testing.assert_array_equal(in_memory.mask, written)
    from napari_diffseg.core.prediction import predict as predicting

    original, mirrored = predicting.tiled_probabilities, []

    def recording(*args, **options):
        mirrored.append(options.get("mirror"))
        return (yield from original(*args, **options))

    monkeypatch.setattr(predicting, "tiled_probabilities", recording)
    list(predict_job(model, [("img_2", source, None)], None, uncertainty=False, mirror=True))
    assert mirrored and set(mirrored) == {True}  # the panel's "mirrored" box reaches every tile pass
    viewer = make_napari_viewer()
    layer = _layers.show_prediction(viewer, tifffile.imread(source), in_memory.mask, None, "img_2")
    assert layer.data.dtype == np.uint16 and isinstance(layer.colormap, CyclicLabelColormap)
    ids = [int(i) for i in np.unique(in_memory.mask) if i]
    assert list(layer.features["index"]) == ids  # the per-object table, one row per object
    assert ids, "the trained model found no object: the check below would test nothing"
    first = in_memory.mask == ids[0]
    assert layer.features["area"].iloc[0] == first.sum()
    assert layer.features["mean_intensity"].iloc[0] == pytest.approx(tifffile.imread(source)[first].mean())
    # a layer source: the '<name> prediction' layer carries the table, intensities from the source layer
    panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict")[1]
    viewer.add_image(tifffile.imread(source), name="nuclei")
    panel._show_result(PredictResult("nuclei", in_memory.mask, None, "nuclei"))
    features = viewer.layers["nuclei prediction"].features
    assert list(features["index"]) == ids
    assert features["mean_intensity"].iloc[0] == pytest.approx(tifffile.imread(source)[first].mean())
    layer = _layers.show_prediction(viewer, tifffile.imread(source), (in_memory.mask > 0).astype(np.uint8), None, "x")
    assert not isinstance(layer.colormap, CyclicLabelColormap)  # a regions mask again: class colours


def test_annotate_says_how_to_paint_objects_and_saves_their_ids(make_napari_viewer, tmp_path, monkeypatch):
    from napari_diffseg._widgets.annotate import HELP, OBJECTS_HELP

    infos = []
    monkeypatch.setattr(notifications, "show_info", lambda message: infos.append(str(message)))
    viewer = make_napari_viewer()
    annotate = viewer.window.add_plugin_dock_widget(PLUGIN, "Annotate")[1]
    project = _objects_project(tmp_path / "proj")
    annotate.state.set_project(project)
    assert annotate.help_label.text() == OBJECTS_HELP and "Press M" in OBJECTS_HELP
    annotate.open_image("img_1")
    layer = annotate.labels_layer()
    painted = np.zeros((48, 48), np.uint32)
    painted[2:8, 2:8], painted[2:8, 8:14], painted[30:40, 30:40] = 5, 6, 1000
    layer.data = painted
    assert annotate.save()
    np.testing.assert_array_equal(project.label("img_1"), painted)
    assert infos[-1].startswith("saved the 3 object(s) of img_1")
    regions = Project.create(tmp_path / "regions")
    regions.add_image(np.zeros((16, 16), np.uint8), name="a")
    annotate.state.set_project(regions)
    assert annotate.help_label.text() == HELP


def test_project_table_counts_the_objects_of_each_image(make_napari_viewer, tmp_path):
    from napari_diffseg._widgets.project import OBJECTS_COLUMN

    viewer = make_napari_viewer()
    panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Project")[1]
    project = _objects_project(tmp_path / "proj")
    assert project.object_counts() == {"img_0": 2, "img_1": 2, "img_2": 2}
    corrected = project.pseudo("img_1")[0].astype(np.uint32)
    corrected[40:44, 40:44] = 9
    project.accept("img_1", corrected)  # the accepted mask's count replaces the pseudo-label's
    project.reject("img_2")  # no mask any more
    panel.state.set_project(project)
    panel.refresh()
    header = [panel.table.horizontalHeaderItem(c).text() for c in range(panel.table.columnCount())]
    assert header[-1] == OBJECTS_COLUMN
    shown = {panel.table.item(r, 0).text(): panel.table.item(r, len(header) - 1).text()
             for r in range(panel.table.rowCount())}
    assert shown == {"img_0": "2", "img_1": "3", "img_2": ""}
    regions = Project.create(tmp_path / "regions")
    regions.add_image(np.zeros((16, 16), np.uint8), name="a")
    panel.state.set_project(regions)
    panel.refresh()
    assert panel.table.columnCount() == len(header) - 1 and regions.object_counts() == {}


def test_new_project_in_objects_mode_from_the_panel(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Project")[1]
    assert not panel.objects_check.isChecked()  # regions by default
    regions = panel.create_project(tmp_path / "regions")
    assert regions.objects is None and regions.num_classes == 2
    panel.objects_check.setChecked(True)
    project = panel.create_project(tmp_path / "objects")
    assert project.objects["mode"] == "objects" and project.num_classes == 3
    assert panel.state.project.folder == project.folder


def test_an_objects_project_trains_its_three_classes_from_napari(make_napari_viewer, tmp_path):
    """The napari settings take the project's classes (they kept 2, and Train was refused: '2 classes but the
    project has 3')."""
    from napari_diffseg.core.project import rounds
    from conftest import tiny_train_config

    viewer = make_napari_viewer()
    panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Project")[1]
    project = _objects_project(tmp_path / "proj")
    panel.state.set_project(project)
    assert panel.state.config.network.num_classes == 3
    config = tiny_train_config(num_classes=panel.state.config.network.num_classes, max_steps=2,
                               patch_size=(32, 32))
    events = list(rounds.train_round(project, config))
    assert project.latest_model_dir() is not None and events
