"""napari in objects mode (#28): the Review panel shows an objects project's pseudo-labels with their ids (not
cut to 8 bits), one colour per object, and Accept stores the ids; Annotate opens the ids as they are."""

from __future__ import annotations

import numpy as np
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
