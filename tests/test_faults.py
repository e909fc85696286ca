"""Fault injection: nothing accepted is lost and nothing is left half-written when the process is killed (-9) in
the middle of accepts or of training, or when the disk fills up.

- accepts: a child process accepts masks in a loop and is killed at random moments, 10 times; after each kill
  the project opens, every ground-truth image has a complete mask (one of the masks written, never a torn file),
  every accept that returned before the kill is there, and no temporary file is left;
- training: ``diffseg train`` killed at random moments; the folder then holds a loadable model or none, never a
  broken one, and ``--resume`` continues from its last.pt;
- full disk: a 3 MB tmpfs (root only: ``mount`` needs it) fills up while images are added and masks accepted;
  every failure is a clear InputError and the earlier ground truth is intact.
"""

from __future__ import annotations

import os
from pathlib import Path
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from napari_diffseg.core.method.checkpoint import LAST, load_checkpoint
from napari_diffseg.core.prediction.model import SegmentationModel
from napari_diffseg.core.errors import InputError
from napari_diffseg.core.project.store import ImageStatus, Project
from napari_diffseg.core.data.synthetic import make_blobs_dataset

from test_cli import dataset  # noqa: F401 (the CLI tests' synthetic dataset fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # scripts, not a package
from _faults import kill_during_accepts, kill_during_training  # noqa: E402 (shared with bench_reliability.py)

SHAPE = (48, 48)
N_IMAGES = 6
KILLS = 10


def _masks(shape=SHAPE) -> list[np.ndarray]:
    first = np.zeros(shape, np.uint8)
    first[4:20, 4:20] = 1
    second = np.zeros(shape, np.uint8)
    second[24:44, 10:40] = 1
    return [first, second]


def _project(folder: Path) -> Project:
    project = Project.create(folder)
    for index, (image, _) in enumerate(make_blobs_dataset(N_IMAGES, shape=SHAPE, seed=2)):
        project.add_image(image, name=f"img{index}")
    return project


def test_kill_9_during_accepts_loses_nothing(tmp_path):
    project = _project(tmp_path / "proj")
    began = time.monotonic()
    report = kill_during_accepts(project.folder, _masks(), KILLS, seed=0)
    assert report.kills == KILLS and report.confirmed_accepts > 0
    assert (report.lost_accepts, report.torn_masks, report.leftover_files) == (0, 0, 0), report
    assert time.monotonic() - began < 120


def test_kill_9_during_training_leaves_a_model_or_none_and_resume_works(dataset, tmp_path):  # noqa: F811
    out = tmp_path / "model"
    command = [sys.executable, "-m", "napari_diffseg.cli", "train", str(dataset / "images"), "--labels",
               str(dataset / "labels"), "--out", str(out), "--budget", "600", "--width", "8", "--patch-size",
               "32", "32", "--threads", "1"]
    report = kill_during_training(command, out, kills=3, seed=1)
    assert report.kills == 3 and report.broken_models == 0, report
    if not (out / LAST).is_file():  # killed before any checkpoint: a normal run writes one
        subprocess.run(command + ["--steps", "2"], capture_output=True, timeout=300, check=True)
    step = int(load_checkpoint(out / LAST)["step"])
    resumed = subprocess.run(command + ["--resume", "--steps", str(step + 3)], capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert int(load_checkpoint(out / LAST)["step"]) == step + 3
    assert SegmentationModel.load(out) is not None


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs (needs root: mount); skipped with the reason where it cannot be mounted."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_gives_clear_errors_and_keeps_ground_truth(small_disk):
    project = Project.create(small_disk / "proj")
    rng = np.random.default_rng(0)
    project.add_image(rng.integers(0, 255, (64, 64), dtype=np.uint8), name="first")
    painted = _masks((64, 64))[0]
    project.save_label("first", painted)
    added, errors = 0, []
    for index in range(200):  # random pixels do not compress: ~0.25 MB each, the disk is full after ~10
        try:
            project.add_image(rng.integers(0, 255, (512, 512), dtype=np.uint8), name=f"big{index}")
            added += 1
        except InputError as error:
            errors.append(str(error))
            break
    assert errors and "No space left on device" in errors[0], errors
    with open(small_disk / "filler", "wb") as filler:  # whatever room is left, take it
        with pytest.raises(OSError):
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
    with pytest.raises(InputError, match="No space left"):
        project.accept("first", _masks((64, 64))[1])
    reopened = Project.open(project.folder)
    np.testing.assert_array_equal(reopened.label("first"), painted)  # the painted mask survived
    assert reopened.record("first").status == ImageStatus.LABELLED
    assert len(reopened.names()) == 1 + added
    assert not [p.name for p in reopened.labels_dir.iterdir() if p.name.startswith(".")]
    assert not [p.name for p in reopened.images_dir.iterdir() if p.name.startswith(".")]
