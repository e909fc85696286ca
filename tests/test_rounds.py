"""Tests for the human-in-the-loop rounds on a project (napari_diffseg.core.project.rounds), with tiny networks."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from napari_diffseg.core.project import rounds
from napari_diffseg.core.method.checkpoint import BEST, LAST
from napari_diffseg.core.errors import InputError
from napari_diffseg.core.data.io import read_image
from napari_diffseg.core.project.store import ImageStatus, Project
from napari_diffseg.core.project.rounds import (RoundStarted, previous_checkpoint_dir, project_training_data,
                                        train_round)
from napari_diffseg.core.data.synthetic import make_blobs_dataset
from conftest import tiny_train_config
from napari_diffseg.core.method.training import Done, Progress, PseudoLabelsReady, TrainConfig

N_IMAGES = 4


def tiny_config(**changes) -> TrainConfig:
    return tiny_train_config(**{"threads": 1, **changes})


@pytest.fixture
def pairs():
    return make_blobs_dataset(N_IMAGES, shape=(40, 40), seed=3)


@pytest.fixture
def project(tmp_path, pairs) -> Project:
    """Four blob images; the first one labelled."""
    proj = Project.create(tmp_path / "proj")
    for index, (image, _) in enumerate(pairs):
        proj.add_image(image, name=f"img{index}")
    proj.save_label("img0", pairs[0][1])
    return proj


def test_training_data_uses_labelled_and_accepted_as_ground_truth(project, pairs):
    project.accept("img1", pairs[1][1])
    project.reject("img2")
    data = project_training_data(project)
    assert data.names == ["img0", "img1", "img2", "img3"]
    assert data.labelled_indices == [0, 1]
    assert data.unlabelled_indices == [2, 3]  # rejected images still train unsupervised
    np.testing.assert_array_equal(data.labels[1], (pairs[1][1] > 0).astype(np.int64))
    assert data.images[0].shape == (1, 40, 40) and data.images[0].dtype == np.float32


def test_training_data_needs_images_and_a_label(tmp_path, pairs):
    empty = Project.create(tmp_path / "empty")
    with pytest.raises(InputError, match="no images"):
        project_training_data(empty)
    empty.add_image(pairs[0][0], name="a")
    with pytest.raises(InputError, match="no labelled image"):
        project_training_data(empty)


def test_training_data_reports_a_missing_mask_file(project):
    (project.labels_dir / "img0.tif").unlink()
    with pytest.raises(InputError, match="mask file is missing"):
        project_training_data(project)


def test_train_round_stores_pseudo_labels_losses_and_checkpoints(project):
    config = tiny_config()
    events = list(train_round(project, config))
    started = events[0]
    assert isinstance(started, RoundStarted)
    assert started.round == 1 and started.warm_start is None and not started.resumed
    assert (started.labelled, started.unlabelled) == (1, 3)
    assert isinstance(events[-1], Done)
    out_dir = project.checkpoints_dir(1)
    assert (out_dir / LAST).is_file() and (out_dir / BEST).is_file()
    assert project.latest_model_dir() == out_dir

    ready = [e for e in events if isinstance(e, PseudoLabelsReady)]
    assert ready and ready[-1].names == ["img1", "img2", "img3"]
    for name in ready[-1].names:
        record = project.record(name)
        assert record.status == ImageStatus.PSEUDO
        assert record.round == 1 and record.model_id.startswith("round_1/step_")
        assert record.uncertainty == pytest.approx(ready[-1].mean_uncertainty[name], rel=1e-6)
        mask, uncertainty = project.pseudo(name, round_number=1)
        np.testing.assert_array_equal(mask, read_image(ready[-1].directory / f"{name}.tif"))
        assert uncertainty.shape == (40, 40) and uncertainty.dtype == np.float32
    assert project.record("img0").status == ImageStatus.LABELLED

    steps = [e.step for e in events if isinstance(e, Progress)]
    logged_steps = sorted({entry.step for entry in project.loss_history(round_number=1)})
    assert logged_steps == steps == list(range(1, config.schedule.max_steps + 1))
    assert project.config[rounds.TRAIN_CONFIG_KEY]["max_steps"] == config.schedule.max_steps
    assert set(project.review_queue()) == {"img1", "img2", "img3"}


def test_next_round_warm_starts_from_the_previous_round(project, pairs):
    list(train_round(project, tiny_config()))
    project.accept("img1", pairs[1][1])
    assert project.next_round() == 2
    assert previous_checkpoint_dir(project) == project.checkpoints_dir(1)
    events = list(train_round(project, tiny_config(max_steps=3)))
    started = events[0]
    assert started.round == 2 and started.warm_start == project.checkpoints_dir(1)
    assert (started.labelled, started.unlabelled) == (2, 2)
    stages = {e.stage for e in events if isinstance(e, Progress)}
    assert stages == {"cotrain"}  # warm start skips the unsupervised pretraining
    assert (project.checkpoints_dir(2) / LAST).is_file()
    assert project.record("img1").status == ImageStatus.ACCEPTED  # not overwritten by round 2's pseudo-labels
    ready = [e for e in events if isinstance(e, PseudoLabelsReady)][-1]
    assert ready.names == ["img2", "img3"]
    assert {project.record(n).round for n in ready.names} == {2}


def test_changed_network_settings_train_from_scratch(project):
    list(train_round(project, tiny_config(max_steps=2)))
    project.next_round()
    first = next(iter(train_round(project, tiny_config(max_steps=2, base_channels=4))))
    assert first.warm_start is None and "other network settings" in first.note


def test_closing_the_round_leaves_last_checkpoint_and_logged_losses(project):
    events = train_round(project, tiny_config(max_steps=50))
    steps = []
    for event in events:
        if isinstance(event, Progress):
            steps.append(event.step)
            if event.step == 3:
                break
    events.close()
    assert (project.checkpoints_dir(1) / LAST).is_file()
    assert sorted({entry.step for entry in project.loss_history(round_number=1)}) == [1, 2, 3]

    resumed = list(train_round(project, tiny_config(max_steps=5), resume=True))
    assert resumed[0].resumed and "resuming" in resumed[0].note
    assert [e.step for e in resumed if isinstance(e, Progress)] == [4, 5]


def test_review_queue_is_most_uncertain_first(project, pairs):
    mask = np.zeros((40, 40), np.uint8)
    for name, mean in [("img1", 0.2), ("img2", 0.7), ("img3", math.nan)]:
        project.save_pseudo(name, mask, np.full((40, 40), 0.5, np.float32), 1, "m", mean)
    assert project.review_queue() == ["img2", "img1", "img3"]
    project.accept("img2", pairs[2][1])
    assert project.review_queue() == ["img1", "img3"]


def test_class_count_must_match_the_project(project):
    with pytest.raises(InputError, match="classes"):
        next(iter(train_round(project, tiny_config(num_classes=3))))


def test_checkpoint_lookups_do_not_create_folders(project):
    assert previous_checkpoint_dir(project, round_number=3) is None
    assert project.latest_model_dir() is None
    assert sorted(p.name for p in (project.folder / "checkpoints").iterdir()) == []
    (project.checkpoints_dir(1) / LAST).write_bytes(b"x")  # only the presence of last.pt / best.pt is looked at
    assert previous_checkpoint_dir(project, round_number=3) == project.checkpoints_dir(1)
    assert previous_checkpoint_dir(project, round_number=1) is None


def test_one_trainer_per_project(project, pairs):
    """A second training (another process, or the CLI beside napari) is refused with the holder's name, and the
    lock is free again once the first run ends."""
    from napari_diffseg.core.errors import DiffsegError

    config = tiny_train_config(max_steps=2)
    with project.training_lock("training round 1 in napari"):
        with pytest.raises(DiffsegError, match="busy: training round 1 in napari .process"):
            list(train_round(project, config))
    events = list(train_round(project, config))  # free again
    assert type(events[-1]).__name__ == "Done"
    script = ("import sys, time\nfrom napari_diffseg.core.project.store import Project\n"
              f"p = Project.open({str(project.folder)!r})\n"
              "with p.training_lock('pretraining in another process'):\n    print('held', flush=True)\n"
              "    time.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DiffsegError, match="pretraining in another process"):
            list(train_round(project, config))
    finally:
        holder.kill()  # killed: the OS releases its lock, no stale lock remains
        holder.wait()
    assert type(list(train_round(project, config))[-1]).__name__ == "Done"


def test_next_round_spends_its_time_on_steps_not_on_an_early_pass(project, pairs):
    """Round 1 delivers early pseudo-labels (the user has nothing to review yet); a warm-started round has the
    previous round's to review, so it has one pass, at its end."""
    config = tiny_train_config(max_steps=4)
    first = [e for e in train_round(project, config) if isinstance(e, PseudoLabelsReady)]
    assert len(first) == 2 and first[0].step == 1  # early (after the first step) and final
    project.next_round()
    second = [e for e in train_round(project, config) if isinstance(e, PseudoLabelsReady)]
    assert [e.step for e in second] == [4]


def test_round_1_from_a_pretrained_teacher_still_delivers_early_pseudo_labels(project, pairs):
    config = tiny_train_config(max_steps=4)
    list(rounds.pretrain_project(project, tiny_train_config(max_steps=2)))
    events = list(train_round(project, config))
    assert "pretrained without labels" in events[0].note
    assert [e.step for e in events if isinstance(e, PseudoLabelsReady)] == [1, 4]
