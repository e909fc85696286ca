"""The weak-to-strong pieces of co-training (core/method/consistency.py), the CPU-time budget clock, the paper preset,
and the quality protocol's statistics (benchmarks/quality_stats.py)."""

from __future__ import annotations

from pathlib import Path
import sys
import time

import numpy as np
import pytest
import torch

from napari_diffseg.core.method.config import PRESETS, Targets, TrainConfig
from napari_diffseg.core.method.consistency import (WeightAverage, blur, confident_targets, masked_segmentation_loss,
                                             strong_view)
from napari_diffseg.core.errors import InputError
from napari_diffseg.core.method.teacher import (DiffusionTwin, NetworkConfig, UnlabelledTargets, cotraining_loss,
                                         soft_dice_loss)
from napari_diffseg.core.method.clock import Clock as _Clock

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # scripts, not a package
from quality_stats import bootstrap_ci, labelled_subset, paired_differences  # noqa: E402

CONFIG = NetworkConfig(spatial_dims=2, image_channels=1, base_channels=4, depth=2)


def twin(seed: int) -> DiffusionTwin:
    torch.manual_seed(seed)
    return DiffusionTwin(CONFIG)


def test_weight_average_moves_towards_the_live_weights_and_copies_the_statistics():
    live = twin(0)
    average = WeightAverage(live, decay=0.9)
    before = [p.clone() for p in average.twin.mask_path.parameters()]
    with torch.no_grad():
        for parameter in live.mask_path.parameters():
            parameter.add_(1.0)
        for buffer in live.mask_path.buffers():
            if buffer.dtype.is_floating_point:
                buffer.add_(2.0)
    average.update(live)  # first update: decay min(0.9, 1/10) = 0.1
    for old, new, current in zip(before, average.twin.mask_path.parameters(), live.mask_path.parameters()):
        torch.testing.assert_close(new, 0.1 * old + 0.9 * current)
    for mine, theirs in zip(average.twin.mask_path.buffers(), live.mask_path.buffers()):
        torch.testing.assert_close(mine, theirs)
    assert not any(p.requires_grad for p in average.twin.parameters())
    for _ in range(200):
        average.update(live)
    assert average.updates == 201
    for mine, theirs in zip(average.twin.mask_path.parameters(), live.mask_path.parameters()):
        torch.testing.assert_close(mine, theirs)  # converged to the (unchanging) live weights


def test_weight_average_predicts_deterministically_at_t0():
    average = WeightAverage(twin(1), decay=0.99)
    images = torch.rand(2, 1, 16, 16)
    first, second = average.probabilities(images), average.probabilities(images)
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(first.sum(1), torch.ones(2, 16, 16))


def test_confident_targets_keep_only_sure_pixels():
    probabilities = torch.tensor([[0.95, 0.6, 0.3, 0.02]]).view(1, 1, 1, 4)
    probabilities = torch.cat([1 - probabilities, probabilities], dim=1)
    hard, valid = confident_targets(probabilities, 0.9)
    assert hard.flatten().tolist() == [1, 1, 0, 0]
    assert valid.flatten().tolist() == [1.0, 0.0, 0.0, 1.0]
    assert confident_targets(probabilities, 0.0)[1].flatten().tolist() == [1.0] * 4


def test_masked_loss_ignores_the_pixels_left_out_and_is_soft_dice_when_all_are_valid():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 8)
    target = torch.randint(0, 2, (2, 8, 8))
    everything = torch.ones(2, 8, 8)
    torch.testing.assert_close(masked_segmentation_loss(logits, target, everything, "dice"),
                               soft_dice_loss(logits, target))
    valid = (torch.rand(2, 8, 8) > 0.5).float()
    changed = torch.where(valid.bool().unsqueeze(1), logits, torch.randn_like(logits) * 5)
    for kind in ("dice", "dice_ce"):
        torch.testing.assert_close(masked_segmentation_loss(logits, target, valid, kind),
                                   masked_segmentation_loss(changed, target, valid, kind))
    assert not torch.allclose(masked_segmentation_loss(logits, target, valid, "dice_ce"),
                              masked_segmentation_loss(logits, target, everything, "dice_ce"))


def test_cotraining_with_targets_learns_only_confident_pixels():
    teacher, student = twin(2), twin(3)
    labelled, labels = torch.rand(2, 1, 16, 16), torch.randint(0, 2, (2, 16, 16))
    unlabelled = torch.rand(2, 1, 16, 16, requires_grad=True)
    hard = torch.randint(0, 2, (2, 16, 16))
    nothing = UnlabelledTargets((hard, torch.zeros(2, 16, 16)), (hard, torch.zeros(2, 16, 16)), "dice_ce")
    losses = cotraining_loss(teacher, student, labelled, labels, unlabelled, 1.0, rounds=0, targets=nothing)
    assert losses.parts["confident"] == 0.0
    # no confident pixel: the cross term is the constant Dice of empty sets, and sends no gradient to the images
    grad, = torch.autograd.grad(losses.terms["cps_student"] + losses.terms["cps_teacher"], unlabelled,
                                allow_unused=True)
    assert grad is None or float(grad.abs().max()) == 0.0
    everything = UnlabelledTargets((hard, torch.ones(2, 16, 16)), (hard, torch.ones(2, 16, 16)), "dice_ce")
    losses = cotraining_loss(teacher, student, labelled, labels, unlabelled, 1.0, rounds=0, targets=everything)
    grad, = torch.autograd.grad(losses.terms["cps_student"], unlabelled)
    assert float(grad.abs().max()) > 0


def test_blur_keeps_constant_images_and_spreads_an_impulse():
    flat = torch.full((1, 2, 12, 12), 0.4)
    torch.testing.assert_close(blur(flat, 1.0), flat)
    impulse = torch.zeros(1, 1, 15, 15)
    impulse[0, 0, 7, 7] = 1.0
    spread = blur(impulse, 1.0)
    assert spread[0, 0, 7, 7] < 0.5 and spread[0, 0, 7, 8] > 0
    assert abs(float(spread.sum()) - 1.0) < 1e-5
    volume = torch.zeros(1, 1, 9, 9, 9)
    volume[0, 0, 4, 4, 4] = 1.0
    assert abs(float(blur(volume, 0.8).sum()) - 1.0) < 1e-5


def test_strong_view_perturbs_in_range_and_is_the_identity_at_zero():
    images = torch.rand(4, 3, 16, 16)
    generator = torch.Generator().manual_seed(0)
    strong = strong_view(images, generator, 1.5)
    assert strong.shape == images.shape and float(strong.min()) >= 0 and float(strong.max()) <= 1
    assert not torch.allclose(strong, images)
    assert strong_view(images, generator, 0.0) is images


def test_a_cpu_budget_does_not_count_waiting():
    wall, cpu = _Clock(TrainConfig(budget_seconds=10)), _Clock(TrainConfig(budget_seconds=10, budget_clock="cpu"))
    time.sleep(0.3)
    assert wall.elapsed >= 0.25
    assert cpu.elapsed < 0.15


def test_the_paper_preset_and_its_overrides():
    paper = TrainConfig.from_preset("paper", seed=3)
    assert paper.method.targets == Targets.NOISED and paper.method.rounds == 3 and paper.method.rounds_every == 1
    assert paper.method.pretrain_fraction == PRESETS["paper"]["pretrain_fraction"] > 0
    assert paper.runtime.seed == 3
    assert TrainConfig.from_preset("paper", rounds=1).method.rounds == 1
    assert TrainConfig.from_preset(None).method.targets == Targets.NOISED  # the default, as measured
    with pytest.raises(InputError, match="unknown preset"):
        TrainConfig.from_preset("fancy")


def test_the_cli_preset_reaches_the_config():
    from napari_diffseg.cli._common import _train_config
    from napari_diffseg.cli._parser import build_parser

    args = build_parser().parse_args(["train", "in", "--labels", "lab", "--out", "m", "--preset", "paper",
                                      "--rounds", "2"])
    config = _train_config(args, 2)
    assert config.method.targets == Targets.NOISED and config.method.rounds == 2


def test_the_cli_sets_any_setting_by_name_and_says_what_is_wrong():
    from napari_diffseg.cli._common import _train_config
    from napari_diffseg.cli._parser import build_parser

    def config(*options):
        return _train_config(build_parser().parse_args(["train", "in", "--labels", "lab", "--out", "m", *options]), 2)

    chosen = config("--set", "cutmix=true", "--set", "appearance=0.5", "--set", "round-t-fraction=0.05",
                    "--set", "targets=average", "--set", "student_channels=none")
    assert chosen.method.cutmix is True and chosen.method.appearance == 0.5
    assert chosen.method.round_t_fraction == 0.05 and chosen.method.targets == Targets.AVERAGE
    assert config("--set", "rounds=3", "--rounds", "2").method.rounds == 2  # the named option wins
    assert config("--preset", "paper", "--set", "rounds=2").method.rounds == 2  # --set wins over the preset
    with pytest.raises(InputError, match="did you mean cutmix"):
        config("--set", "cutmx=true")
    with pytest.raises(InputError, match="cutmix takes true or false"):
        config("--set", "cutmix=maybe")
    with pytest.raises(InputError, match="appearance takes a number"):
        config("--set", "appearance=lots")
    with pytest.raises(InputError, match="NAME=VALUE"):
        config("--set", "cutmix")
    with pytest.raises(InputError, match="own option \\(--seed\\)"):
        config("--set", "seed=3")
    with pytest.raises(InputError, match="round_t_fraction must be in"):
        config("--set", "round_t_fraction=0")  # the ranges: TrainConfig.validate


def test_labelled_subsets_are_fixed_distinct_and_the_first_is_the_first_k():
    assert labelled_subset(60, 2, 0) == [0, 1]
    drawn = labelled_subset(60, 2, 1)
    assert drawn == labelled_subset(60, 2, 1) and drawn == sorted(drawn) and len(set(drawn)) == 2
    assert drawn != labelled_subset(60, 2, 2)
    assert all(0 <= i < 60 for i in labelled_subset(60, 5, 2))
    with pytest.raises(ValueError):
        labelled_subset(3, 4, 0)


def test_bootstrap_interval_of_paired_differences():
    mean, low, high = bootstrap_ci([0.05] * 6)
    assert (mean, low, high) == pytest.approx((0.05, 0.05, 0.05))
    rng = np.random.default_rng(0)
    few = rng.normal(0.03, 0.02, 6)
    many = rng.normal(0.03, 0.02, 200)
    m_few, lo_few, hi_few = bootstrap_ci(few)
    m_many, lo_many, hi_many = bootstrap_ci(many)
    assert lo_few <= m_few <= hi_few and lo_many <= m_many <= hi_many
    assert hi_many - lo_many < hi_few - lo_few
    assert lo_many > 0  # 200 pairs around +3 points: clearly positive
    single = bootstrap_ci([float("nan"), 0.1])
    assert single[0] == pytest.approx(0.1) and np.isnan(single[1]) and np.isnan(single[2])  # one pair: no interval
    ours = [{"dataset": "a", "seed": 0, "d": 0.8}, {"dataset": "a", "seed": 1, "d": 0.7}]
    base = [{"dataset": "a", "seed": 1, "d": 0.6}]
    assert paired_differences(ours, base, "d", ("dataset", "seed")) == pytest.approx([0.1])


def test_copy_paste_puts_ground_truth_inside_the_box_and_keeps_the_pseudo_label_outside():
    from napari_diffseg.core.method.consistency import paste_labelled

    views = [torch.zeros(3, 1, 8, 8), torch.full((3, 1, 8, 8), 0.5)]
    labelled_views = [torch.ones(2, 1, 8, 8), torch.full((2, 1, 8, 8), 0.9)]
    labels = torch.stack([torch.ones(8, 8, dtype=torch.long), torch.zeros(8, 8, dtype=torch.long)])
    pseudo = (torch.full((3, 8, 8), 0, dtype=torch.long), torch.zeros(3, 8, 8))
    boxes = torch.zeros(3, 1, 8, 8, dtype=torch.bool)
    boxes[:, :, 2:5, 2:6] = True
    pasted, targets = paste_labelled(views, labelled_views, labels, (pseudo, pseudo), boxes)
    inside = boxes[:, 0]
    assert torch.all(pasted[0][:, 0][inside] == 1) and torch.all(pasted[0][:, 0][~inside] == 0)
    assert torch.all(pasted[1][:, 0][inside] == 0.9) and torch.all(pasted[1][:, 0][~inside] == 0.5)
    hard, valid = targets[0]
    assert torch.all(hard[0][inside[0]] == 1) and torch.all(hard[1][inside[1]] == 0)  # patch i gets labels[i % 2]
    assert torch.all(hard[2][inside[2]] == 1)
    assert torch.all(valid[inside] == 1) and torch.all(valid[~inside] == 0)
    assert torch.all(hard[~inside] == 0)


AVERAGE_TARGETS = {"targets": "average"}


@pytest.mark.parametrize("overrides", [
    {}, AVERAGE_TARGETS, {**AVERAGE_TARGETS, "cutmix": True}, {**AVERAGE_TARGETS, "copy_paste": True},
    {**AVERAGE_TARGETS, "targets_from": "mean"}, {**AVERAGE_TARGETS, "warmup_twins": "both", "student_channels": 8},
    {**AVERAGE_TARGETS, "student": "average"}, {**AVERAGE_TARGETS, "student": "average", "copy_paste": True},
    {"targets": "offline"}])
def test_cotraining_runs_the_chosen_unlabelled_term(tmp_path, overrides):
    from napari_diffseg.core.data.training_set import training_data_from_arrays
    from napari_diffseg.core.data.synthetic import make_blobs_dataset
    from napari_diffseg.core.method.training import Progress, train

    pairs = make_blobs_dataset(5, shape=(32, 32), seed=0)
    data = training_data_from_arrays([p[0] for p in pairs], {0: pairs[0][1], 1: pairs[1][1]},
                                     [f"i{i}" for i in range(5)])
    config = TrainConfig(budget_seconds=None, max_steps=6, base_channels=4, depth=2, patch_size=(16, 16),
                         batch_size=4, threads=1, supervised_warmup=0.3, unlabelled_ramp=0.1, **overrides)
    losses = [e.losses for e in train(data, config, tmp_path) if isinstance(e, Progress)]
    if config.method.warmup_twins == "copy":
        assert [set(step) for step in losses[:2]] == [{"supervised"}] * 2  # the teacher alone through the warm-up
    else:
        assert all("cps" not in step for step in losses[:2])  # both twins on labels alone through the warm-up
    unlabelled = [step for step in losses if step.get("unlabelled_weight", 0) > 0]
    assert unlabelled and all("cps" in step for step in unlabelled)
    masked = config.method.targets in (Targets.AVERAGE, Targets.OFFLINE)
    assert all(("confident" in step) == masked for step in unlabelled)
    if config.method.targets == Targets.OFFLINE:  # a pass where the term starts, another halfway through the rest
        assert [step["offline_passes"] for step in unlabelled] == [1, 1, 2, 2]


def test_offline_pseudo_labels_keep_the_confident_pixels_of_the_whole_image():
    from napari_diffseg.core.data.synthetic import make_blobs_dataset
    from napari_diffseg.core.data.training_set import PatchSampler, training_data_from_arrays
    from napari_diffseg.core.method.offline import IGNORE, passes_due, pool_pseudo_labels
    from napari_diffseg.core.method.teacher import DiffusionTwin, NetworkConfig

    assert [passes_due(p, 0.5) for p in (0.2, 0.5, 0.7, 0.75, 1.0)] == [0, 1, 1, 2, 2]
    torch.manual_seed(0)
    network = DiffusionTwin(NetworkConfig(2, 1, 2, base_channels=4, depth=2)).eval()
    pairs = make_blobs_dataset(3, shape=(40, 36), seed=0)
    data = training_data_from_arrays([p[0] for p in pairs], {0: pairs[0][1]}, ["a", "b", "c"])
    sampler = PatchSampler(data, (16, 16), seed=0)
    kwargs = dict(sliced=False, device=torch.device("cpu"), bf16=False)
    every = pool_pseudo_labels(network, sampler.images, [1, 2], confidence=0.0, **kwargs)
    assert sorted(every) == [1, 2] and every[1].shape == (40, 36) and IGNORE not in every[1]
    sure = pool_pseudo_labels(network, sampler.images, [1, 2], confidence=0.999, **kwargs)
    assert np.all(sure[1] == IGNORE)  # an untrained network is sure of nothing
    with torch.no_grad():
        expected = torch.softmax(network.mask_logits(torch.from_numpy(sampler.images[1])[None]), 1)[0].argmax(0)
    plain = pool_pseudo_labels(network, sampler.images, [1], confidence=0.0, mirror=False, **kwargs)
    np.testing.assert_array_equal(plain[1], expected.numpy())  # one whole-image pass at t = 0
    maps = {1: np.where(np.arange(36)[None, :] < 18, 1, IGNORE).repeat(40, 0).astype(np.uint8)}
    sampler.set_pseudo_labels(maps, IGNORE)
    images, hard, valid = sampler.pseudo_batch(6)
    assert images.shape == (6, 1, 16, 16) and hard.shape == valid.shape == (6, 16, 16)
    assert torch.all(hard[valid == 1] == 1) and torch.all(hard[valid == 0] == 0) and 0 < valid.mean() < 1
