"""Tests for ``diffseg project create | train | status | export``: the command line on the project store the napari
panels share (rounds, pseudo-labels, review queue, warm start, export), Ctrl-C + resume of a round, and one-line
errors with exit code 2 for user mistakes.

Everything runs in-process through ``cli.main`` on tiny synthetic data (48 x 48 images, 8-channel nets, 6 steps).
"""

from __future__ import annotations

import csv
import shlex
import shutil

import numpy as np
import pytest
import tifffile

from napari_diffseg.core.data.io import write_mask
from napari_diffseg.core.project.store import ImageStatus, Project
from test_cli import (N_IMAGES, N_LABELLED, SHAPE_2D, assert_one_line_error, dataset,  # noqa: F401 (fixture)
                      interrupt_training_at_step, run_cli)  # the CLI tests' helpers and synthetic dataset

FAST = ["--steps", "6", "--width", "8", "--patch-size", "32", "32"]
NAMES = [f"img_{i:03d}" for i in range(N_IMAGES)]
UNLABELLED = NAMES[N_LABELLED:]


def status_table(out: str) -> dict[str, int]:
    """The 'status / images' rows of ``project status``."""
    counts = {}
    for line in out.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] in {s.value for s in ImageStatus} and words[1].isdigit():
            counts[words[0]] = int(words[1])
    return counts


@pytest.fixture(scope="module")
def rounds(dataset, tmp_path_factory) -> dict:
    """create -> status -> train (round 1) -> status -> train --next-round (round 2, only --steps given) -> status."""
    project = tmp_path_factory.mktemp("projects") / "proj"
    runs = {"project": project}
    runs["create"] = run_cli(["project", "create", project, "--images", dataset / "images",
                              "--labels", dataset / "labels"])
    runs["status0"] = run_cli(["project", "status", project])
    runs["train1"] = run_cli(["project", "train", project, "--seed", "3", *FAST])
    runs["status1"] = run_cli(["project", "status", project])
    runs["train2"] = run_cli(["project", "train", project, "--next-round", "--steps", "6"])
    runs["status2"] = run_cli(["project", "status", project, "--top", "2"])
    return runs


# ------------------------------------------------------------------------------------------------ the cycle
def test_create_imports_images_and_labels(rounds, dataset):
    code, out, err = rounds["create"]
    assert code == 0, err
    assert f"{N_IMAGES} image(s), {N_LABELLED} labelled, {N_IMAGES - N_LABELLED} unlabelled" in out
    project = Project.open(rounds["project"])
    assert project.names() == NAMES
    label = project.label("img_000")
    assert label is not None and label.dtype == np.uint8
    np.testing.assert_array_equal(label, tifffile.imread(dataset / "labels" / "img_000.tif") > 0)

    code, out, err = rounds["status0"]
    assert code == 0, err
    assert status_table(out) == {"unlabelled": 4, "labelled": 2, "pseudo": 0, "accepted": 0, "rejected": 0}
    assert "round:        1" in out and "none yet" in out and "review queue: empty" in out


def test_train_stores_round_model_and_pseudo_labels(rounds):
    code, out, err = rounds["train1"]
    assert code == 0, err
    project_dir = rounds["project"]
    round_1 = project_dir / "checkpoints" / "round_1"
    assert (round_1 / "best.pt").is_file() and (round_1 / "last.pt").is_file()
    assert "round 1: trained 6 steps" in out and str(round_1 / "best.pt") in out
    assert "training from scratch" in out  # nothing earlier to warm-start from
    assert f"pseudo-labels: {len(UNLABELLED)} image(s) stored in {project_dir / 'pseudo' / 'round_1'}" in out
    for name in UNLABELLED:
        assert tifffile.imread(project_dir / "pseudo" / "round_1" / f"{name}.tif").shape == SHAPE_2D
    assert "Traceback" not in err

    code, out, err = rounds["status1"]
    assert code == 0, err
    assert status_table(out) == {"unlabelled": 0, "labelled": 2, "pseudo": 4, "accepted": 0, "rejected": 0}
    assert f"latest model: {round_1}" in out
    assert "review queue: 4 image(s), most uncertain first" in out
    queue_rows = out.split("most uncertain first", 1)[1].strip().splitlines()[1:]
    listed = [row.split()[0] for row in queue_rows]
    assert sorted(listed) == UNLABELLED
    uncertainties = [float(row.split()[1]) for row in queue_rows]
    assert uncertainties == sorted(uncertainties, reverse=True)
    assert all(row.split()[2] == "1" for row in queue_rows)


def test_next_round_warm_starts_with_the_stored_settings(rounds):
    code, out, err = rounds["train2"]
    assert code == 0, err
    project_dir = rounds["project"]
    round_2 = project_dir / "checkpoints" / "round_2"
    assert (round_2 / "best.pt").is_file() and (round_2 / "last.pt").is_file()
    assert "round 2: trained 6 steps" in out and "start:    warm start from round_1" in out
    with (round_2 / "losses.csv").open() as handle:
        stages = {row["stage"] for row in csv.DictReader(handle)}
    assert stages == {"cotrain"}  # a warm start skips the unsupervised pretraining
    # --width and --patch-size were not given: the project's stored settings (round 1's) are kept
    assert "kept from the project's stored settings" in err and "base_channels 8" in err
    card = (round_2 / "model_card.json").read_text()
    assert '"base_channels": 8' in card
    project = Project.open(project_dir)
    assert project.current_round == 2
    assert {project.record(name).round for name in UNLABELLED} == {2}
    assert all((project_dir / "pseudo" / "round_2" / f"{name}.tif").is_file() for name in UNLABELLED)

    code, out, err = rounds["status2"]
    assert code == 0, err
    assert "round:        2" in out and f"latest model: {round_2}" in out
    assert "review queue: 4 image(s), most uncertain first (top 2)" in out
    top = [row.split()[0] for row in out.split("(top 2)", 1)[1].strip().splitlines()[1:]]
    assert top == project.review_queue()[:2]


def test_export_writes_the_best_mask_of_every_image(rounds, tmp_path):
    copy = tmp_path / "proj"
    shutil.copytree(rounds["project"], copy)
    project = Project.open(copy)
    corrected = np.zeros(SHAPE_2D, np.uint8)
    corrected[10:20, 10:30] = 1
    project.accept("img_002", corrected)
    project.reject("img_003")

    out_dir = tmp_path / "masks"
    code, out, err = run_cli(["project", "export", copy, "--out", out_dir])
    assert code == 0, err
    assert f"exported {N_IMAGES - 1} mask(s)" in out
    assert "2 labelled" in out and "1 accepted" in out and "2 pseudo-labelled" in out and "1 rejected" in out
    assert sorted(p.stem for p in out_dir.iterdir()) == [n for n in NAMES if n != "img_003"]
    for path in out_dir.iterdir():
        mask = tifffile.imread(path)
        assert mask.dtype == np.uint8 and mask.shape == SHAPE_2D and set(np.unique(mask)) <= {0, 1}
    np.testing.assert_array_equal(tifffile.imread(out_dir / "img_000.tif"), project.label("img_000"))
    np.testing.assert_array_equal(tifffile.imread(out_dir / "img_002.tif"), corrected)
    latest_pseudo = tifffile.imread(copy / "pseudo" / "round_2" / "img_004.tif")
    np.testing.assert_array_equal(tifffile.imread(out_dir / "img_004.tif"), latest_pseudo)


def test_ctrl_c_saves_the_round_and_resume_finishes_it(dataset, tmp_path, monkeypatch):
    project_dir = tmp_path / "proj"
    code, out, err = run_cli(["project", "create", project_dir, "--images", dataset / "images",
                              "--labels", dataset / "labels"])
    assert code == 0, err
    restore = interrupt_training_at_step(monkeypatch, 3)
    code, out, err = run_cli(["project", "train", project_dir, "--next-round", *FAST])
    assert code == 130
    round_2 = project_dir / "checkpoints" / "round_2"
    assert (round_2 / "last.pt").is_file()
    assert "interrupted at step 3" in err and "Traceback" not in err
    resume = shlex.split(err.split("Resume with:", 1)[1].strip().splitlines()[0])
    assert resume[:3] == ["diffseg", "project", "train"]
    assert "--resume" in resume and "--next-round" not in resume  # the round already moved on: resume it
    restore()

    code, out, err = run_cli(resume[1:])
    assert code == 0, err
    assert "round 2: trained 6 steps" in out  # 3 before the interrupt + 3 after resuming
    assert Project.open(project_dir).current_round == 2


# ------------------------------------------------------------------------------------------------ user mistakes
def case_not_a_project(dataset, tmp):
    return ["project", "status", dataset], "not a napari-diffseg project"


def case_project_folder_missing(dataset, tmp):
    return ["project", "train", tmp / "nowhere", *FAST], "does not exist"


def case_create_in_non_empty_folder(dataset, tmp):
    return ["project", "create", dataset, "--images", dataset / "images"], "not empty"


def case_create_images_folder_missing(dataset, tmp):
    return ["project", "create", tmp / "proj", "--images", tmp / "no_images"], "folder not found"


def case_create_images_folder_empty(dataset, tmp):
    (tmp / "empty").mkdir()
    return ["project", "create", tmp / "proj", "--images", tmp / "empty"], "no images in"


def case_create_labels_folder_is_images_folder(dataset, tmp):
    return ["project", "create", tmp / "proj", "--images", dataset / "images", "--labels", dataset / "images"], \
        "own folder"


def case_create_one_class(dataset, tmp):
    return ["project", "create", tmp / "proj", "--images", dataset / "images", "--num-classes", "1"], \
        "at least 2 classes"


def case_train_without_labels(dataset, tmp):
    Project.create(tmp / "proj").add_image(dataset / "images" / "img_000.tif")
    return ["project", "train", tmp / "proj", *FAST], "no labelled image"


def case_train_resume_without_run(dataset, tmp):
    Project.create(tmp / "proj")
    return ["project", "train", tmp / "proj", "--resume", *FAST], "nothing to resume"


def case_train_next_round_and_resume(dataset, tmp):
    return ["project", "train", tmp / "proj", "--next-round", "--resume"], "not allowed with"


def case_export_into_the_project(dataset, tmp):
    Project.create(tmp / "proj").add_image(dataset / "images" / "img_000.tif")
    return ["project", "export", tmp / "proj", "--out", tmp / "proj" / "labels"], "inside the project"


def case_export_nothing_yet(dataset, tmp):
    Project.create(tmp / "proj").add_image(dataset / "images" / "img_000.tif")
    return ["project", "export", tmp / "proj", "--out", tmp / "masks"], "nothing to export"


def case_no_action(dataset, tmp):
    return ["project"], "required: ACTION"


MISTAKES = {name[len("case_"):]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_user_mistake_exits_2_with_one_line(case, dataset, tmp_path):
    argv, fragment = MISTAKES[case](dataset, tmp_path)
    code, out, err = run_cli(argv)
    assert_one_line_error(code, err, fragment)


def test_create_with_a_bad_label_leaves_no_project(dataset, tmp_path):
    (tmp_path / "labels").mkdir()
    write_mask(tmp_path / "labels" / "img_004.tif", np.ones((40, 48), np.uint8))
    code, out, err = run_cli(["project", "create", tmp_path / "proj", "--images", dataset / "images",
                              "--labels", tmp_path / "labels"])
    assert_one_line_error(code, err, "shape mismatch")
    assert not (tmp_path / "proj").exists()  # the half-filled project was removed
    code, out, err = run_cli(["project", "create", tmp_path / "proj", "--images", dataset / "images"])
    assert code == 0, err  # and the folder can be used again


def test_status_and_the_review_panel_data_do_not_need_torch(rounds):
    """``project status``, the review queue and the latest model are plain project reads: no torch import (seconds
    on a laptop, and on the GUI thread it froze the viewer)."""
    import subprocess
    import sys

    code = ("import sys\nfrom napari_diffseg.cli import main\nfrom napari_diffseg.core.project.store import Project\n"
            f"assert main(['project', 'status', {str(rounds['project'])!r}]) == 0\n"
            f"project = Project.open({str(rounds['project'])!r})\n"
            "print(len(project.review_queue()), project.latest_model_dir() is not None, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"{len(UNLABELLED)} True False"


def test_pretrain_then_train_co_trains_from_the_pretrained_teacher(dataset, tmp_path):
    project = tmp_path / "proj"
    assert run_cli(["project", "create", project, "--images", dataset / "images"])[0] == 0  # no label needed
    code, out, err = run_cli(["project", "pretrain", project, "--budget", "2", "--width", "8"])
    assert code == 0, err
    first = float(out.split("teacher pretrained for ")[1].split()[0].rstrip("s"))
    code, out, err = run_cli(["project", "pretrain", project, "--budget", "2", "--width", "8"])
    assert code == 0, err
    assert "continuing" in err + out
    steps = [int(text.split("(")[1].split()[0]) for text in out.splitlines() if text.startswith("teacher pretrained")]
    assert float(out.split("teacher pretrained for ")[1].split()[0].rstrip("s")) > first and steps[0] > 1
    # the labels arrive later; round 1 starts from the pretrained teacher instead of from scratch
    store = Project.open(project)
    for path in sorted((dataset / "labels").glob("*.tif")):
        store.save_label(path.stem, tifffile.imread(path))
    code, out, err = run_cli(["project", "train", project, *FAST])
    assert code == 0, err
    assert "start:    co-training from the teacher pretrained without labels for" in out
    assert first > 0


def test_status_warns_about_deleted_image_files(dataset, tmp_path):
    project = tmp_path / "proj"
    assert run_cli(["project", "create", project, "--images", dataset / "images", "--labels",
                    dataset / "labels"])[0] == 0
    assert "lost" not in run_cli(["project", "status", project])[2]
    (project / "images" / f"{UNLABELLED[0]}.tif").unlink()
    (project / "labels" / f"{NAMES[0]}.tif").unlink()
    code, _, err = run_cli(["project", "status", project])
    assert code == 0
    assert f"2 image(s) have lost their image or mask file (deleted or moved?): {NAMES[0]}, {UNLABELLED[0]}" in err
