"""napari in objects mode (#28), the object tools: Review's Delete / Split / Merge of the selected object (each
undoable, Accept stores the ids, Revert keeps them) and the Predict panel's per-object table (a layer or the whole
project, shown as rows, saved as CSV as ``diffseg measure`` writes it); both panels fit a 340 px dock."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_diffseg._state import state_for_viewer
from napari_diffseg._widgets._common import DOCK_WIDTH
from napari_diffseg.core.objects.measure import measure_project, object_table
from napari_diffseg.core.project.store import ImageStatus, Project
from test_widgets_laptop import assert_panels_fit_the_dock
from test_widgets_objects import PLUGIN, _objects_project


def _csv(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_review_deletes_splits_and_merges_objects_and_accept_stores_the_ids(make_napari_viewer, tmp_path, shown):
    viewer = make_napari_viewer()
    review = viewer.window.add_plugin_dock_widget(PLUGIN, "Review")[1]
    project = _objects_project(tmp_path / "proj")
    review.state.set_project(project)
    assert review.objects_box.isVisibleTo(review)
    name = review.queue[0]
    layer = review.show_image(name)
    assert layer.contour > 0  # each object drawn by its outline
    teacher = np.asarray(layer.data).copy()
    assert set(np.unique(teacher)) == {0, 1, 2}

    layer.selected_label = 1
    assert review.edit_object("delete") == "deleted object 1"
    assert set(np.unique(layer.data)) == {0, 2}
    layer.undo()  # napari's Ctrl-Z takes the edit back
    np.testing.assert_array_equal(layer.data, teacher)

    layer.selected_label = 2
    review.merge_id.setValue(1)
    review.merge_button.click()
    assert set(np.unique(layer.data)) == {0, 2} and np.count_nonzero(layer.data) == np.count_nonzero(teacher)

    rows, cols = np.nonzero(layer.data == 2)
    cut = int(np.median(cols))
    layer.data_setitem((rows[cols == cut], cols[cols == cut]), 0)  # the user erases a line across it
    review.split_button.click()
    assert set(np.unique(layer.data)) == {0, 2, 3}
    edited = np.asarray(layer.data).copy()

    layer.selected_label = 9
    review.delete_button.click()  # no object 9: said, nothing changes
    assert shown["error"] and "no object with id 9" in shown["error"][-1]
    np.testing.assert_array_equal(layer.data, edited)

    review.accept()
    assert project.record(name).status == ImageStatus.ACCEPTED
    np.testing.assert_array_equal(project.label(name), edited)  # the ids as edited

    other = review.current_name()
    big = np.asarray(review.pseudo_layer().data).copy()
    big[40:46, 40:46] = 300
    review.pseudo_layer().data = big
    review.revert()  # back to the teacher's objects, ids not cut to 8 bits
    assert review.pseudo_layer().data.dtype == np.uint32 and other == review.current_name()
    np.testing.assert_array_equal(review.pseudo_layer().data, project.pseudo(other)[0])

    regions = Project.create(tmp_path / "regions")
    regions.add_image(np.zeros((16, 16), np.uint8), name="a")
    review.state.set_project(regions)
    assert not review.objects_box.isVisibleTo(review)
    assert len(shown["error"]) == 1


def test_predict_panel_measures_a_layer_and_the_project_and_saves_csv(make_napari_viewer, qtbot, tmp_path, shown):
    viewer = make_napari_viewer()
    panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict")[1]
    box = panel.objects_box
    project = _objects_project(tmp_path / "proj")
    rng = np.random.default_rng(3)
    image = (rng.random((48, 48)) * 255).astype(np.uint8)
    ids = np.zeros((48, 48), np.uint16)
    ids[2:10, 2:10], ids[20:30, 5:9], ids[30:40, 30:45] = 4, 9, 12
    viewer.add_image(image, name="cells")
    viewer.add_labels(ids, name="cells prediction")  # as the Predict panel names a layer's result

    viewer.layers.selection.active = viewer.layers["cells"]
    box.measure_layer()  # an image layer is selected: said, nothing measured
    assert shown["error"] and "select a Labels layer" in shown["error"][-1]
    viewer.layers.selection.active = viewer.layers["cells prediction"]
    rows = box.measure_layer()
    assert rows == object_table(ids, image)  # core's table, intensities from the source layer
    assert box.table.isVisibleTo(box) and box.table.rowCount() == 3
    header = [box.table.horizontalHeaderItem(c).text() for c in range(box.table.columnCount())]
    assert header[:3] == ["id", "area", "mean_intensity"]
    assert [box.table.item(r, 0).text() for r in range(3)] == ["4", "9", "12"]
    box.table.cellClicked.emit(1, 0)
    assert viewer.layers["cells prediction"].selected_label == 9  # a row selects its object
    (tmp_path / "a_file").write_text("")
    written = box.save(tmp_path / "a_file" / "cells.csv")  # a file as its folder: said, the viewer goes on
    assert written is None and "cannot create folder a_file" in shown["error"][-1]
    written = box.save(tmp_path / "out" / "cells")  # .csv added
    assert written == tmp_path / "out" / "cells.csv"
    table = _csv(written)
    assert [int(row["id"]) for row in table] == [4, 9, 12]
    assert float(table[0]["mean_intensity"]) == pytest.approx(image[ids == 4].mean())

    panel.state.set_project(project)
    assert box.project_button.isEnabled()
    worker = box.measure_project()
    qtbot.waitUntil(lambda: box.worker is None, timeout=30_000)
    assert worker is not None
    expected = [row for _, found in measure_project(project) for row in found]
    assert box.rows == expected and box.source == "project"
    assert "6 object(s) in 3 image(s)" in box.status.text()
    assert box.table.rowCount() == len(expected)
    written = box.save(tmp_path / "project.csv")
    table = _csv(written)
    assert [(row["image"], int(row["id"])) for row in table] == [(row["image"], row["id"]) for row in expected]
    assert box._default_path() == tmp_path / "proj_objects.csv"  # beside the project, not inside it

    regions = Project.create(tmp_path / "regions")
    panel.state.set_project(regions)
    assert not box.project_button.isEnabled()
    assert box.measure_project() is None and "regions project" in shown["error"][-1]


def test_objects_panels_fit_a_340_px_dock(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 800)
    dock, tabs = viewer.window.add_plugin_dock_widget(PLUGIN, "DiffSeg (all panels)")
    project = _objects_project(tmp_path / "proj")
    state_for_viewer(viewer).set_project(project)
    review, predict = tabs.panels["Review"], tabs.panels["Predict"]
    review.show_image(review.queue[0])
    viewer.layers.selection.active = review.pseudo_layer()
    predict.objects_box.measure_layer()
    assert predict.objects_box.table.isVisibleTo(predict) and review.objects_box.isVisibleTo(review)
    for name in ("Review", "Predict"):
        assert tabs.panels[name].minimumSizeHint().width() <= DOCK_WIDTH, name
    assert_panels_fit_the_dock(viewer, qtbot, tabs, dock, ["Review", "Predict"])
