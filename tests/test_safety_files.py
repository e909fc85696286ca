"""No command destroys a file of the user, and names and data are the user's (issue 25, classes 1, 4, 5 and 9):
refusals before anything is written, --overwrite as the one way to replace, names kept through a project and its
export, manifest names and model cards never trusted, the OpenVINO cache verified, PNGs predicted block by block."""

from __future__ import annotations

import contextlib
import hashlib
import io as _io
import json
from pathlib import Path
import shutil
import sqlite3

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_diffseg import cli
from napari_diffseg.core.prediction import large, openvino_backend
from napari_diffseg.core.errors import InputError
from napari_diffseg.core.project.store import Project
from napari_diffseg.core.data.synthetic import make_blobs_dataset, write_dataset

FAST = ["--steps", "3", "--width", "8", "--patch-size", "32", "32", "--threads", "1"]


def run_cli(argv: list) -> tuple[int, str]:
    buffer = _io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        code = cli.main([str(a) for a in argv])
    return code, buffer.getvalue()


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def assert_refused(code: int, text: str, *fragments: str) -> None:
    errors = [line for line in text.splitlines() if line.startswith("diffseg: error:")]
    assert code == 2 and len(errors) == 1, text
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("safety")
    images, labels = write_dataset(root / "data", make_blobs_dataset(4, shape=(48, 48), seed=3), n_labelled=2)
    model = root / "model"
    code, text = run_cli(["-q", "train", images, "--labels", labels, "--out", model, *FAST])
    assert code == 0, text
    return {"images": images, "labels": labels, "masks": root / "data" / "masks", "model": model}


@pytest.fixture
def user_data(trained, tmp_path) -> dict:
    """A private copy of the images and of ground-truth masks the user saved with another program (no diffseg
    tag), so that a test may try to destroy them."""
    images = Path(shutil.copytree(trained["images"], tmp_path / "images"))
    truth = tmp_path / "truth"
    truth.mkdir()
    for path in sorted(Path(trained["masks"]).iterdir()):
        tifffile.imwrite(truth / path.name, tifffile.imread(path))
    return {"images": images, "truth": truth, "model": trained["model"], "root": tmp_path}


# ------------------------------------------------------------------------------------------- 1: no overwrite
def test_predict_onto_ground_truth_is_refused_and_overwrite_allows_it(user_data):
    before = tree_hashes(user_data["truth"])
    code, text = run_cli(["-q", "predict", user_data["model"], user_data["images"], "--out", user_data["truth"]])
    assert_refused(code, text, "img_000.tif", "--overwrite")
    assert tree_hashes(user_data["truth"]) == before
    code, text = run_cli(["-q", "predict", user_data["model"], user_data["images"], "--out", user_data["truth"],
                          "--overwrite"])
    assert code == 0, text
    assert tree_hashes(user_data["truth"]) != before


def test_an_unrelated_file_with_the_stem_of_a_mask_is_kept(user_data):
    """predict imgs/a.png --out imgs replaced an unrelated imgs/a.tif."""
    folder = user_data["root"] / "mixed"
    folder.mkdir()
    iio.imwrite(folder / "a.png", tifffile.imread(user_data["images"] / "img_000.tif"))
    (folder / "a.tif").write_bytes(b"the user's own file")
    code, text = run_cli(["-q", "predict", user_data["model"], folder / "a.png", "--out", folder])
    assert_refused(code, text, "a.tif")
    assert (folder / "a.tif").read_bytes() == b"the user's own file"


def test_an_other_extension_or_case_collides_too(user_data):
    out = user_data["root"] / "out"
    out.mkdir()
    (out / "IMG_001.PNG").write_bytes(b"x")
    code, text = run_cli(["-q", "predict", user_data["model"], user_data["images"], "--out", out])
    assert_refused(code, text, "IMG_001.PNG")
    assert sorted(p.name for p in out.iterdir()) == ["IMG_001.PNG"]  # nothing written, not even the others


def test_a_second_predict_into_the_same_folder_says_it_is_an_earlier_run(user_data):
    out = user_data["root"] / "masks"
    assert run_cli(["-q", "predict", user_data["model"], user_data["images"], "--out", out])[0] == 0
    code, text = run_cli(["-q", "predict", user_data["model"], user_data["images"], "--out", out])
    assert_refused(code, text, "earlier diffseg run", "--overwrite")


def test_predict_into_the_parent_of_the_input_folder_is_refused(user_data):
    code, text = run_cli(["-q", "predict", user_data["model"], user_data["images"], "--out", user_data["root"]])
    assert_refused(code, text, "folder of the input images")


def test_an_uncertainty_map_never_replaces_an_input(user_data):
    """a.tif and a_uncertainty.tif as inputs: the uncertainty map of a would be the mask of a_uncertainty."""
    shutil.copy(user_data["images"] / "img_000.tif", user_data["images"] / "img_001_uncertainty.tif")
    out = user_data["root"] / "out"
    code, text = run_cli(["-q", "predict", user_data["model"], user_data["images"], "--out", out, "--uncertainty",
                          "--draws", "1", "--overwrite"])
    assert_refused(code, text, "img_001_uncertainty.tif")
    assert not out.exists() or not any(out.iterdir())


def test_export_into_the_source_folder_is_refused_and_originals_stay(user_data):
    project = user_data["root"] / "project"
    assert run_cli(["-q", "project", "create", project, "--images", user_data["images"], "--labels",
                    user_data["truth"]])[0] == 0
    originals = tree_hashes(user_data["images"])
    truth = tree_hashes(user_data["truth"])
    for out in (user_data["images"], user_data["truth"], user_data["root"]):
        code, text = run_cli(["-q", "project", "export", project, "--out", out])
        assert_refused(code, text, "project was created from")
    assert tree_hashes(user_data["images"]) == originals and tree_hashes(user_data["truth"]) == truth
    out = user_data["root"] / "exported"
    assert run_cli(["-q", "project", "export", project, "--out", out])[0] == 0
    code, text = run_cli(["-q", "project", "export", project, "--out", out])
    assert_refused(code, text, "earlier diffseg run")
    assert run_cli(["-q", "project", "export", project, "--out", out, "--overwrite"])[0] == 0


def test_eval_csv_never_replaces_a_mask_and_asks_for_overwrite(user_data, trained):
    truth = tree_hashes(user_data["truth"])
    code, text = run_cli(["eval", trained["masks"], user_data["truth"], "--csv", user_data["truth"] / "img_000.tif",
                          "--overwrite"])
    assert_refused(code, text, "img_000.tif")
    assert tree_hashes(user_data["truth"]) == truth
    table = user_data["root"] / "table.csv"
    table.write_text("mine")
    code, text = run_cli(["eval", trained["masks"], user_data["truth"], "--csv", table])
    assert_refused(code, text, "table.csv", "--overwrite")
    assert table.read_text() == "mine"


def test_train_keeps_files_of_another_tool(user_data, trained):
    out = user_data["root"] / "runs"
    out.mkdir()
    (out / "best.pt").write_bytes(b"weights of another tool")
    (out / "pseudo_labels").mkdir()
    (out / "pseudo_labels" / "note.txt").write_text("mine")
    code, text = run_cli(["-q", "train", user_data["images"], "--labels", user_data["truth"], "--out", out, *FAST])
    assert_refused(code, text, "best.pt", "--overwrite")
    assert (out / "best.pt").read_bytes() == b"weights of another tool"
    assert (out / "pseudo_labels" / "note.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------------- 4: names
def _write_images(folder: Path, names: list[str]) -> Path:
    folder.mkdir()
    for index, name in enumerate(names):
        image, _ = make_blobs_dataset(1, shape=(48, 48), seed=20 + index)[0]
        tifffile.imwrite(folder / name, image)
    return folder


@pytest.mark.parametrize("names", [["a b.tif", "a_b.tif"], ["cell(1).tif", "cell_1.tif"], ["Cell.tif", "cell.png"],
                                   ["e\u0301.tif", "\u00e9.tif"]])  # é decomposed and composed: one name on macOS
def test_two_names_that_would_collide_are_refused(tmp_path, names):
    images = _write_images(tmp_path / "images", names)
    code, text = run_cli(["-q", "project", "create", tmp_path / "project", "--images", images])
    assert_refused(code, text, names[0])
    assert not (tmp_path / "project" / "project.sqlite").exists()


def test_unicode_and_spaced_names_survive_the_project_and_its_export(tmp_path):
    names = ["Zelle α.tif", "細胞 01.tif", "naïve.tif", "plain.tif"]
    images = _write_images(tmp_path / "images", names)
    labels = tmp_path / "labels"
    labels.mkdir()
    for name in names:
        mask = np.zeros((48, 48), np.uint8)
        mask[10:20, 10:20] = 1
        tifffile.imwrite(labels / name, mask)
    project = tmp_path / "project"
    assert run_cli(["-q", "project", "create", project, "--images", images, "--labels", labels])[0] == 0
    assert "naïve" in Project.open(project).names()
    out = tmp_path / "exported"
    code, text = run_cli(["-q", "project", "export", project, "--out", out])
    assert code == 0, text
    assert sorted(p.name for p in out.iterdir()) == sorted(names)


# ------------------------------------------------------------------------------------------- 5: data not trusted
def test_a_manifest_name_edited_to_a_path_never_leaves_the_out_folder(user_data):
    project = user_data["root"] / "project"
    assert run_cli(["-q", "project", "create", project, "--images", user_data["images"], "--labels",
                    user_data["truth"]])[0] == 0
    with sqlite3.connect(project / "project.sqlite") as db:
        db.execute("UPDATE images SET name = '../escaped' WHERE name = 'img_000'")
    out = user_data["root"] / "deep" / "out"
    code, text = run_cli(["-q", "project", "export", project, "--out", out])
    assert_refused(code, text, "../escaped")
    assert not list(user_data["root"].rglob("escaped*"))
    assert not out.exists() or not any(out.iterdir())


def test_an_original_name_edited_to_a_path_is_refused(user_data):
    project = Project.create_from_folders(user_data["root"] / "project", user_data["images"], user_data["truth"])
    with sqlite3.connect(project.db_path) as db:
        db.execute("INSERT INTO meta(key, value) VALUES ('original_name:img_000', '../../escaped')")
    with pytest.raises(InputError, match="a path, not a file name"):
        project.export_masks(user_data["root"] / "out")
    assert not list(user_data["root"].rglob("escaped*"))


def test_a_round_number_edited_out_of_range_is_one_line(user_data):
    """project status loops over the rounds down from the current one: 10**12 would never end."""
    project = Project.create_from_folders(user_data["root"] / "project", user_data["images"], user_data["truth"])
    with sqlite3.connect(project.db_path) as db:
        db.execute("UPDATE meta SET value = '1000000000000' WHERE key = 'current_round'")
    code, text = run_cli(["project", "status", project.folder])
    assert_refused(code, text, "round number")


@pytest.mark.parametrize("card", ["{oops", "[1, 2]", '{"data": [1, 2]}', '{"training": {"elapsed_seconds": "x"}}',
                                  '{"data": "abc"}'])
def test_a_malformed_model_card_is_one_line(trained, tmp_path, card):
    model = Path(shutil.copytree(trained["model"], tmp_path / "model"))
    (model / "model_card.json").write_text(card)
    code, text = run_cli(["info", model])
    assert_refused(code, text, "model_card.json")


def test_a_layer_named_like_a_path_is_exported_under_its_project_name(tmp_path):
    project = Project.create(tmp_path / "project")
    image, _ = make_blobs_dataset(1, shape=(48, 48), seed=5)[0]
    record = project.add_image(image, name="../x")
    mask = np.zeros((48, 48), np.uint8)
    mask[4:20, 4:20] = 1
    project.save_label(record.name, mask)
    project.export_masks(tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [f"{record.name}.tif"]
    assert not (tmp_path / "x.tif").exists()


@pytest.mark.parametrize(("key", "value"), [("base_channels", 10**6), ("depth", 40), ("num_classes", "2")])
def test_a_checkpoint_network_edited_out_of_range_is_refused_before_it_is_built(trained, tmp_path, key, value):
    import torch

    model = Path(shutil.copytree(trained["model"], tmp_path / "model"))
    payload = torch.load(model / "best.pt", weights_only=True)
    payload["network"][key] = value
    torch.save(payload, model / "best.pt")
    code, text = run_cli(["predict", model, trained["images"], "--out", tmp_path / "out"])
    assert_refused(code, text, key)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("settings", ['{"num_classes": "abc"}', '{"num_classes": 1}'])
def test_malformed_project_settings_are_one_line(user_data, settings):
    project = Project.create_from_folders(user_data["root"] / "project", user_data["images"], user_data["truth"])
    with sqlite3.connect(project.db_path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'config'", (settings,))
    code, text = run_cli(["-q", "project", "train", project.folder, *FAST])
    assert_refused(code, text, "num_classes")


needs_openvino = pytest.mark.skipif(not openvino_backend.available(), reason="OpenVINO is not installed")


@needs_openvino
def test_an_unwritable_openvino_cache_is_a_warning(trained, tmp_path, monkeypatch):
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    code, text = run_cli(["predict", trained["model"], trained["images"], "--out", tmp_path / "out", "--backend",
                          "openvino", "--threads", "1"])
    assert code == 0, text
    assert "warning" in text and "could not cache" in text
    assert len(list((tmp_path / "out").glob("*.tif"))) == len(list(Path(trained["images"]).iterdir()))


@needs_openvino
def test_a_tampered_openvino_cache_is_rebuilt(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    argv = ["predict", trained["model"], trained["images"], "--backend", "openvino", "--threads", "1"]
    assert run_cli([*argv, "--out", tmp_path / "first"])[0] == 0
    (weights,) = openvino_backend.cache_dir().glob("*.bin")
    weights.write_bytes(weights.read_bytes()[:-64] + bytes(64))  # changed weights that still load
    code, text = run_cli([*argv, "--out", tmp_path / "second"])
    assert code == 0 and "does not match its recorded hash" in text, text
    assert tree_hashes(tmp_path / "first").keys() == tree_hashes(tmp_path / "second").keys()
    for name in tree_hashes(tmp_path / "first"):
        assert np.array_equal(tifffile.imread(tmp_path / "first" / name), tifffile.imread(tmp_path / "second" / name))
    code, text = run_cli([*argv, "--out", tmp_path / "third"])  # rebuilt: read back without a word
    assert code == 0 and "recorded hash" not in text, text


# ------------------------------------------------------------------------------------------- 9: large PNGs
def test_a_large_png_goes_block_by_block(trained, tmp_path, monkeypatch):
    image = tifffile.imread(Path(trained["images"]) / "img_000.tif")
    big = np.tile(image, (3, 3))
    iio.imwrite(tmp_path / "big.png", big)
    assert large.pixel_count(tmp_path / "big.png") == big.size
    monkeypatch.setattr(large, "LARGE_IMAGE_PIXELS", big.size - 1)
    monkeypatch.setattr(large, "BLOCK_2D", (64, 64))
    code, text = run_cli(["-v", "predict", trained["model"], tmp_path / "big.png", "--out", tmp_path / "out",
                          "--threads", "1", "--backend", "torch"])
    assert code == 0, text
    assert "block by block" in text
    assert tifffile.imread(tmp_path / "out" / "big.tif").shape == big.shape
    assert (tmp_path / "out" / "big.zarr").is_dir()
