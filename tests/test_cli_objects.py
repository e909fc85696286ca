"""Objects mode through the command line (#28): ``train --objects`` on instance masks, ``predict`` writing
instance masks (and refusing block-by-block images instead of cutting objects at block borders), ``measure``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_diffseg.core.data.io import write_tiff_atomic

from test_cli import assert_one_line_error, run_cli

FAST = ["--steps", "40", "--width", "8", "--patch-size", "32", "32", "--batch-size", "4"]


def _touching_discs(seed: int, shape=(48, 48)) -> tuple[np.ndarray, np.ndarray]:
    """A grey image of bright discs, pairs of them touching, and its uint16 instance mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape)
    instances = np.zeros(shape, np.uint16)
    next_id = 1
    for cy, cx in ((12, 12), (12, 25), (34, 30)):
        cy, cx = cy + int(rng.integers(-2, 3)), cx + int(rng.integers(-2, 3))
        instances[((yy - cy) ** 2 + (xx - cx) ** 2 <= 36) & (instances == 0)] = next_id
        next_id += 1
    image = (40 + 150 * (instances > 0) + rng.normal(0, 8, shape)).clip(0, 255).astype(np.uint8)
    return image, instances


@pytest.fixture(scope="module")
def objects_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("objects")
    (folder / "images").mkdir()
    (folder / "labels").mkdir()
    for index in range(4):
        image, instances = _touching_discs(index)
        write_tiff_atomic(folder / "images" / f"img_{index}.tif", image)
        if index < 2:
            tifffile.imwrite(folder / "labels" / f"img_{index}.tif", instances)  # uint16 ids, as dsb2018 ships
    return folder


@pytest.fixture(scope="module")
def objects_model(objects_data, tmp_path_factory) -> dict:
    model = tmp_path_factory.mktemp("objects_model") / "model"
    code, out, err = run_cli(["train", objects_data / "images", "--labels", objects_data / "labels", "--out", model,
                              "--objects", "--boundary-width", "2", "--seed", "1", *FAST])
    return {"code": code, "out": out, "err": err, "model": model}


def test_train_objects_records_the_mode_and_trains_three_classes(objects_model):
    assert objects_model["code"] == 0, objects_model["err"]
    card = json.loads((objects_model["model"] / "model_card.json").read_text())
    assert card["objects"]["mode"] == "objects" and card["objects"]["boundary_width"] == 2
    assert card["network"]["num_classes"] == 3 and card["config"]["num_classes"] == 3
    assert "objects mode" in objects_model["err"]
    pseudo = tifffile.imread(objects_model["model"] / "pseudo_labels" / "img_3.tif")
    assert pseudo.dtype == np.uint16  # pseudo-labels are written as objects, as predict writes them


def test_predict_with_an_objects_model_writes_the_decoded_instances(objects_model, objects_data, tmp_path):
    from napari_diffseg.core.objects.decode import probabilities_to_instances
    from napari_diffseg.core.prediction.model import SegmentationModel

    code, out, err = run_cli(["predict", objects_model["model"], objects_data / "images" / "img_3.tif",
                              "--out", tmp_path / "pred", "--threads", "1", "--backend", "torch", "--no-bf16"])
    assert code == 0, err
    written = tifffile.imread(tmp_path / "pred" / "img_3.tif")
    assert written.dtype == np.uint16
    model = SegmentationModel.load(objects_model["model"])
    prediction = model.predict(tifffile.imread(objects_data / "images" / "img_3.tif"))
    np.testing.assert_array_equal(written, probabilities_to_instances(prediction.probabilities))
    # a second predict into the same folder needs --overwrite (file safety as for masks)
    code, out, err = run_cli(["predict", objects_model["model"], objects_data / "images" / "img_3.tif",
                              "--out", tmp_path / "pred"])
    assert_one_line_error(code, err, "earlier")


def test_objects_model_predicts_block_by_block_with_one_id_per_object(objects_model, objects_data, tmp_path,
                                                                        monkeypatch):
    """Over the in-memory limit (lowered here) the classes go block by block into <stem>.zarr and the objects are
    decoded block by block into <stem>.tif (core/objects/blocks.py); with windows that cover the image the result
    is the whole-image decoding of the same classes."""
    import zarr

    from napari_diffseg.core.objects import blocks
    from napari_diffseg.core.objects.decode import classes_to_instances
    from napari_diffseg.core.objects.metrics import object_scores
    from napari_diffseg.core.prediction import large

    monkeypatch.setattr(large, "LARGE_IMAGE_PIXELS", 1000)
    monkeypatch.setattr(large, "BLOCK_2D", (24, 24))
    monkeypatch.setattr(blocks, "BLOCK_2D", (24, 24))
    monkeypatch.setattr(blocks, "MARGIN_2D", (24, 24))
    code, out, err = run_cli(["predict", objects_model["model"], objects_data / "images" / "img_3.tif",
                              "--out", tmp_path / "pred"])
    assert code == 0, err
    assert large.is_complete(tmp_path / "pred" / "img_3.zarr")
    classes = np.asarray(zarr.open_array(str(large.output_zarr(tmp_path / "pred" / "img_3.tif"))))
    assert classes.max() <= 2
    written = tifffile.imread(tmp_path / "pred" / "img_3.tif")
    assert written.dtype == np.uint16 and written.shape == classes.shape
    whole = classes_to_instances(classes)
    assert int(written.max()) == int(whole.max())
    if whole.max():
        assert object_scores(whole, written)["ap_50_95"] == 1.0
    assert "decoded block by block" in err
    assert not list((tmp_path / "pred").glob(".*objects.zarr"))


def test_objects_option_errors(objects_data, tmp_path):
    base = ["train", objects_data / "images", "--labels", objects_data / "labels", "--out", tmp_path / "m", *FAST]
    code, out, err = run_cli([*base, "--objects", "--num-classes", "4"])
    assert_one_line_error(code, err, "--objects trains 3 classes")
    code, out, err = run_cli([*base, "--boundary-width", "2"])
    assert_one_line_error(code, err, "add --objects")
    assert not (tmp_path / "m").exists()


def test_measure_writes_the_object_table(objects_data, tmp_path):
    table = tmp_path / "objects.csv"
    code, out, err = run_cli(["measure", objects_data / "images", objects_data / "labels", "--out", table])
    assert code == 0, err
    with table.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["image"], row["id"]) for row in rows] == [(f"img_{i}", str(k)) for i in range(2) for k in (1, 2, 3)]
    image, instances = _touching_discs(0)
    first = rows[0]
    assert int(first["area"]) == int((instances == 1).sum())
    assert float(first["mean_intensity"]) == pytest.approx(image[instances == 1].mean())
    assert "2 image(s)" in err and "not measured" in err  # images without a mask are counted
    code, out, err = run_cli(["measure", objects_data / "images", objects_data / "labels", "--out", table])
    assert_one_line_error(code, err, "--overwrite")
    code, out, err = run_cli(["measure", objects_data / "images", objects_data / "labels", "--out", table,
                              "--overwrite"])
    assert code == 0, err
    # a table named like a mask it reads (img_0.tif) is refused without --overwrite; a mask name is never a table
    code, out, err = run_cli(["measure", objects_data / "images", objects_data / "labels",
                              "--out", objects_data / "labels" / "img_0.csv"])
    assert_one_line_error(code, err, "img_0")
    code, out, err = run_cli(["measure", objects_data / "images", objects_data / "labels",
                              "--out", objects_data / "labels" / "img_0.tif", "--overwrite"])
    assert_one_line_error(code, err, ".csv")
    assert not (objects_data / "labels" / "img_0.csv").exists()


def test_measure_a_projects_current_masks(objects_data, tmp_path):
    from napari_diffseg.core.objects.files import objects_card
    from napari_diffseg.core.project.store import Project

    project = Project.create_from_folders(tmp_path / "proj", objects_data / "images", objects_data / "labels",
                                          objects=objects_card(1))
    table = tmp_path / "project.csv"
    code, out, err = run_cli(["measure", "--project", tmp_path / "proj", "--out", table])
    assert code == 0, err
    with table.open() as handle:
        rows = list(csv.DictReader(handle))
    # the two labelled images' ground truth (the others have no mask yet), as the files measure it
    assert [(row["image"], row["id"]) for row in rows] == [(f"img_{i}", str(k)) for i in range(2) for k in (1, 2, 3)]
    assert "in 2 image(s)" in out
    assert project.names() == [f"img_{i}" for i in range(4)]  # nothing in the project changed
    code, out, err = run_cli(["measure", objects_data / "images", "--project", tmp_path / "proj", "--out", table,
                              "--overwrite"])
    assert_one_line_error(code, err, "not both")
    code, out, err = run_cli(["measure", "--out", table, "--overwrite"])
    assert_one_line_error(code, err, "--project")
    regions = Project.create_from_folders(tmp_path / "regions", objects_data / "images", objects_data / "labels")
    code, out, err = run_cli(["measure", "--project", regions.folder, "--out", tmp_path / "table_of_regions.csv"])
    assert_one_line_error(code, err, "objects project")
    assert not (tmp_path / "table_of_regions.csv").exists()


# ------------------------------------------------------------------------------------------------- projects
def test_project_in_objects_mode_keeps_ids_from_create_to_export(objects_data, tmp_path):
    """create --objects (instance labels stored with their ids), train a round (pseudo-labels decoded into
    objects), accept a pseudo-label with an id painted into it, export: instance masks with the same ids."""
    from napari_diffseg.core.project.store import ImageStatus, Project

    folder = tmp_path / "proj"
    code, out, err = run_cli(["project", "create", folder, "--images", objects_data / "images", "--labels",
                              objects_data / "labels", "--objects", "--boundary-width", "2"])
    assert code == 0, err
    assert "objects mode" in out
    project = Project.open(folder)
    assert project.objects["boundary_width"] == 2 and project.num_classes == 3
    _, instances = _touching_discs(0)
    stored = project.label("img_0")
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(stored, instances)  # ids 1, 2, 3 kept (touching discs not merged)
    code, out, err = run_cli(["project", "train", folder, *FAST])
    assert code == 0, err
    card = json.loads((project.latest_model_dir() / "model_card.json").read_text())
    assert card["objects"]["boundary_width"] == 2 and card["network"]["num_classes"] == 3
    pseudo, _ = project.pseudo("img_3")
    assert pseudo.dtype == np.uint16  # objects, not the three classes
    corrected = pseudo.astype(np.uint16).copy()
    corrected[:4, :4] = 77  # a new object painted with its own id
    project.accept("img_3", corrected)
    assert project.record("img_3").status == ImageStatus.ACCEPTED
    np.testing.assert_array_equal(project.label("img_3"), corrected)
    code, out, err = run_cli(["project", "export", folder, "--out", tmp_path / "exported"])
    assert code == 0, err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "exported" / "img_3.tif"), corrected)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "exported" / "img_0.tif"), instances)
    # the next round trains on the accepted objects' three-class target
    from napari_diffseg.core.objects.targets import instances_to_classes
    from napari_diffseg.core.project.rounds import project_training_data

    data = project_training_data(project)
    index = data.names.index("img_3")
    np.testing.assert_array_equal(data.labels[index], instances_to_classes(corrected, 2))


def test_project_store_keeps_3d_instance_ids(tmp_path):
    from napari_diffseg.core.objects.files import objects_card
    from napari_diffseg.core.project.store import Project

    project = Project.create(tmp_path / "proj3d", config={"num_classes": 3, "objects": objects_card()})
    volume = np.random.default_rng(0).integers(0, 255, (10, 24, 24)).astype(np.uint8)
    record = project.add_image(volume, name="stack")
    instances = np.zeros((10, 24, 24), np.uint32)
    instances[2:6, 3:9, 3:9] = 300
    instances[2:6, 3:9, 9:15] = 70_000  # ids beyond uint16 stay
    project.save_label(record.name, instances)
    np.testing.assert_array_equal(project.label(record.name), instances)
    assert project.label(record.name).dtype == np.uint32
    semantic = (instances > 0).astype(np.uint8)  # one value: split by connected components (touching: one)
    project.save_label(record.name, semantic)
    assert int(project.label(record.name).max()) == 1


def test_eval_objects_prints_and_writes_the_object_scores(objects_data, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    _, instances = _touching_discs(0)
    merged = (instances > 0).astype(np.uint16)  # the two touching discs as one object, the third one right
    merged[instances == 3] = 2
    tifffile.imwrite(pred / "img_0.tif", merged)
    tifffile.imwrite(pred / "img_1.tif", tifffile.imread(objects_data / "labels" / "img_1.tif"))
    table = tmp_path / "scores.csv"
    code, out, err = run_cli(["eval", pred, objects_data / "labels", "--objects", "--csv", table])
    assert code == 0, err
    assert "AP@0.5" in out and "pooled" in out
    with table.open() as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert float(rows["img_1"]["ap50"]) == 1.0 and int(rows["img_1"]["count_error"]) == 0
    # img_0: the merged pair still matches disc 1 (drawn first, the larger part of the pair: IoU > 0.5), disc 2 is
    # missed: TP 2, FP 0, FN 1
    assert (instances == 1).sum() / (merged == 1).sum() > 0.5
    assert float(rows["img_0"]["ap50"]) == pytest.approx(2 / 3) and int(rows["img_0"]["count_error"]) == -1
    assert float(rows["pooled"]["ap50"]) == pytest.approx(5 / 6)  # TP 2 + 3, FN 1


def test_info_and_export_say_objects_mode(objects_model, tmp_path, monkeypatch):
    code, out, err = run_cli(["info", objects_model["model"]])
    assert code == 0, err
    assert "objects:      predicts instance masks" in out and "boundary of 2 px" in out
    from napari_diffseg.core.prediction import bioimageio_export

    monkeypatch.setattr(bioimageio_export, "export_bioimageio", lambda *a, **k: tmp_path / "m.zip")
    code, out, err = run_cli(["export", objects_model["model"], "--out", tmp_path / "m.zip"])
    assert code == 0, err
    assert "objects-mode model" in err and "not instance ids" in err


def test_3d_volumes_train_and_predict_objects(tmp_path):
    """Volumes of touching balls: train --objects, predict writes a 3D instance mask (the decoding of the model's
    probabilities), whatever the plan trains the volumes as (slices on a CPU)."""
    zz, yy, xx = np.indices((16, 32, 32))
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        instances = np.zeros((16, 32, 32), np.uint16)
        for object_id, (cz, cy, cx) in enumerate([(8, 10, 10), (8, 10, 19), (8, 22, 22)], start=1):
            instances[((zz - cz) ** 2 + (yy - cy - index) ** 2 + (xx - cx) ** 2 <= 25) & (instances == 0)] = object_id
        image = (40 + 150 * (instances > 0) + rng.normal(0, 8, instances.shape)).clip(0, 255).astype(np.uint8)
        tifffile.imwrite(tmp_path / "images" / f"vol_{index}.tif", image)
        if index == 0:
            tifffile.imwrite(tmp_path / "labels" / f"vol_{index}.tif", instances)
    model = tmp_path / "model"
    code, out, err = run_cli(["train", tmp_path / "images", "--labels", tmp_path / "labels", "--out", model,
                              "--objects", "--steps", "4", "--width", "8", "--batch-size", "1"])
    assert code == 0, err
    assert json.loads((model / "model_card.json").read_text())["objects"]["mode"] == "objects"
    code, out, err = run_cli(["predict", model, tmp_path / "images" / "vol_2.tif", "--out", tmp_path / "pred",
                              "--backend", "torch", "--no-bf16"])
    assert code == 0, err
    written = tifffile.imread(tmp_path / "pred" / "vol_2.tif")
    assert written.dtype == np.uint16 and written.shape == (16, 32, 32)
    from napari_diffseg.core.objects.decode import probabilities_to_instances
    from napari_diffseg.core.prediction.model import SegmentationModel

    prediction = SegmentationModel.load(model).predict(tifffile.imread(tmp_path / "images" / "vol_2.tif"))
    np.testing.assert_array_equal(written, probabilities_to_instances(prediction.probabilities))


def test_3d_project_keeps_ids_from_create_to_export(tmp_path):
    """The round trip of #28 on volumes: instance labels in, a trained round, a corrected pseudo-label accepted with
    a new id, export: the ids come out as they went in."""
    from napari_diffseg.core.project.store import Project

    zz, yy, xx = np.indices((16, 32, 32))
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    truth = None
    for index in range(3):
        instances = np.zeros((16, 32, 32), np.uint16)
        for object_id, (cz, cy, cx) in zip((4, 9, 300), [(8, 10, 10), (8, 10, 19), (8, 22, 22)]):
            instances[((zz - cz) ** 2 + (yy - cy - index) ** 2 + (xx - cx) ** 2 <= 25) & (instances == 0)] = object_id
        image = (40 + 150 * (instances > 0)).astype(np.uint8)
        tifffile.imwrite(tmp_path / "images" / f"vol_{index}.tif", image)
        if index == 0:
            truth = instances
            tifffile.imwrite(tmp_path / "labels" / f"vol_{index}.tif", instances)
    folder = tmp_path / "proj"
    code, out, err = run_cli(["project", "create", folder, "--images", tmp_path / "images", "--labels",
                              tmp_path / "labels", "--objects"])
    assert code == 0, err
    code, out, err = run_cli(["project", "train", folder, "--steps", "2", "--width", "8", "--batch-size", "1"])
    assert code == 0, err
    project = Project.open(folder)
    pseudo, _ = project.pseudo("vol_2")
    assert pseudo.shape == (16, 32, 32) and pseudo.dtype == np.uint16
    corrected = pseudo.astype(np.uint32)
    corrected[0:2, 0:3, 0:3] = 70_000  # beyond uint16
    project.accept("vol_2", corrected)
    code, out, err = run_cli(["project", "export", folder, "--out", tmp_path / "exported"])
    assert code == 0, err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "exported" / "vol_0.tif"), truth)  # ids 4, 9, 300
    exported = tifffile.imread(tmp_path / "exported" / "vol_2.tif")
    assert exported.dtype == np.uint32
    np.testing.assert_array_equal(exported, corrected)
