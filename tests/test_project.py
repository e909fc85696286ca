"""Tests for the on-disk project store (napari_diffseg.core.project.store)."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_diffseg.core.data import io as dio
from napari_diffseg.core.project import store as project_module
from napari_diffseg.core.errors import DiffsegError, InputError
from napari_diffseg.core.project.store import ImageStatus, Project, sanitise_name

REPO = Path(__file__).resolve().parents[1]


def _image(seed: int = 0, shape=(16, 20), dtype=np.uint16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1000, size=shape).astype(dtype)


def _mask(seed: int = 0, shape=(16, 20)) -> np.ndarray:
    return (np.random.default_rng(seed + 100).random(shape) > 0.5).astype(np.uint8)


@pytest.fixture
def project(tmp_path) -> Project:
    return Project.create(tmp_path / "proj", config={"num_classes": 2, "patch": 64})


def _project_with_pseudo(project: Project, n: int = 3) -> list[str]:
    names = [project.add_image(_image(i), name=f"img{i}").name for i in range(n)]
    for i, name in enumerate(names):
        unc = np.full((16, 20), 0.1 * (i + 1), dtype=np.float32)
        project.save_pseudo(name, _mask(i), unc, round_number=1, model_id="m1", mean_uncertainty=0.1 * (i + 1))
    return names


# ---------------------------------------------------------------------------------------------- create / open


def test_create_open_roundtrip(tmp_path):
    folder = tmp_path / "p"
    created = Project.create(folder, config={"num_classes": 2, "model": {"width": 16}, "out": tmp_path})
    for sub in ("images", "labels", "pseudo", "checkpoints"):
        assert (folder / sub).is_dir()
    assert (folder / "project.sqlite").is_file()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], "no temp files left behind"
    rec = created.add_image(_image(), name="a")

    reopened = Project.open(folder)
    assert reopened.config == {"num_classes": 2, "model": {"width": 16}, "out": str(tmp_path)}
    assert reopened.current_round == 1
    assert [r.name for r in reopened.records()] == ["a"]
    assert reopened.record("a") == rec
    np.testing.assert_array_equal(reopened.image("a"), _image())

    assert reopened.next_round() == 2
    new_config = reopened.update_config({"patch": 32, "num_classes": 2})
    assert new_config["patch"] == 32 and new_config["model"] == {"width": 16}
    again = Project.open(folder)
    assert again.current_round == 2
    assert again.config["patch"] == 32
    assert again.checkpoints_dir(2) == again.folder / "checkpoints" / "round_2"
    assert again.checkpoints_dir(2).is_dir()


def test_folder_names_with_uri_characters(tmp_path):
    folder = tmp_path / "my data #1 ?50% (copy)"
    Project.create(folder).add_image(_image(), name="a")
    assert Project.open(folder).names() == ["a"]


def test_create_refuses_existing_project_and_non_empty_folder(tmp_path):
    Project.create(tmp_path / "p")
    with pytest.raises(InputError, match="already a napari-diffseg project"):
        Project.create(tmp_path / "p")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        Project.create(tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        Project.create(tmp_path / "afile")


def test_unserialisable_config_is_input_error(tmp_path, project):
    with pytest.raises(InputError, match="config"):
        Project.create(tmp_path / "q", config={"f": object()})
    with pytest.raises(InputError, match="config"):
        project.update_config({"f": {1, 2}})
    assert project.config == {"num_classes": 2, "patch": 64}


def test_open_missing_and_non_project_folders(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        Project.open(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="not a napari-diffseg project"):
        Project.open(tmp_path / "plain")


def test_open_corrupt_database(tmp_path, project):
    project.add_image(_image(), name="a")
    db = project.folder / "project.sqlite"
    db.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(InputError, match="corrupt"):
        Project.open(project.folder)


def test_open_truncated_database(tmp_path, project):
    for i in range(5):
        project.add_image(_image(i), name=f"a{i}")
    project.log_losses(1, "stage1", 0, {f"l{i}": float(i) for i in range(200)})
    db = project.folder / "project.sqlite"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2] + b"\xff" * 4096)
    with pytest.raises(InputError, match="corrupt"):
        Project.open(project.folder)


def test_open_foreign_sqlite_file(tmp_path):
    (tmp_path / "other").mkdir()
    con = sqlite3.connect(tmp_path / "other" / "project.sqlite")
    con.execute("CREATE TABLE things (x INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(InputError, match="not a napari-diffseg project database"):
        Project.open(tmp_path / "other")


def test_open_newer_schema_version(project):
    con = sqlite3.connect(project.db_path)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(project_module.SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    with pytest.raises(InputError, match="newer napari-diffseg"):
        Project.open(project.folder)


# ---------------------------------------------------------------------------------------------- images


def test_add_image_from_path_and_array(tmp_path, project):
    src = tmp_path / "Cell Image (1).ome.tif"
    tifffile.imwrite(src, _image(3))
    rec = project.add_image(src)
    assert rec.name == "Cell_Image_1"
    assert rec.status is ImageStatus.UNLABELLED
    assert rec.image_path == project.folder / "images" / "Cell_Image_1.tif"
    assert rec.round == 1 and rec.model_id is None and rec.uncertainty is None
    assert rec.updated_by and datetime.fromisoformat(rec.updated_at).utcoffset().total_seconds() == 0
    stored = project.image(rec.name)
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(stored, _image(3))

    src.unlink()  # pixels were copied: the project does not depend on the source file
    np.testing.assert_array_equal(project.image(rec.name), _image(3))

    arr_rec = project.add_image(_image(4).astype(np.float32))
    assert arr_rec.name == "image"
    assert project.image("image").dtype == np.float32
    assert project.label("image") is None
    assert project.pseudo("image") is None


def test_add_rgb_and_layout_must_match(tmp_path):
    proj = Project.create(tmp_path / "rgb")
    rgb = np.random.default_rng(0).integers(0, 255, size=(16, 16, 3), dtype=np.uint8)
    proj.add_image(rgb, name="colour")
    np.testing.assert_array_equal(proj.image("colour"), rgb)
    with pytest.raises(InputError, match="channel"):
        proj.add_image(_image(), name="grey")
    assert proj.names() == ["colour"]
    assert not (proj.images_dir / "grey.tif").exists()


def test_add_bad_images(tmp_path, project):
    bad = _image().astype(np.float32)
    bad[2, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        project.add_image(bad, name="nan")
    with pytest.raises(InputError):
        project.add_image(np.zeros(50), name="line")
    with pytest.raises(InputError, match="not found"):
        project.add_image(tmp_path / "missing.tif")
    assert project.records() == []
    assert list(project.images_dir.iterdir()) == []


def test_duplicate_names_get_suffixes(tmp_path, project):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 40), dtype=np.uint8) for _ in range(5)]
    names = []
    for image in images[:3]:
        tifffile.imwrite(tmp_path / "a.tif", image)
        names.append(project.add_image(tmp_path / "a.tif").name)
    assert names == ["a", "a_2", "a_3"]
    assert project.add_image(images[3], name="A").name == "A_4"  # case-insensitive: one file system may hold both
    assert project.add_image(images[4], name="a").name == "a_5"
    assert len({p.name.lower() for p in project.images_dir.iterdir()}) == 5


def test_the_same_image_is_not_added_twice(tmp_path, project):
    src = tmp_path / "a.tif"
    tifffile.imwrite(src, _image())
    project.add_image(src)
    with pytest.raises(InputError, match="already in the project as 'a' .the same pixels."):
        project.add_image(_image(), name="copy")
    assert project.names() == ["a"] and len(list(project.images_dir.iterdir())) == 1
    project.add_image(_image() + 1, name="other")  # other pixels are welcome
    assert Project.open(project.folder).names() == ["a", "other"]


@pytest.mark.parametrize(("raw", "expected"), [
    ("plain", "plain"),
    ("my cell (1)", "my_cell_1"),
    ("../../etc/passwd", "etc_passwd"),
    ("...", "image"),
    ("", "image"),
    ("CON", "CON_img"),
    ("x_uncertainty", "x_uncertainty_img"),
    ("a" * 300, "a" * 100),
])
def test_sanitise_name(raw, expected):
    assert sanitise_name(raw) == expected


def test_unknown_name_is_input_error(project):
    with pytest.raises(InputError, match="no image named"):
        project.record("ghost")
    with pytest.raises(InputError, match="no image named"):
        project.reject("ghost")
    with pytest.raises(InputError, match="no image named"):
        project.save_pseudo("ghost", _mask(), np.zeros((16, 20), np.float32), round_number=1, model_id="m",
                            mean_uncertainty=0.0)
    assert not (project.folder / "pseudo" / "round_1" / "ghost.tif").exists()


# ---------------------------------------------------------------------------------------------- labels


def test_save_label(project):
    project.add_image(_image(), name="a")
    instances = np.zeros((16, 20), np.uint16)
    instances[2:6, 2:6] = 7
    instances[9:12, 10:15] = 300
    project.save_label("a", instances)
    rec = project.record("a")
    assert rec.status is ImageStatus.LABELLED
    label = project.label("a")
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, (instances > 0).astype(np.uint8))
    assert project.labelled_names() == ["a"]


def test_save_label_shape_mismatch(project):
    project.add_image(_image(), name="a")
    with pytest.raises(InputError, match="shape mismatch"):
        project.save_label("a", np.zeros((20, 16), np.uint8))
    assert project.record("a").status is ImageStatus.UNLABELLED
    assert not (project.labels_dir / "a.tif").exists()
    with pytest.raises(InputError, match="shape mismatch"):
        project.accept("a", np.zeros((16, 21), np.uint8))
    assert project.record("a").status is ImageStatus.UNLABELLED


def test_save_label_rejects_values_outside_classes(tmp_path):
    proj = Project.create(tmp_path / "mc", config={"num_classes": 3})
    proj.add_image(_image(), name="a")
    ok = np.zeros((16, 20), np.uint8)
    ok[0:4, 0:4] = 2
    proj.save_label("a", ok)
    np.testing.assert_array_equal(proj.label("a"), ok)
    bad = ok.copy()
    bad[5, 5] = 3
    with pytest.raises(InputError, match="outside the 3 classes"):
        proj.save_label("a", bad)
    np.testing.assert_array_equal(proj.label("a"), ok)


# ---------------------------------------------------------------------------------------------- pseudo-labels


def test_pseudo_save_and_load(project):
    names = _project_with_pseudo(project)
    rec = project.record("img1")
    assert rec.status is ImageStatus.PSEUDO
    assert rec.round == 1 and rec.model_id == "m1"
    assert rec.uncertainty == pytest.approx(0.2)
    mask, unc = project.pseudo("img1")
    np.testing.assert_array_equal(mask, _mask(1))
    assert unc.dtype == np.float32
    np.testing.assert_allclose(unc, 0.2)
    assert (project.folder / "pseudo" / "round_1" / "img1.tif").is_file()
    assert (project.folder / "pseudo" / "round_1" / "img1_uncertainty.tif").is_file()

    # a later round: pseudo() returns the latest, older rounds stay available
    project.next_round()
    project.save_pseudo("img1", 1 - _mask(1), np.zeros((16, 20), np.float32), round_number=2, model_id="m2",
                        mean_uncertainty=0.0)
    assert project.pseudo_rounds("img1") == [1, 2]
    np.testing.assert_array_equal(project.pseudo("img1")[0], 1 - _mask(1))
    np.testing.assert_array_equal(project.pseudo("img1", round_number=1)[0], _mask(1))
    assert project.pseudo("img1", round_number=5) is None
    assert project.record("img1").model_id == "m2" and project.record("img1").round == 2
    assert project.unlabelled_names() == names


def test_pseudo_shape_checks(project):
    project.add_image(_image(), name="a")
    with pytest.raises(InputError, match="uncertainty map shape"):
        project.save_pseudo("a", _mask(), np.zeros((16, 19), np.float32), round_number=1, model_id="m",
                            mean_uncertainty=0.0)
    assert project.record("a").status is ImageStatus.UNLABELLED


def test_pseudo_never_overwrites_ground_truth_status(project):
    names = _project_with_pseudo(project)
    project.accept("img0", _mask(50))
    project.save_label("img1", _mask(51))
    for name in ("img0", "img1"):
        project.save_pseudo(name, _mask(), np.zeros((16, 20), np.float32), round_number=2, model_id="m2",
                            mean_uncertainty=0.0)
    assert project.record("img0").status is ImageStatus.ACCEPTED
    assert project.record("img1").status is ImageStatus.LABELLED
    np.testing.assert_array_equal(project.label("img0"), _mask(50))
    assert project.labelled_names() == ["img0", "img1"]
    assert project.unlabelled_names() == [names[2]]


def test_rejected_image_gets_new_pseudo_only_from_a_later_round(project):
    _project_with_pseudo(project)
    project.reject("img2")
    assert project.record("img2").status is ImageStatus.REJECTED
    project.save_pseudo("img2", _mask(), np.zeros((16, 20), np.float32), round_number=1, model_id="m1",
                        mean_uncertainty=0.0)
    assert project.record("img2").status is ImageStatus.REJECTED
    project.save_pseudo("img2", _mask(), np.zeros((16, 20), np.float32), round_number=2, model_id="m2",
                        mean_uncertainty=0.0)
    assert project.record("img2").status is ImageStatus.PSEUDO


# ---------------------------------------------------------------------------------------------- review


def test_accept_reject_and_selections(project):
    _project_with_pseudo(project, n=4)
    project.add_image(_image(9), name="fresh")
    corrected = _mask(77)
    project.accept("img0", corrected)
    project.reject("img1")
    project.save_label("fresh", _mask(9))

    assert project.record("img0").status is ImageStatus.ACCEPTED
    assert project.record("img0").model_id == "m1"  # provenance of the corrected pseudo-label is kept
    np.testing.assert_array_equal(project.label("img0"), corrected)
    assert project.label("img1") is None
    np.testing.assert_array_equal(project.pseudo("img0")[0], _mask(0))  # revert target is still there
    assert project.labelled_names() == ["img0", "fresh"]
    assert project.unlabelled_names() == ["img2", "img3"]
    assert project.training_unlabelled_names() == ["img1", "img2", "img3"]
    counts = project.status_counts()
    assert counts == {ImageStatus.UNLABELLED: 0, ImageStatus.LABELLED: 1, ImageStatus.PSEUDO: 2,
                      ImageStatus.ACCEPTED: 1, ImageStatus.REJECTED: 1}
    assert counts["pseudo"] == 2  # str enum: plain strings work as keys too

    assert project.record("img2").round == 1
    project.next_round()
    project.accept("img2", _mask(2))
    assert project.record("img2").round == 2  # rows are stamped with the round in which their status was set


def test_status_counts_empty_and_growing(project):
    assert set(project.status_counts().values()) == {0}
    project.add_image(_image(), name="a")
    project.add_image(_image(1), name="b")
    assert project.status_counts()[ImageStatus.UNLABELLED] == 2
    project.save_label("a", _mask())
    assert project.status_counts()[ImageStatus.UNLABELLED] == 1
    assert project.status_counts()[ImageStatus.LABELLED] == 1


# ---------------------------------------------------------------------------------------------- durability


def _child(code: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_accept_survives_hard_exit_right_after(project):
    _project_with_pseudo(project, n=2)
    corrected = _mask(42)
    np.save(project.folder.parent / "corrected.npy", corrected)
    child = _child(f"""
        import os, numpy as np
        from napari_diffseg.core.project.store import Project
        p = Project.open({str(project.folder)!r})
        p.accept("img1", np.load({str(project.folder.parent / 'corrected.npy')!r}))
        print("accepted", flush=True)
        os._exit(1)  # no clean-up, no atexit, no flush of anything else
    """)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 1, err
    assert "accepted" in out
    reopened = Project.open(project.folder)
    assert reopened.record("img1").status is ImageStatus.ACCEPTED
    np.testing.assert_array_equal(reopened.label("img1"), corrected)
    assert reopened.record("img0").status is ImageStatus.PSEUDO


def test_sigkill_during_accepts_loses_no_accepted_work(project):
    names = [project.add_image(_image(i, shape=(64, 64)), name=f"img{i}").name for i in range(10)]
    # the child keeps accepting (image i % 10 gets a mask with i + 1 foreground pixels) and reports each accept
    # after it returned; it is killed mid-stream, possibly in the middle of an accept
    child = _child(f"""
        import numpy as np
        from napari_diffseg.core.project.store import Project
        p = Project.open({str(project.folder)!r})
        names = {names!r}
        for i in range(4000):
            mask = np.zeros(64 * 64, np.uint8)
            mask[: i + 1] = 1
            p.accept(names[i % len(names)], mask.reshape(64, 64))
            print(i, flush=True)
    """)
    reported = []
    for line in child.stdout:
        reported.append(int(line))
        if len(reported) == 25:
            os.kill(child.pid, signal.SIGKILL)
            break
    rest, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    reported += [int(line) for line in rest.split()]  # printed between our read and the kill
    assert reported[:25] == list(range(25)) and reported == list(range(len(reported)))
    reopened = Project.open(project.folder)
    assert reopened.labelled_names() == names
    for j, name in enumerate(names):
        assert reopened.record(name).status is ImageStatus.ACCEPTED
        iteration = int(reopened.label(name).sum()) - 1
        last_reported = max(i for i in reported if i % 10 == j)
        # the last reported accept is there, or the one in flight when the kill came: never an older one
        assert iteration % 10 == j
        assert last_reported <= iteration <= reported[-1] + 1


def test_failed_pixel_write_leaves_row_and_old_label_untouched(project, monkeypatch):
    _project_with_pseudo(project, n=1)
    first = _mask(1)
    project.accept("img0", first)

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dio.os, "replace", broken_replace)
    with pytest.raises(DiffsegError, match="No space left"):
        project.accept("img0", _mask(2))
    with pytest.raises(DiffsegError, match="No space left"):
        project.save_pseudo("img0", _mask(3), np.zeros((16, 20), np.float32), round_number=2, model_id="m2",
                            mean_uncertainty=0.0)
    monkeypatch.undo()
    reopened = Project.open(project.folder)
    assert reopened.record("img0").status is ImageStatus.ACCEPTED
    np.testing.assert_array_equal(reopened.label("img0"), first)
    assert reopened.pseudo_rounds("img0") == [1]
    assert not [p for p in reopened.folder.rglob(".*") if p.is_file()], "no temp files left behind"


def test_failed_row_update_rolls_the_accept_back(project, monkeypatch):
    _project_with_pseudo(project, n=1)
    # another process holds the database's write lock, so the manifest update fails after the pixel file was written
    monkeypatch.setattr(project_module, "_BUSY_TIMEOUT_S", 0.2)
    blocker = sqlite3.connect(project.db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # readers may go on, writers wait
    try:
        with pytest.raises(DiffsegError, match="database is locked"):
            project.accept("img0", _mask(5))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert not (project.labels_dir / "img0.tif").exists()  # the accept was rolled back as a whole ...
    reopened = Project.open(project.folder)
    assert reopened.record("img0").status is ImageStatus.PSEUDO  # ... and the old row is still valid
    assert reopened.label("img0") is None
    reopened.accept("img0", _mask(5))
    np.testing.assert_array_equal(reopened.label("img0"), _mask(5))


def test_concurrent_pseudo_writer_and_gui_accepts(project):
    names = [project.add_image(_image(i), name=f"img{i}").name for i in range(12)]
    errors = []

    def worker():
        try:
            for name in names:
                project.save_pseudo(name, _mask(), np.zeros((16, 20), np.float32), round_number=1, model_id="m",
                                    mean_uncertainty=0.5)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    accepted = names[::3]
    for name in accepted:
        project.accept(name, _mask(7))
    thread.join(timeout=60)
    assert not errors
    assert project.labelled_names() == accepted
    assert project.unlabelled_names() == [n for n in names if n not in accepted]
    assert all(project.record(n).status is ImageStatus.PSEUDO for n in names if n not in accepted)


# ---------------------------------------------------------------------------------------------- losses


def test_log_losses_and_history(project):
    project.log_losses(1, "stage1", 0, {"diffusion": 0.9, "dice": 0.5})
    project.log_losses(1, "stage2", 1, {"diffusion": 0.8, "bad": float("nan")})
    project.log_losses(2, "stage2", 0, {"diffusion": 0.4})
    project.log_losses(2, "stage2", 1, {})
    history = project.loss_history()
    assert [(e.round, e.stage, e.step, e.name) for e in history] == [
        (1, "stage1", 0, "diffusion"), (1, "stage1", 0, "dice"), (1, "stage2", 1, "diffusion"),
        (1, "stage2", 1, "bad"), (2, "stage2", 0, "diffusion")]
    assert history[0].value == pytest.approx(0.9)
    assert math.isnan(history[3].value)
    assert history[0].time <= history[-1].time
    assert [e.value for e in project.loss_history(round_number=2)] == [pytest.approx(0.4)]
    assert [e.value for e in Project.open(project.folder).loss_history(round_number=1)][:2] == [
        pytest.approx(0.9), pytest.approx(0.5)]


def test_undo_review_puts_the_image_back_in_the_queue(project):
    names = _project_with_pseudo(project)
    corrected = 1 - _mask(0)
    project.accept(names[0], corrected)
    project.reject(names[1])
    np.testing.assert_array_equal(project.undo_review(names[0]), corrected)  # the correction comes back
    assert project.record(names[0]).status == ImageStatus.PSEUDO and project.label(names[0]) is None
    assert not (project.labels_dir / f"{names[0]}.tif").exists()
    assert project.undo_review(names[1]) is None and project.record(names[1]).status == ImageStatus.PSEUDO
    with pytest.raises(InputError, match="only an accepted or rejected"):
        project.undo_review(names[2])
    plain = project.add_image(_image(9), name="plain").name
    project.save_label(plain, _mask())
    with pytest.raises(InputError, match="only an accepted or rejected"):
        project.undo_review(plain)


# ---------------------------------------------------------------------------------------------- atomic accepts
@pytest.mark.parametrize("fault", ["manifest", "mask file"])
def test_a_failed_accept_keeps_the_earlier_ground_truth(project, monkeypatch, fault):
    """The manifest write failing (database locked, disk full) or the mask write failing leaves the painted
    label and the status exactly as they were: the file and the manifest never disagree."""
    import napari_diffseg.core.project.masks as project_module  # where masks are written

    names = _project_with_pseudo(project)
    painted = _mask(7)
    project.save_label(names[0], painted)
    if fault == "manifest":
        def locked(*_args, **_kwargs):
            raise InputError("project database is locked by another program; try again")
        monkeypatch.setattr(project, "_set_status", locked)
    else:
        def full_disk(path, _mask):
            raise InputError(f"cannot write {path}: No space left on device")
        monkeypatch.setattr(project_module, "write_mask", full_disk)
    with pytest.raises(InputError):
        project.accept(names[0], 1 - painted)
    monkeypatch.undo()
    np.testing.assert_array_equal(project.label(names[0]), painted)
    assert project.record(names[0]).status == ImageStatus.LABELLED
    assert sorted(p.name for p in project.labels_dir.iterdir()) == [f"{names[0]}.tif"]  # nothing left behind
    project.accept(names[0], 1 - painted)  # and the next try works
    np.testing.assert_array_equal(project.label(names[0]), 1 - painted)


def test_opening_a_project_finishes_an_interrupted_label_write(project):
    names = _project_with_pseudo(project)
    project.save_label(names[0], _mask(3))
    label = project.labels_dir / f"{names[0]}.tif"
    # killed after the earlier mask was set aside and before the new one took its place
    os.replace(label, project.labels_dir / f".{names[0]}.tif.previous")
    (project.labels_dir / f".{names[0]}.tif.new").write_bytes(b"half")
    (project.labels_dir / ".other.tif.1234.tmp").write_bytes(b"tmp")
    reopened = Project.open(project.folder)
    np.testing.assert_array_equal(reopened.label(names[0]), _mask(3))
    assert sorted(p.name for p in reopened.labels_dir.iterdir()) == [f"{names[0]}.tif"]


@pytest.mark.parametrize(("sql", "message"), [
    ("UPDATE images SET status = 'weird'", "unreadable row for image 'img0' .status 'weird'"),
    ("UPDATE images SET round = 'abc'", "unreadable row for image 'img0' .status 'pseudo', round 'abc'"),
    ("UPDATE meta SET value = '{oops' WHERE key = 'config'", "unreadable configuration"),
    ("INSERT OR REPLACE INTO meta(key, value) VALUES ('current_round', 'abc')", "unreadable round number 'abc'"),
])
def test_a_manifest_edited_by_hand_is_a_clear_error(project, sql, message):
    _project_with_pseudo(project, n=1)
    with sqlite3.connect(project.db_path) as con:
        con.execute(sql)
    reopened = Project(project.folder)
    with pytest.raises(InputError, match=message):
        reopened.records(), reopened.config, reopened.current_round
