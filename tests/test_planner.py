"""The planner (core/method/planner.py): the layout, scale, patch and batch it chooses from the data and the device,
its overrides, and the 2D-on-slices layout end to end (training on slices of volumes, predicting volumes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_diffseg.core.data.synthetic import make_blobs_dataset
from napari_diffseg.core.data.training_set import training_data_from_arrays, training_data_from_folders
from napari_diffseg.core.errors import InputError
from napari_diffseg.core.method.checkpoint import CARD, ModelCheckpoint
from napari_diffseg.core.method.config import TrainConfig
from napari_diffseg.core.method.planner import (ANISOTROPY_RATIO, BATCH_3D, PATCH_3D_CPU, DeviceInfo, Plan,
                                                plan_training, training_bytes)
from conftest import tiny_train_config

CPU = DeviceInfo("cpu", 1, None)
GPU = DeviceInfo("cuda", 8, 40 * 2**30)


def test_anisotropic_volumes_are_sliced_across_the_coarse_axis():
    shapes = [(40, 96, 20)] * 3
    plan = plan_training(shapes, spacing=(0.5, 0.5, 2.0), device=GPU)  # coarse axis last, ratio 4
    assert plan.layout == "2d" and plan.slice_axis == 2 and plan.network_dims == 2
    assert len(plan.patch_size) == 2 and "anisotropic" in plan.reason
    assert plan.working_scale == (1.0, 1.0, 1.0)
    # just under nnU-Net's ratio, a GPU gets the 3D network
    isotropic_enough = plan_training(shapes, spacing=(1.0, 1.0, ANISOTROPY_RATIO * 0.99), device=GPU)
    assert isotropic_enough.layout == "3d" and isotropic_enough.slice_axis is None


def test_isotropic_volumes_get_a_3d_network_that_fits_the_gpu_and_slices_on_a_cpu():
    shapes = [(88, 190, 140), (90, 200, 150)]
    plan = plan_training(shapes, device=GPU)
    assert plan.layout == "3d" and len(plan.patch_size) == 3 and plan.batch_size == BATCH_3D
    assert all(p % 8 == 0 for p in plan.patch_size)
    assert training_bytes(plan.patch_size, plan.batch_size, 16) <= 0.5 * GPU.free_memory
    assert plan.patch_size[0] >= PATCH_3D_CPU[0] and np.prod(plan.patch_size) > np.prod(PATCH_3D_CPU)
    small_gpu = plan_training(shapes, device=DeviceInfo("cuda", 8, 2 * 2**30))
    assert np.prod(small_gpu.patch_size) < np.prod(plan.patch_size)  # less memory, a smaller patch
    # a CPU: slices across the first axis (the decision and its evidence: planner.CPU_VOLUME_LAYOUT)
    cpu = plan_training(shapes, device=CPU)
    assert cpu.layout == "2d" and cpu.slice_axis == 0 and cpu.batch_size == 8 and "CPU" in cpu.reason


def test_a_thin_axis_is_sliced_and_2d_images_stay_2d():
    plan = plan_training([(64, 6, 64)], device=GPU)
    assert plan.layout == "2d" and plan.slice_axis == 1 and "too few" in plan.reason
    flat = plan_training([(256, 256)], device=CPU)
    assert flat.layout == "2d" and flat.slice_axis is None and flat.patch_size == (128, 128)
    with pytest.raises(InputError, match="needs volumes"):
        plan_training([(256, 256)], layout="3d")


def test_the_working_scale_comes_from_the_labels_and_not_along_the_slice_axis():
    label = np.zeros((4, 300, 300), np.uint8)
    label[:, 75:225, 75:225] = 1  # a slab 150 px across in-plane, 75 px of background around it
    plan = plan_training([label.shape], [label], spacing=(5.0, 1.0, 1.0), device=CPU)
    assert plan.slice_axis == 0 and plan.working_scale[0] == 1.0
    assert plan.working_scale[1] == plan.working_scale[2] < 1.0 and plan.scale == plan.working_scale[1]


def test_overrides_win_and_both_is_planned_member_by_member():
    shapes = [(40, 64, 64)]
    assert plan_training(shapes, device=GPU, layout="2d").layout == "2d"
    forced = plan_training(shapes, spacing=(4, 1, 1), device=CPU, layout="3d", patch_size=(16, 32, 32), batch_size=3)
    assert (forced.layout, forced.patch_size, forced.batch_size) == ("3d", (16, 32, 32), 3)
    assert "given" in forced.reason
    assert plan_training(shapes, device=CPU, patch_size=(16, 32, 32)).layout == "3d"  # 3 numbers: a 3D network
    with pytest.raises(InputError, match="2 numbers"):
        plan_training(shapes, device=CPU, layout="2d", patch_size=(16, 32, 32))
    with pytest.raises(InputError, match="each planned in its own layout"):
        plan_training(shapes, layout="both")  # two networks: core/method/ensemble.py plans each (tests/test_ensemble.py)
    assert TrainConfig(layout="both").network.layout == "both"
    with pytest.raises(InputError, match="patch size needs"):
        TrainConfig(layout="3d", patch_size=(32, 32))


def test_a_plan_round_trips_and_a_damaged_one_is_refused():
    plan = plan_training([(30, 64, 64)], spacing=(3.0, 1.0, 1.0), device=CPU)
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    with pytest.raises(InputError):
        Plan.from_dict({**plan.to_dict(), "patch_size": [8, 8, 8]})
    with pytest.raises(InputError):
        Plan.from_dict({"layout": "2d"})


def test_spacing_from_imagej_tiffs_reaches_the_training_data(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for index, (image, mask) in enumerate(make_blobs_dataset(2, (8, 32, 32), ndim=3)):
        tifffile.imwrite(tmp_path / "images" / f"v{index}.tif", image, imagej=True, resolution=(2.0, 2.0),
                         metadata={"spacing": 4.0, "axes": "ZYX"})
        if index == 0:
            tifffile.imwrite(tmp_path / "labels" / f"v{index}.tif", mask)
    data = training_data_from_folders(tmp_path / "images", tmp_path / "labels")
    assert data.spacing == pytest.approx((4.0, 0.5, 0.5))


def test_a_project_keeps_each_images_spacing_for_the_planner(tmp_path):
    from napari_diffseg.core.project.rounds import project_training_data
    from napari_diffseg.core.project.store import Project

    pairs = make_blobs_dataset(3, (8, 32, 32), ndim=3, seed=2)
    tifffile.imwrite(tmp_path / "from_file.tif", pairs[2][0], imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 4.0, "axes": "ZYX"})
    project = Project.create(tmp_path / "proj")
    given = project.add_image(pairs[0][0], name="given", spacing=(5.0, 1.0, 1.0))  # a napari layer's scale
    plain = project.add_image(pairs[1][0], name="plain", spacing=(1.0, 1.0, 1.0))  # napari's default: says nothing
    read = project.add_image(tmp_path / "from_file.tif")  # the file's own metadata
    assert project.spacing(given.name) == (5.0, 1.0, 1.0)
    assert project.spacing(plain.name) is None
    assert project.spacing(read.name) == pytest.approx((4.0, 0.5, 0.5))
    project.save_label(given.name, pairs[0][1])
    data = project_training_data(project)
    assert data.spacing == pytest.approx((4.5, 0.75, 0.75))  # the median of the images that carry one
    plan = plan_training([image.shape[1:] for image in data.images], spacing=data.spacing, device=GPU)
    assert plan.layout == "2d" and plan.slice_axis == 0 and "anisotropic" in plan.reason
    # a voxel size that is not one: a clear error, and the project is unchanged
    for bad in ((1.0, 2.0), (0.0, 1.0, 1.0), ("a", 1, 1), (float("nan"), 1.0, 1.0)):
        with pytest.raises(InputError, match="voxel size"):
            project.add_image(pairs[1][0] + 1, name="bad", spacing=bad)
    assert project.names() == ["given", "plain", "from_file"]
    # reopened from disk, the spacing is still there
    assert Project.open(tmp_path / "proj").spacing("given") == (5.0, 1.0, 1.0)


def _volumes(count=2, shape=(12, 40, 48)):
    pairs = make_blobs_dataset(count, shape, ndim=3, seed=3)
    return training_data_from_arrays([p[0] for p in pairs], {0: pairs[0][1]}, [f"v{i}" for i in range(count)])


def test_a_2d_layout_model_trains_on_slices_and_predicts_volumes(tmp_path):
    from napari_diffseg.core.method.training import train
    from napari_diffseg.core.prediction.model import SegmentationModel

    data = _volumes()
    data.spacing = (4.0, 1.0, 1.0)  # anisotropic: slices across axis 0
    config = tiny_train_config(max_steps=3, patch_size=None, batch_size=None)
    events = list(train(data, config, tmp_path))
    card = json.loads((tmp_path / CARD).read_text())
    plan = Plan.from_dict(card["plan"])
    assert plan.layout == "2d" and plan.slice_axis == 0 and card["network"]["spatial_dims"] == 2
    assert "anisotropic" in card["plan"]["text"]
    assert ModelCheckpoint.load(tmp_path / "best.pt").plan == plan.to_dict()
    # the pseudo-label of the unlabelled volume is a volume
    pseudo = tifffile.imread(tmp_path / "pseudo_labels" / "v1.tif")
    assert pseudo.shape == data.images[1].shape[1:]
    model = SegmentationModel.load(tmp_path)
    assert model.image_dims == 3 and model.slice_axis == 0 and model.config.spatial_dims == 2
    raw = make_blobs_dataset(1, (9, 36, 44), ndim=3, seed=9)[0][0]
    prediction = model.predict(raw)
    assert prediction.mask.shape == raw.shape and prediction.probabilities.shape == (2, *raw.shape)
    with pytest.raises(InputError, match="3D"):
        model.predict(raw[0])  # a 2D image for a model of volumes
    assert any(type(e).__name__ == "Done" for e in events)
    assert type(events[0]).__name__ == "PlanChosen" and events[0].text == plan.describe()  # before the first step


def test_the_predict_panel_segments_a_volume_with_a_model_of_slices(tmp_path, monkeypatch):
    """The Predict panel's job passes a volume whole to a model trained on 2D slices (it used to cut the stack into
    planes, which such a model refuses)."""
    from napari_diffseg._widgets.predict import PredictResult, predict_job
    from napari_diffseg.core.method.training import train
    from napari_diffseg.core.prediction import openvino_backend

    monkeypatch.setattr(openvino_backend, "available", lambda: False)  # torch: no model conversion in a unit test

    data = _volumes(2, (8, 24, 24))
    list(train(data, tiny_train_config(max_steps=1, layout="2d", patch_size=(16, 16)), tmp_path / "model"))
    volume = make_blobs_dataset(1, (9, 20, 28), ndim=3, seed=2)[0][0]
    results = [e for e in predict_job(tmp_path / "model", [("v", volume, None)], None, False)
               if isinstance(e, PredictResult)]
    assert len(results) == 1 and results[0].mask.shape == volume.shape


def test_slice_prediction_equals_the_2d_network_on_each_slice(tmp_path):
    """Prediction slice by slice across axis 1 is the 2D network applied to each of those slices, stacked."""
    from napari_diffseg.core.method.training import train
    from napari_diffseg.core.prediction.model import SegmentationModel
    from napari_diffseg.core.prediction.predict import run_to_completion, tiled_probabilities

    data = _volumes(1, (24, 10, 40))
    list(train(data, tiny_train_config(max_steps=2, layout="2d", patch_size=(16, 32)), tmp_path))
    model = SegmentationModel.load(tmp_path)
    volume = data.images[0]
    # the thin axis (10 voxels) is not the one chosen here: layout 2d given slices across axis 0; force axis 1 to
    # check the stacking along another axis
    from dataclasses import replace
    model.plan = replace(model.plan, slice_axis=1)
    model.slice_axis = 1
    full = model.iter_predict_normalised(volume)
    probs = run_to_completion(full).probabilities
    for index in (0, 7):
        alone = run_to_completion(tiled_probabilities([model.network], np.ascontiguousarray(volume[:, :, index]),
                                                      (1024, 1024)))
        np.testing.assert_allclose(probs[:, :, index], alone.primary, atol=1e-5)


def test_a_warm_start_keeps_the_plan_it_was_trained_in(tmp_path):
    from napari_diffseg.core.method.training import train

    data = _volumes(2, (16, 32, 32))
    list(train(data, tiny_train_config(max_steps=2, patch_size=(8, 16, 16), layout="3d"), tmp_path / "a"))
    # a second round with layout auto and no patch (which on a CPU would plan 2d slices): it continues in the 3d
    # layout and patch of the first
    list(train(data, tiny_train_config(max_steps=2, patch_size=None, batch_size=None), tmp_path / "b",
               warm_start=tmp_path / "a"))
    card = json.loads((tmp_path / "b" / CARD).read_text())
    assert card["plan"]["layout"] == "3d" and card["plan"]["patch_size"] == [8, 16, 16]
    assert card["network"]["spatial_dims"] == 3


def test_a_scale_given_at_a_warm_start_wins_over_the_saved_plan(tmp_path):
    from napari_diffseg.core.method.training import train

    data = _volumes(2, (16, 32, 32))
    list(train(data, tiny_train_config(max_steps=1, patch_size=None, batch_size=None, layout="2d"), tmp_path / "a"))
    list(train(data, tiny_train_config(max_steps=1, patch_size=None, batch_size=None, working_scale=0.5),
               tmp_path / "b", warm_start=tmp_path / "a"))
    card = json.loads((tmp_path / "b" / CARD).read_text())
    assert card["working_scale"] == 0.5 and card["plan"]["working_scale"] == [1.0, 0.5, 0.5]


def test_exporting_a_model_of_slices_is_refused_in_one_line(tmp_path):
    from napari_diffseg.core.method.training import train
    from napari_diffseg.core.prediction.bioimageio_export import ExportError, scripted_module
    from napari_diffseg.core.prediction.model import SegmentationModel

    list(train(_volumes(2, (8, 24, 24)), tiny_train_config(max_steps=1, layout="2d", patch_size=(16, 16)), tmp_path))
    with pytest.raises(ExportError, match="slice by slice.*not built yet"):
        scripted_module(SegmentationModel.load(tmp_path, backend="torch"))


def test_a_3d_layout_still_trains_and_predicts_volumes(tmp_path):
    from napari_diffseg.core.method.training import train
    from napari_diffseg.core.prediction.model import SegmentationModel

    data = _volumes(2, (16, 32, 32))
    list(train(data, tiny_train_config(max_steps=2, patch_size=(8, 16, 16)), tmp_path))
    card = json.loads((tmp_path / CARD).read_text())
    assert card["plan"]["layout"] == "3d" and card["network"]["spatial_dims"] == 3
    model = SegmentationModel.load(tmp_path)
    assert model.slice_axis is None and model.image_dims == 3
    raw = make_blobs_dataset(1, (10, 20, 24), ndim=3, seed=5)[0][0]
    assert model.predict(raw).mask.shape == raw.shape


def test_project_rounds_of_volumes_continue_in_their_layout(tmp_path):
    """A project of volumes on a CPU trains 2D slices: the next round warm-starts from the previous one, and round 1
    from the teacher pretrained while labelling (both are 2D networks, not 'other network settings')."""
    from napari_diffseg.core.project import rounds
    from napari_diffseg.core.project.store import Project

    pairs = make_blobs_dataset(2, (8, 24, 24), ndim=3, seed=4)
    project = Project.create(tmp_path / "proj")
    for index, (image, _) in enumerate(pairs):
        project.add_image(image, name=f"v{index}")
    project.save_label("v0", pairs[0][1])
    config = tiny_train_config(max_steps=2, patch_size=None, batch_size=None, threads=1)
    list(rounds.pretrain_project(project, config))
    first = list(rounds.train_round(project, config))
    assert "pretrained without labels" in first[0].note
    card = json.loads((project.checkpoints_dir(1) / CARD).read_text())
    assert card["plan"]["layout"] == "2d" and card["network"]["spatial_dims"] == 2
    project.next_round()
    second = list(rounds.train_round(project, config))
    assert second[0].warm_start == project.checkpoints_dir(1), second[0].note


def test_the_train_panel_shows_the_plan(qtbot):
    from napari_diffseg._state import DiffsegState
    from napari_diffseg._widgets.train import TrainPanel
    from napari_diffseg.core.method.events import PlanChosen

    panel = TrainPanel(None, DiffsegState())
    qtbot.addWidget(panel)
    plan = plan_training([(10, 64, 64)], spacing=(4.0, 1.0, 1.0), device=CPU)
    panel._on_event(PlanChosen(plan.describe(), plan.to_dict()))
    assert panel.plan_label.text() == plan.describe() and "across axis 0" in panel.plan_label.text()
