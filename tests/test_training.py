"""Tests for napari_diffseg.core.method.training: the event stream of a run, the stage switch, the labels-only baseline,
pseudo-label files, reproducibility with fixed seeds, cancel and resume (identical to an uninterrupted run),
warm start, and configuration errors. Tiny networks and step budgets (no wall-time dependence)."""

from __future__ import annotations


import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_diffseg.core.method.checkpoint import BEST, CARD, LAST, RunCheckpoint, read_model_card
from napari_diffseg.core.prediction.model import SegmentationModel
from napari_diffseg.core.data.training_set import TrainingData
from napari_diffseg.core.errors import InputError, ModelError
from napari_diffseg.core.data.io import to_channels_first
from napari_diffseg.core.data.synthetic import make_blobs_dataset
from napari_diffseg.core.method.training import (COTRAIN, LOSSES_FILE, PRETRAIN, PSEUDO_LABEL_DIR, PSEUDO_LABEL_STAGE,
                                          SAVING_STAGE, SUPERVISED, CheckpointSaved, Done, FitReport, Progress,
                                          PseudoLabelsReady, StageProgress, TrainConfig, train)

MAX_STEPS = 20


def make_data(n_images=4, n_labelled=2, shape=(40, 40), rgb=False, num_classes=2) -> TrainingData:
    pairs = make_blobs_dataset(n_images, shape=shape, rgb=rgb, seed=1)
    images = [to_channels_first(image) for image, _ in pairs]
    labels = {}
    for i in range(n_labelled):
        mask = pairs[i][1].astype(np.int64)
        if num_classes == 3:  # second class: the right half of the blobs
            mask[..., mask.shape[-1] // 2:] *= 2
        labels[i] = mask
    return TrainingData(images, labels, [f"img_{i:03d}" for i in range(n_images)], num_classes=num_classes)


def make_config(**overrides) -> TrainConfig:
    settings = dict(
        budget_seconds=None, max_steps=MAX_STEPS, base_channels=4, depth=2, patch_size=(32, 32), batch_size=2,
        rounds=1, seed=0, device="cpu", threads=1, bf16=False, uncertainty_draws=1, pretrain_fraction=0.25,
        checkpoint_every_seconds=1e9, first_pseudo_labels_after_seconds=1e9,
        pseudo_labels_every_seconds=1e9,
        # both twins from the start, a quarter of warm-up: every stage shows within 20 steps (the default, the
        # teacher alone then a copy, is covered by tests/test_scale_and_schedule.py and the semi-supervised gain test)
        supervised_warmup=0.25, warmup_twins="both",
        # the twin student as a second network (the paper's and the default; the mean-teacher student, the
        # teacher's running average, is covered by tests/test_consistency.py), ramped over half of the rest
        student="network", unlabelled_ramp=0.5, copy_paste=False,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def progress_steps(events) -> list[int]:
    return [e.step for e in events if isinstance(e, Progress)]


def loss_rows(model_dir: Path) -> list[dict]:
    with (model_dir / LOSSES_FILE).open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def data() -> TrainingData:
    return make_data()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """One uninterrupted run (seed 0, MAX_STEPS steps) shared by several tests."""
    out = tmp_path_factory.mktemp("reference")
    events = list(train(data, make_config(), out))
    return out, events


# ----- one full run -----

def test_event_sequence(reference, data):
    out, events = reference
    assert type(events[0]).__name__ == "PlanChosen"  # the run begins with its plan (core/method/planner.py)
    events = events[1:]
    progress = [e for e in events if isinstance(e, Progress)]
    assert [e.step for e in progress] == list(range(1, MAX_STEPS + 1))
    assert all(e.fraction == pytest.approx(e.step / MAX_STEPS) for e in progress)
    assert all(e.remaining >= 0 and e.elapsed >= 0 for e in progress)
    assert progress[-1].fraction == 1.0
    # every step yields its Progress; the run ends with saving, best, pseudo-labels (one stage event per image
    # before it), last, Done
    tail = events[len(progress):]
    assert all(isinstance(e, Progress) for e in events[: len(progress)])
    n_unlabelled = len(data.unlabelled_indices)
    assert [type(e) for e in tail] == ([StageProgress, CheckpointSaved] + [StageProgress] * n_unlabelled
                                       + [PseudoLabelsReady, CheckpointSaved, Done])
    assert (tail[0].stage, tail[0].done, tail[0].total) == (SAVING_STAGE, 0, 1)
    stages = tail[2:2 + n_unlabelled]
    assert [(e.stage, e.done, e.total) for e in stages] == [(PSEUDO_LABEL_STAGE, i, n_unlabelled)
                                                            for i in range(n_unlabelled)]
    best, pseudo, last, done = (e for e in tail if not isinstance(e, StageProgress))
    assert best.kind == "best" and best.path == out / BEST and best.path.is_file()
    assert last.kind == "last" and last.path == out / LAST and last.path.is_file()
    assert best.fit.kept_twin in ("teacher", "student")
    assert isinstance(done, Done) and done.model_dir == out and not done.cancelled
    assert done.fit == best.fit
    assert load(out / LAST)["step"] == MAX_STEPS


def test_stage_switch_and_losses(reference):
    _, events = reference
    progress = [e for e in events if isinstance(e, Progress)]
    stages = [e.stage for e in progress]
    n_pretrain = 5  # pretrain_fraction 0.25 of 20 steps
    assert stages == [PRETRAIN] * n_pretrain + [COTRAIN] * (MAX_STEPS - n_pretrain)
    assert all(set(e.losses) == {"reconstruction"} for e in progress[:n_pretrain])
    cotrain = progress[n_pretrain:]
    # supervised warm-up (a quarter of co-training: steps at budget fractions 0.25-0.40): no unlabelled patch
    n_warm = 4
    for e in cotrain[:n_warm]:
        assert e.losses["unlabelled_weight"] == 0.0 and "cps" not in e.losses
        assert {"supervised", "total"} <= set(e.losses)
    for e in cotrain[n_warm:]:
        assert {"cps", "supervised", "unsupervised", "total", "unlabelled_weight"} <= set(e.losses)
        assert all(np.isfinite(v) for v in e.losses.values())
    assert any("rec" in e.losses for e in cotrain)  # steps with pseudo-label rounds
    ramp = [e.losses["unlabelled_weight"] for e in cotrain[n_warm:]]
    assert 0 < ramp[0] < 0.2 and ramp == sorted(ramp) and ramp[-1] == 1.0  # full weight after half the rest


def test_files_of_a_run(reference, data):
    out, events = reference
    for name in (BEST, LAST, CARD, LOSSES_FILE):
        assert (out / name).is_file(), name
    rows = loss_rows(out)
    assert [int(r["step"]) for r in rows] == list(range(1, MAX_STEPS + 1))
    card = read_model_card(out)
    done = events[-1]
    assert card["selected_twin"] == done.fit.kept_twin
    assert card["threshold"] == done.fit.threshold
    assert FitReport.from_dict(card["metrics"]) == done.fit  # the card keeps the fit as it was reported
    assert [d["name"] for d in card["data"]] == data.names
    last = load(out / LAST)
    assert last["stage"] == COTRAIN and "student" in last and "student_optimiser" in last
    model = SegmentationModel.load(out)
    assert model.threshold == card["threshold"]
    (raw, _), = make_blobs_dataset(1, shape=(44, 52), seed=9)
    prediction = model.predict(raw, uncertainty=True, draws=1)
    assert prediction.mask.shape == raw.shape and prediction.mask.dtype == np.uint8
    assert prediction.uncertainty.shape == raw.shape


def test_pseudo_label_files(reference, data):
    out, events = reference
    ready = next(e for e in events if isinstance(e, PseudoLabelsReady))
    assert ready.step == MAX_STEPS and ready.directory == out / PSEUDO_LABEL_DIR
    assert ready.names == [data.names[i] for i in data.unlabelled_indices] == ["img_002", "img_003"]
    for index, name in zip(data.unlabelled_indices, ready.names):
        mask = tifffile.imread(ready.directory / f"{name}.tif")
        uncertainty = tifffile.imread(ready.directory / f"{name}_uncertainty.tif")
        assert mask.dtype == np.uint8 and mask.shape == data.images[index].shape[1:]
        assert set(np.unique(mask)) <= {0, 1}
        assert uncertainty.dtype == np.float32 and uncertainty.shape == mask.shape
        assert 0.0 <= uncertainty.min() and uncertainty.max() <= 1.0
        # the image-level score is the twins' disagreement (1 - soft Dice between teacher and student)
        assert 0.0 <= ready.mean_uncertainty[name] <= 1.0
    # only the unlabelled images get pseudo-labels
    assert sorted(p.name for p in ready.directory.iterdir()) == sorted(
        [f"{n}.tif" for n in ready.names] + [f"{n}_uncertainty.tif" for n in ready.names])


@pytest.mark.parametrize("fraction, max_steps, n_pretrain", [(0.5, 6, 3), (0.0, 4, 0), (0.3, 7, 3)])
def test_stage_switch_at_pretrain_fraction(tmp_path, data, fraction, max_steps, n_pretrain):
    events = list(train(data, make_config(max_steps=max_steps, pretrain_fraction=fraction), tmp_path))
    stages = [e.stage for e in events if isinstance(e, Progress)]
    assert stages == [PRETRAIN] * n_pretrain + [COTRAIN] * (max_steps - n_pretrain)


def test_labels_only_never_pretrains(tmp_path, data):
    events = list(train(data, make_config(max_steps=6, labels_only=True), tmp_path))
    progress = [e for e in events if isinstance(e, Progress)]
    assert [e.step for e in progress] == list(range(1, 7))
    assert {e.stage for e in progress} == {SUPERVISED}
    assert all(set(e.losses) == {"supervised"} for e in progress)
    assert isinstance(events[-1], Done)
    assert events[-1].fit.kept_twin == "teacher"
    last = load(tmp_path / LAST)
    assert last["stage"] == SUPERVISED and "student" not in last
    assert "labels-only" in read_model_card(tmp_path)["method"]


def test_labelled_images_only(tmp_path):
    # no unlabelled image: co-training runs on the labelled batch alone and no pseudo-labels are made
    events = list(train(make_data(n_images=2, n_labelled=2), make_config(max_steps=4), tmp_path))
    assert not any(isinstance(e, PseudoLabelsReady) for e in events)
    progress = [e for e in events if isinstance(e, Progress)]
    assert [e.stage for e in progress] == [PRETRAIN] + [COTRAIN] * 3
    assert all("cps" not in e.losses and "supervised" in e.losses for e in progress[1:])
    assert isinstance(events[-1], Done)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rgb", "3d", "3-class"])
def test_other_kinds_of_data(tmp_path, kind):
    if kind == "rgb":
        data, patch = make_data(n_images=3, n_labelled=1, rgb=True), (32, 32)
    elif kind == "3d":
        data, patch = make_data(n_images=3, n_labelled=1, shape=(12, 20, 20)), (8, 16, 16)
    else:
        data, patch = make_data(n_images=3, n_labelled=2, num_classes=3), (32, 32)
    config = make_config(max_steps=4, patch_size=patch, batch_size=1, num_classes=data.num_classes)
    events = list(train(data, config, tmp_path))
    assert isinstance(events[-1], Done)
    ready = next(e for e in events if isinstance(e, PseudoLabelsReady))
    mask = tifffile.imread(ready.directory / f"{ready.names[0]}.tif")
    assert mask.shape == data.images[data.unlabelled_indices[0]].shape[1:]
    assert set(np.unique(mask)) <= set(range(data.num_classes))
    model = SegmentationModel.load(tmp_path)
    assert model.config.image_channels == data.channels and model.config.spatial_dims == data.spatial_dims


@pytest.mark.parametrize("kind", ["2d", "3d"])
def test_cutmix_trains_the_teacher_on_mixed_unlabelled_patches(tmp_path, kind):
    if kind == "2d":
        data, patch = make_data(n_images=4, n_labelled=1), (32, 32)
    else:
        data, patch = make_data(n_images=4, n_labelled=1, shape=(12, 20, 20)), (8, 16, 16)
    runs = {}
    for cutmix in (False, True):
        config = make_config(max_steps=6, patch_size=patch, batch_size=4, pretrain_fraction=0.0,
                             supervised_warmup=0.0, unlabelled_ramp=0.2, cutmix=cutmix)
        events = list(train(data, config, tmp_path / str(cutmix)))
        assert isinstance(events[-1], Done)
        assert all("cps" in e.losses for e in events if isinstance(e, Progress) and e.step > 1)
        runs[cutmix] = load(tmp_path / str(cutmix) / LAST)["teacher"]
    # same seed, same batches: only the mixing of the two unlabelled patches differs
    assert not states_equal(runs[False], runs[True])


# ----- reproducibility, cancel and resume -----

@pytest.mark.slow
def test_fixed_seed_reproduces_weights(tmp_path, data, reference):
    ref_dir, _ = reference
    list(train(data, make_config(), tmp_path / "same"))
    list(train(data, make_config(seed=1), tmp_path / "other"))
    ref_last, ref_best = load(ref_dir / LAST), load(ref_dir / BEST)
    same_last, same_best = load(tmp_path / "same" / LAST), load(tmp_path / "same" / BEST)
    other_last, other_best = load(tmp_path / "other" / LAST), load(tmp_path / "other" / BEST)
    for key in ("teacher", "student"):
        assert states_equal(same_last[key], ref_last[key]), key
        assert not states_equal(other_last[key], ref_last[key]), key
    assert states_equal(same_best["mask_path"], ref_best["mask_path"])
    assert same_best["threshold"] == ref_best["threshold"] and same_best["twin"] == ref_best["twin"]
    assert not states_equal(other_best["mask_path"], ref_best["mask_path"])


def test_a_narrower_student_trains_and_resumes(tmp_path, data):
    """student_channels: the student is its own, narrower network; the teacher (the kept model) keeps its width."""
    config = make_config(base_channels=8, student_channels=4, max_steps=4, pretrain_fraction=0.0)
    list(train(data, config, tmp_path / "run"))
    last = load(tmp_path / "run" / LAST)
    teacher_width = last["teacher"]["mask_path.encoder.0.0.weight"].shape[0]
    student_width = last["student"]["mask_path.encoder.0.0.weight"].shape[0]
    assert (teacher_width, student_width) == (8, 4)
    resumed = list(train(data, make_config(base_channels=8, student_channels=4, max_steps=6, pretrain_fraction=0.0),
                         tmp_path / "run", resume=True))
    assert progress_steps(resumed) == [5, 6]
    assert SegmentationModel.load(tmp_path / "run").config.base_channels == 8


def test_training_leaves_the_process_random_state_alone(tmp_path, data):
    """Seeding is local to the run (its own generators, a forked RNG for the initial weights): code around it, a
    test or the napari session, keeps its random stream."""
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    list(train(data, make_config(max_steps=2), tmp_path / "run"))
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected.numpy())


@pytest.mark.slow
def test_mid_run_pseudo_labels_and_checkpoints_leave_training_untouched(tmp_path, data, reference):
    # the wall-clock schedules fire at every step here; the weights must still equal those of the reference run
    # (which makes them only at the end), or step-budget runs would not be reproducible
    config = make_config(checkpoint_every_seconds=0.0,
                         first_pseudo_labels_after_seconds=0.0, pseudo_labels_every_seconds=0.0)
    events = list(train(data, config, tmp_path))
    assert progress_steps(events) == list(range(1, MAX_STEPS + 1))
    n_cotrain = MAX_STEPS - 5
    # one pass after every co-training step but the last (the final pass covers it), plus the final one
    assert sum(isinstance(e, PseudoLabelsReady) for e in events) == n_cotrain
    assert sum(isinstance(e, CheckpointSaved) and e.kind == "last" for e in events) == MAX_STEPS + 1
    assert sum(isinstance(e, CheckpointSaved) and e.kind == "best" for e in events) >= 1
    ref_last, last = load(reference[0] / LAST), load(tmp_path / LAST)
    for key in ("teacher", "student"):
        assert states_equal(last[key], ref_last[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("cancel_at", [3, 8], ids=["in-pretraining", "in-cotraining"])
def test_cancel_and_resume_equals_uninterrupted_run(tmp_path, data, reference, cancel_at):
    ref_dir, _ = reference
    run = train(data, make_config(), tmp_path)
    for event in run:
        if isinstance(event, Progress) and event.step == cancel_at:
            break
    run.close()
    saved = load(tmp_path / LAST)
    assert saved["step"] == cancel_at
    assert saved["stage"] == (PRETRAIN if cancel_at <= 5 else COTRAIN)
    # a cancelled co-training run still leaves a model to predict with; a cancelled pretraining has none
    assert (tmp_path / BEST).exists() == (cancel_at > 5)
    assert len(loss_rows(tmp_path)) == cancel_at

    resumed = list(train(data, make_config(), tmp_path, resume=True))
    assert progress_steps(resumed) == list(range(cancel_at + 1, MAX_STEPS + 1))
    assert isinstance(resumed[-1], Done)
    ref_last, last = load(ref_dir / LAST), load(tmp_path / LAST)
    assert last["step"] == MAX_STEPS
    for key in ("teacher", "student"):
        assert states_equal(last[key], ref_last[key]), key
    assert states_equal(load(tmp_path / BEST)["mask_path"], load(ref_dir / BEST)["mask_path"])
    ref_rows, rows = loss_rows(ref_dir), loss_rows(tmp_path)
    assert [int(r["step"]) for r in rows] == list(range(1, MAX_STEPS + 1))
    for ref_row, row in zip(ref_rows, rows):
        for column in ("reconstruction", "total", "cps", "rec"):
            assert row.get(column) == ref_row.get(column), (row["step"], column)


def test_cancel_in_the_final_phase_still_leaves_last(tmp_path, data):
    config = make_config(max_steps=4)
    run = train(data, config, tmp_path)
    for event in run:
        if isinstance(event, CheckpointSaved) and event.kind == "best":
            break
    run.close()
    assert load(tmp_path / LAST)["step"] == 4
    resumed = list(train(data, config, tmp_path, resume=True))
    assert progress_steps(resumed) == []
    assert isinstance(resumed[-1], Done)


def test_resume_without_checkpoint(tmp_path, data):
    with pytest.raises(ModelError, match="no checkpoint"):
        list(train(data, make_config(max_steps=2), tmp_path, resume=True))


def test_resume_with_other_network_settings(tmp_path, data):
    list(train(data, make_config(max_steps=1), tmp_path))
    with pytest.raises(ModelError, match=r"other network settings .*base_channels"):
        list(train(data, make_config(max_steps=2, base_channels=8), tmp_path, resume=True))


def test_resume_continues_with_labels_accepted_meanwhile(tmp_path, data, caplog):
    list(train(data, make_config(max_steps=1), tmp_path))
    accepted = {**data.labels, len(data.images) - 1: data.labels[0].copy()}  # one more ground-truth mask
    changed = TrainingData(data.images, accepted, data.names)
    events = list(train(changed, make_config(max_steps=3), tmp_path, resume=True))
    assert [e.step for e in events if isinstance(e, Progress)] == [2, 3]  # step and schedule kept
    assert "continues with the current ones" in caplog.text
    assert RunCheckpoint.load(tmp_path / LAST).data == changed.fingerprints()


def test_warm_start_skips_pretraining(tmp_path, data, reference):
    ref_dir, _ = reference
    events = list(train(data, make_config(max_steps=3), tmp_path, warm_start=ref_dir))
    assert [e.stage for e in events if isinstance(e, Progress)] == [COTRAIN] * 3
    assert isinstance(events[-1], Done)


@pytest.mark.parametrize("source", ["pretrained teacher", "round ended in its warm-up"])
def test_a_warm_start_without_a_trained_student_keeps_the_copy_warm_up(tmp_path, data, source):
    """The background pretraining stores a teacher alone, and a round that ended before its student was copied a
    random one: co-training from either follows the default warm-up (the teacher trains alone, then the student
    starts as its copy) instead of training a random student from step 0 (which halved the steps of round 1 in
    the quality benchmark)."""
    from napari_diffseg.core.method.training import pretrain

    config = make_config(max_steps=8, pretrain_fraction=0.0, warmup_twins="copy", supervised_warmup=0.5)
    earlier = tmp_path / "earlier"
    if source == "pretrained teacher":
        list(pretrain(data, make_config(max_steps=2), earlier))
    else:
        list(train(data, config.replace(max_steps=2, supervised_warmup=0.9), earlier))
        assert RunCheckpoint.load(earlier / LAST).student_pending_copy
    events = list(train(data, config, tmp_path / "run", warm_start=earlier))
    losses = [e.losses for e in events if isinstance(e, Progress)]
    assert [set(step) for step in losses[:4]] == [{"supervised"}] * 4  # the teacher alone through the warm-up
    assert all("cps" in step for step in losses[-2:])  # then both twins, cross pseudo supervision
    card = json.loads((tmp_path / "run" / "model_card.json").read_text())
    assert card["selected_twin"] in ("teacher", "student")


# ----- configuration errors -----

@pytest.mark.parametrize(
    "overrides, message",
    [({"budget_seconds": None, "max_steps": None}, "budget"), ({"budget_seconds": -1.0}, "positive"),
     ({"max_steps": 0}, "max_steps must be a number >= 1"), ({"pretrain_fraction": 1.0}, "pretrain_fraction"),
     ({"num_classes": 1}, "num_classes"), ({"rounds": -1}, "rounds")],
)
def test_config_errors(overrides, message):
    with pytest.raises(InputError, match=message):
        make_config(**overrides)


def test_config_round_trip():
    config = make_config(patch_size=[32, 32], chained_rounds=True)
    assert config.schedule.patch_size == (32, 32)
    assert TrainConfig.from_dict({**config.to_dict(), "unknown_key": 1}) == config


def test_training_data_errors():
    image = np.zeros((1, 16, 16), np.float32)
    with pytest.raises(InputError, match="no labelled image"):
        TrainingData([image], {}, ["a"])
    with pytest.raises(InputError, match="shape"):
        TrainingData([image], {0: np.zeros((8, 8), np.int64)}, ["a"])
    with pytest.raises(InputError, match="label values"):
        TrainingData([image], {0: np.full((16, 16), 2, np.int64)}, ["a"])
    with pytest.raises(InputError, match="same kind"):
        TrainingData([image, np.zeros((3, 16, 16), np.float32)], {0: np.zeros((16, 16), np.int64)}, ["a", "b"])
    with pytest.raises(InputError, match="2 images but 1 names"):
        TrainingData([image, image], {0: np.eye(16, dtype=np.int64)}, ["a"])
    with pytest.raises(InputError, match="every labelled image is all background"):
        TrainingData([image, image], {0: np.zeros((16, 16), np.int64)}, ["a", "b"])
    with pytest.raises(InputError, match="foreground everywhere"):
        TrainingData([image], {0: np.ones((16, 16), np.int64)}, ["a"])
    with pytest.raises(InputError, match="every labelled image is constant"):
        TrainingData([image, image], {0: np.zeros((16, 16), np.int64), 1: np.eye(16, dtype=np.int64)}, ["a", "b"])
    ramp = np.linspace(0, 1, 256, dtype=np.float32).reshape(1, 16, 16)  # something to learn from
    TrainingData([ramp, image], {0: np.zeros((16, 16), np.int64), 1: np.eye(16, dtype=np.int64)}, ["a", "b"])


def test_a_new_run_keeps_the_previous_model_until_it_has_its_own(tmp_path, data):
    """kill -9 early in a new run must not leave a folder without a model: best.pt and the card are replaced only
    when the new run writes them."""
    out = tmp_path / "model"
    list(train(data, make_config(max_steps=4), out))
    before = (out / BEST).read_bytes(), (out / CARD).read_text()
    run = train(data, make_config(max_steps=4, seed=1), out)
    next(e for e in run if isinstance(e, Progress))  # the new run is training (as if killed here: no cleanup)
    assert ((out / BEST).read_bytes(), (out / CARD).read_text()) == before
    assert not (out / PSEUDO_LABEL_DIR).exists()  # the earlier run's pseudo-labels are gone
    assert SegmentationModel.load(out) is not None
    list(run)
    assert (out / BEST).read_bytes() != before[0]


def test_a_failed_checkpoint_write_is_a_clear_error(tmp_path, monkeypatch):
    from napari_diffseg.core.method import checkpoint

    checkpoint.save_checkpoint(tmp_path / LAST, {"step": 1})

    def full_disk(*_args, **_kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(InputError, match="cannot write .*is the disk full"):
        checkpoint.save_checkpoint(tmp_path / LAST, {"step": 2})
    monkeypatch.undo()
    assert checkpoint.load_checkpoint(tmp_path / LAST)["step"] == 1  # the earlier file is intact
    assert [p.name for p in tmp_path.iterdir()] == [LAST]  # no temporary file left


def test_out_of_memory_says_what_to_lower(tmp_path, data, monkeypatch):
    from napari_diffseg.core.method import training

    def exhausted(self, clock):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(training.TrainingRun, "train_step", exhausted)
    with pytest.raises(InputError, match=r"out of memory on cpu with batch 2, patch 32x32 and width 4: lower"):
        list(train(data, make_config(max_steps=2), tmp_path))


def test_a_last_checkpoint_of_an_earlier_version_still_loads(tmp_path):
    """Earlier versions stored the data fingerprints and the sampler's RNG state as JSON text inside last.pt."""
    import json

    from napari_diffseg.core.method import checkpoint

    fingerprints = [{"name": "a", "image_sha256": "x", "label_sha256": None}]
    numpy_state = np.random.default_rng(3).bit_generator.state
    checkpoint.save_checkpoint(tmp_path / LAST, {
        "config": {}, "network": {"spatial_dims": 2}, "teacher": {}, "teacher_optimiser": {}, "step": 4,
        "stage": "cotrain", "data": json.dumps(fingerprints), "elapsed": 1.5, "old_key": 1,
        "rng": {"torch": None, "generator": None, "numpy": json.dumps(numpy_state)}})
    saved = RunCheckpoint.load(tmp_path / LAST)
    assert saved.data == fingerprints and saved.rng["numpy"] == numpy_state and saved.step == 4
    assert not saved.pretrain_only and saved.student is None
    checkpoint.save_checkpoint(tmp_path / LAST, {"step": 1})
    with pytest.raises(ModelError, match="does not fit"):
        RunCheckpoint.load(tmp_path / LAST)


def test_fp16_with_a_gradient_scaler_where_bf16_is_missing(data, tmp_path, monkeypatch):
    """On a CUDA GPU without bf16 training runs in fp16 autocast with a gradient scaler; forced here on the CPU,
    where torch has both, to run that path: every stage trains with finite losses and the card says fp16."""
    from napari_diffseg.core import device as devices

    cuda = torch.device("cuda")
    monkeypatch.setattr(devices, "bf16_supported", lambda device: False)
    assert devices.fp16_training(cuda, None) and not devices.fp16_training(cuda, False)  # --no-bf16: fp32
    assert not devices.fp16_training(torch.device("cpu"), None)
    monkeypatch.setattr(devices, "fp16_training", lambda device, setting: True)
    scalers, real_scaler = [], torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler",
                        lambda device, enabled: scalers.append((device, enabled)) or real_scaler(device, enabled=enabled))
    events = list(train(data, make_config(bf16=None), tmp_path))
    assert scalers == [("cpu", True)]
    stages = {e.stage for e in events if isinstance(e, Progress)}
    assert stages == {PRETRAIN, COTRAIN}
    assert all(np.isfinite(v) for e in events if isinstance(e, Progress) for v in e.losses.values())
    assert read_model_card(tmp_path)["environment"]["fp16"] is True
