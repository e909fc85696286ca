"""Tests for the working scale (choice from the labelled objects, resampling, prediction at scale), the poly
learning-rate schedule and the budget accounting that keeps pseudo-label passes and checkpoints out of the budget."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from napari_diffseg.core.method.checkpoint import LAST, read_model_card
from napari_diffseg.core.prediction.model import SegmentationModel
from napari_diffseg.core.data.training_set import TrainingData, augment_intensity
from napari_diffseg.core.errors import InputError
from napari_diffseg.core.data.io import to_channels_first
from napari_diffseg.core.data.scale import (MIN_SCALE, choose_working_scale, resize_image, resize_labels,
                                       resize_probabilities, scaled_shape)
from napari_diffseg.core.data.synthetic import make_blobs_dataset
from napari_diffseg.core.method.clock import Clock as _Clock
from napari_diffseg.core.method.training import PseudoLabelsReady, TrainConfig, poly_factor, train

from conftest import tiny_train_config


def disc(shape, centre, radius) -> np.ndarray:
    yy, xx = np.indices(shape)
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2).astype(np.uint8)


# ----- working scale -----

def test_large_objects_are_shrunk_to_the_target_size():
    # one lesion 200 px across in a 600 px image: the lesion is the thinnest structure -> 64 / 200
    assert choose_working_scale([disc((600, 600), (300, 300), 100)]) == pytest.approx(0.3)


def test_small_objects_keep_native_resolution():
    labels = np.zeros((256, 256), np.uint8)
    for y in range(20, 256, 40):
        for x in range(20, 256, 40):
            labels |= disc((256, 256), (y, x), 8)
    assert choose_working_scale([labels]) == 1.0


def test_thin_gaps_between_large_objects_keep_native_resolution():
    # large foreground regions separated by 4-px background lines (membranes): the lines decide
    labels = np.ones((400, 400), np.uint8)
    labels[::100, :] = 0
    labels[:, ::100] = 0
    for offset in range(1, 4):
        labels[offset::100, :] = 0
        labels[:, offset::100] = 0
    assert choose_working_scale([labels]) == 1.0


def test_scale_floor_and_degenerate_labels():
    assert choose_working_scale([disc((2000, 2000), (1000, 1000), 900)]) == MIN_SCALE
    assert choose_working_scale([np.zeros((64, 64), np.uint8)]) == 1.0
    assert choose_working_scale([np.ones((64, 64), np.uint8)]) == 1.0
    assert choose_working_scale([]) == 1.0


def test_resampling_keeps_shapes_and_classes():
    assert scaled_shape((100, 51), 0.5) == (50, 26)
    image = np.random.default_rng(0).random((3, 100, 80)).astype(np.float32)
    small = resize_image(image, (50, 40))
    assert small.shape == (3, 50, 40) and small.dtype == np.float32
    assert np.allclose(small.mean(), image.mean(), atol=1e-3)  # area averaging keeps the mean
    labels = disc((100, 80), (50, 40), 20).astype(np.int64)
    small_labels = resize_labels(labels, (50, 40), 2)
    assert small_labels.shape == (50, 40) and set(np.unique(small_labels)) == {0, 1}
    assert abs(small_labels.sum() * 4 - labels.sum()) / labels.sum() < 0.05
    probs = np.stack([1 - labels, labels]).astype(np.float32)
    back = resize_probabilities(resize_image(probs, (50, 40)), (100, 80))
    assert back.shape == (2, 100, 80) and np.allclose(back.sum(0), 1.0, atol=1e-5)
    assert ((back[1] > 0.5) == (labels > 0)).mean() > 0.98


def test_training_and_prediction_at_a_working_scale(tmp_path):
    pairs = make_blobs_dataset(3, shape=(64, 64), seed=2)
    data = TrainingData([to_channels_first(image) for image, _ in pairs], {0: pairs[0][1].astype(np.int64)},
                        ["a", "b", "c"])
    events = list(train(data, tiny_train_config(max_steps=3, working_scale=0.5), tmp_path))
    card = read_model_card(tmp_path)
    assert card["working_scale"] == 0.5 and card["patch_size"] == [32, 32]
    ready = [e for e in events if isinstance(e, PseudoLabelsReady)][-1]
    import tifffile
    assert tifffile.imread(ready.directory / "b.tif").shape == (64, 64)  # pseudo-labels at full resolution
    model = SegmentationModel.load(tmp_path)
    assert model.working_scale == 0.5
    prediction = model.predict(pairs[1][0], uncertainty=True, draws=1)
    assert prediction.mask.shape == (64, 64) and prediction.uncertainty.shape == (64, 64)
    assert prediction.probabilities.shape == (2, 64, 64)


def test_working_scale_setting_is_checked():
    with pytest.raises(InputError, match="working scale"):
        TrainConfig(working_scale=1.5)
    with pytest.raises(InputError, match="keep_twin"):
        TrainConfig(keep_twin="both")
    with pytest.raises(InputError, match="lr_schedule"):
        TrainConfig(lr_schedule="cosine")


# ----- schedule -----

def test_poly_factor():
    assert poly_factor(0.0) == 1.0 and poly_factor(1.0) == 0.0 and poly_factor(2.0) == 0.0
    values = [poly_factor(p) for p in np.linspace(0, 1, 11)]
    assert values == sorted(values, reverse=True)
    assert poly_factor(0.5) == pytest.approx(0.5**0.9)


@pytest.mark.parametrize("labels_only", [False, True])
def test_learning_rate_anneals_to_zero_at_the_end_of_the_budget(tmp_path, labels_only):
    pairs = make_blobs_dataset(3, shape=(40, 40), seed=1)
    data = TrainingData([to_channels_first(image) for image, _ in pairs], {0: pairs[0][1].astype(np.int64)},
                        ["a", "b", "c"])
    # co-training with a second network as the student, so that both optimisers' rates are checked
    config = tiny_train_config(max_steps=12, labels_only=labels_only, pretrain_fraction=0.25,
                               **({} if labels_only else {"student": "network"}))
    list(train(data, config, tmp_path))
    last = torch.load(tmp_path / LAST, map_location="cpu", weights_only=True)
    rate = last["teacher_optimiser"]["param_groups"][0]["lr"]
    # the last step ran at 11/12 of the budget: (1 - 11/12) ** 0.9 of the co-training rate (labels only) or
    # (1 - (11/12 - 1/4) / (3/4)) ** 0.9 of it (co-training starts after the pretraining quarter)
    progress = 11 / 12 if labels_only else (11 / 12 - 0.25) / 0.75
    assert rate == pytest.approx(config.schedule.lr_cotrain * (1 - progress) ** 0.9, rel=1e-6)
    if not labels_only:
        assert last["student_optimiser"]["param_groups"][0]["lr"] == pytest.approx(rate, rel=1e-6)


def test_unlabelled_weight_after_the_supervised_warm_up():
    from napari_diffseg.core.method.training import TrainingRun

    weight = TrainingRun.unlabelled_weight
    run = type("RunSettings", (), {"config": TrainConfig(supervised_warmup=0.25, unlabelled_ramp=0.5)})()
    assert [weight(run, p) for p in (0.0, 0.2, 0.25)] == [0.0, 0.0, 0.0]
    assert weight(run, 0.25 + 0.375 / 2) == pytest.approx(0.5)  # the ramp spans half of the remaining 0.75
    assert weight(run, 0.625) == pytest.approx(1.0) and weight(run, 0.9) == 1.0
    paper = type("RunSettings", (), {"config": TrainConfig(supervised_warmup=0.0, unlabelled_ramp=1.0)})()
    assert weight(paper, 0.5) == pytest.approx(0.5)  # shared/METHOD.md: linear over all of training
    with pytest.raises(InputError, match="supervised_warmup"):
        TrainConfig(supervised_warmup=1.0)
    with pytest.raises(InputError, match="warmup_twins"):
        TrainConfig(warmup_twins="none")


def test_copy_warm_up_trains_the_teacher_alone_then_copies_it_into_the_student(tmp_path):
    pairs = make_blobs_dataset(3, shape=(40, 40), seed=1)
    data = TrainingData([to_channels_first(image) for image, _ in pairs], {0: pairs[0][1].astype(np.int64)},
                        ["a", "b", "c"])
    # 8 steps, no pretraining, warm-up half of it: steps 1-5 train the teacher alone (the unlabelled weight is still
    # 0 at the step that starts at the half), step 6 copies it, then CPS;
    # a learning rate so small that the copy is still visible at the end
    config = tiny_train_config(max_steps=8, pretrain_fraction=0.0, supervised_warmup=0.5, warmup_twins="copy", student="network",
                               lr_cotrain=1e-9)
    events = list(train(data, config, tmp_path))
    losses = [e.losses for e in events if type(e).__name__ == "Progress"]
    assert all(set(step) == {"supervised"} for step in losses[:5])  # one network, labels only
    assert all("cps" in step for step in losses[5:])
    last = torch.load(tmp_path / LAST, map_location="cpu", weights_only=True)
    assert last["student_pending_copy"] is False
    mask_path = [k for k in last["teacher"] if k.startswith("mask_path.") and k.endswith("weight")]  # not BN stats
    assert all(torch.allclose(last["student"][k].float(), last["teacher"][k].float(), atol=1e-5) for k in mask_path)
    both = tiny_train_config(max_steps=8, pretrain_fraction=0.0, supervised_warmup=0.5, warmup_twins="both", student="network",
                             lr_cotrain=1e-9)
    list(train(data, both, tmp_path / "both"))
    other = torch.load(tmp_path / "both" / LAST, map_location="cpu", weights_only=True)
    assert not all(torch.allclose(other["student"][k].float(), other["teacher"][k].float(), atol=1e-5)
                   for k in mask_path)  # "both": two networks from their own initialisations


# ----- budget accounting -----

def test_paused_time_is_overhead_not_budget():
    clock = _Clock(TrainConfig(budget_seconds=10.0))
    before = clock.elapsed
    with clock.paused():
        time.sleep(0.2)
        with clock.paused():  # re-entrant
            time.sleep(0.05)
    assert clock.elapsed - before < 0.1
    assert clock.overhead >= 0.25
    time.sleep(0.05)
    assert clock.elapsed - before >= 0.05


def test_card_reports_optimisation_and_overhead_time(tmp_path):
    pairs = make_blobs_dataset(3, shape=(40, 40), seed=1)
    data = TrainingData([to_channels_first(image) for image, _ in pairs], {0: pairs[0][1].astype(np.int64)},
                        ["a", "b", "c"])
    list(train(data, tiny_train_config(max_steps=4, pseudo_labels_every_seconds=0), tmp_path))
    training = read_model_card(tmp_path)["training"]
    assert training["steps"] == 4 and training["overhead_seconds"] > 0 and training["elapsed_seconds"] > 0


# ----- augmentation -----

def test_intensity_augmentation_keeps_range_and_varies_per_sample():
    generator = torch.Generator().manual_seed(0)
    images = torch.full((4, 3, 16, 16), 0.5)
    out = augment_intensity(images, generator)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    means = out.mean(dim=(1, 2, 3))
    assert means.std() > 0.01  # one draw per sample
    assert torch.equal(augment_intensity(images, generator, strength=0.0), images)
