"""Tests for napari_diffseg.core.method.networks and core.method.teacher: shapes of both pathways (2D grey, 2D RGB, 3D,
multi-class), the soft Dice loss, the stage 1 cycle gradient, and the stop-gradients and pseudo-label rounds of
the stage 2 co-training loss (shared/METHOD.md)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_diffseg.core.method.networks import TimeUNet, count_parameters
from napari_diffseg.core.data.training_set import cutmix_boxes
from napari_diffseg.core.method.teacher import (DiffusionTwin, NetworkConfig, cotraining_loss, empty_mask,
                                         pretraining_loss, soft_dice_loss, supervised_loss, swap_in_pairs)


def tiny_config(spatial_dims=2, channels=1, num_classes=2, base=4) -> NetworkConfig:
    return NetworkConfig(spatial_dims=spatial_dims, image_channels=channels, num_classes=num_classes,
                         base_channels=base, depth=2)


def gradients(loss: torch.Tensor, module: torch.nn.Module) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(loss, list(module.parameters()), retain_graph=True, allow_unused=True))


def has_gradient(grads) -> bool:
    return any(g is not None and float(g.abs().sum()) > 0 for g in grads)


def no_gradient(grads) -> bool:
    return all(g is None or float(g.abs().sum()) == 0 for g in grads)


# ----- networks and pathway shapes -----

@pytest.mark.parametrize("spatial_dims, shape", [(2, (32, 48)), (3, (16, 16, 24))])
def test_time_unet_shape(spatial_dims, shape):
    net = TimeUNet(spatial_dims, in_channels=3, out_channels=5, base_channels=4, depth=2)
    assert net.size_multiple == 4
    out = net(torch.rand(2, 3, *shape), torch.tensor([0, 999]))
    assert out.shape == (2, 5, *shape)
    assert count_parameters(net) > 0


def test_time_unet_depends_on_timestep():
    torch.manual_seed(0)
    net = TimeUNet(2, 2, 2, base_channels=4, depth=2).eval()
    x = torch.rand(1, 2, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(net(x, torch.tensor([0])), net(x, torch.tensor([800])))


def test_time_unet_rejects_other_dimensionality():
    with pytest.raises(ValueError):
        TimeUNet(4, 1, 2)


@pytest.mark.parametrize(
    "spatial_dims, channels, num_classes, shape",
    [(2, 1, 2, (32, 32)), (2, 3, 2, (32, 40)), (3, 1, 2, (16, 16, 16)), (2, 1, 3, (32, 32)), (3, 3, 3, (8, 16, 16))],
    ids=["2d-grey", "2d-rgb", "3d", "2d-3class", "3d-rgb-3class"],
)
def test_teacher_pathway_shapes(spatial_dims, channels, num_classes, shape):
    torch.manual_seed(0)
    teacher = DiffusionTwin(tiny_config(spatial_dims, channels, num_classes))
    images = torch.rand(2, channels, *shape)
    generator = torch.Generator().manual_seed(0)
    assert teacher.mask_logits(images).shape == (2, num_classes, *shape)
    assert teacher.random_mask_logits(images, generator).shape == (2, num_classes, *shape)
    soft_mask = torch.softmax(teacher.mask_logits(images), dim=1)
    eps = teacher.image_path(torch.cat([images * 2 - 1, soft_mask * 2 - 1], dim=1), torch.tensor([3, 400]))
    assert eps.shape == (2, channels, *shape)
    loss, reconstruction = teacher.reconstruct(images, soft_mask, generator)
    assert loss.shape == (2,) and bool((loss >= 0).all())
    assert reconstruction.shape == images.shape
    assert float(reconstruction.detach().min()) >= 0.0 and float(reconstruction.detach().max()) <= 1.0


def test_empty_mask_is_all_background_one_hot_in_signed_range():
    mask = empty_mask(2, 3, (4, 5))
    assert mask.shape == (2, 3, 4, 5)
    assert bool((mask[:, 0] == 1).all()) and bool((mask[:, 1:] == -1).all())


def test_deterministic_mask_logits_use_clean_empty_mask_at_t0():
    torch.manual_seed(0)
    teacher = DiffusionTwin(tiny_config()).eval()
    images = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        expected = teacher.mask_path(torch.cat([empty_mask(2, 2, (16, 16)), images * 2 - 1], 1), torch.zeros(2).long())
        torch.testing.assert_close(teacher.mask_logits(images), expected)
        # a draw with noise at a large t differs from the deterministic pass
        noisy = teacher.mask_logits(images, torch.tensor([900, 900]), torch.randn(2, 2, 16, 16))
        assert not torch.allclose(noisy, expected)


# ----- soft Dice -----

def test_soft_dice_perfect_wrong_and_hand_computed():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 1:3, 1:3] = 1
    one_hot = F.one_hot(target, 2).movedim(-1, 1).float()
    assert soft_dice_loss(one_hot * 50 - 25, target).item() < 1e-6
    assert soft_dice_loss(25 - one_hot * 50, target).item() > 0.9
    # zero logits: p = 0.5 everywhere; class 1: (2 * 0.5 * 4 + 1) / (16 * 0.25 + 4 + 1) = 5 / 9;
    # class 0: (2 * 0.5 * 12 + 1) / (4 + 12 + 1) = 13 / 17
    expected = 1 - (5 / 9 + 13 / 17) / 2
    assert soft_dice_loss(torch.zeros(1, 2, 4, 4), target).item() == pytest.approx(expected, rel=1e-6)
    # an absent class predicted absent costs nothing (smoothing term)
    background = torch.zeros(1, 4, 4, dtype=torch.long)
    confident = torch.stack([torch.full((4, 4), 30.0), torch.full((4, 4), -30.0)])[None]
    assert soft_dice_loss(confident, background).item() < 1e-6


def test_soft_dice_multi_class_averages_over_classes():
    target = torch.tensor([[[0, 1], [2, 2]]])
    logits = F.one_hot(target, 3).movedim(-1, 1).float() * 40 - 20
    assert soft_dice_loss(logits, target).item() < 1e-6
    logits[:, :, 1, 1] = torch.tensor([20.0, -20.0, -20.0])  # one pixel of class 2 called background
    # per class 1 - (2 I + 1) / (sum p^2 + sum g^2 + 1): class 0: I = 1, p^2 = 2, g^2 = 1 -> 1/4; class 1: 0;
    # class 2: I = 1, p^2 = 1, g^2 = 2 -> 1/4
    expected = ((1 - 3 / 4) + 0 + (1 - 3 / 4)) / 3
    assert soft_dice_loss(logits, target).item() == pytest.approx(expected, abs=1e-6)


# ----- stage 1 -----

def test_pretraining_gradient_reaches_both_pathways():
    torch.manual_seed(0)
    teacher = DiffusionTwin(tiny_config()).train()
    images = torch.rand(2, 1, 32, 32)
    loss = pretraining_loss(teacher, images, torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    mask_grads = gradients(loss, teacher.mask_path)
    image_grads = gradients(loss, teacher.image_path)
    # the cycle loss is the only signal, and it must reach the mask pathway through the soft mask
    assert all(g is not None for g in mask_grads) and has_gradient(mask_grads)
    names = [name for name, _ in teacher.mask_path.named_parameters()]
    assert has_gradient([mask_grads[names.index("head.weight")]])
    assert has_gradient([mask_grads[names.index("encoder.0.0.weight")]])
    assert all(g is not None for g in image_grads) and has_gradient(image_grads)


def test_pretraining_is_reproducible_with_a_generator():
    torch.manual_seed(0)
    teacher = DiffusionTwin(tiny_config()).eval()
    images = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        a = pretraining_loss(teacher, images, torch.Generator().manual_seed(5))
        b = pretraining_loss(teacher, images, torch.Generator().manual_seed(5))
        c = pretraining_loss(teacher, images, torch.Generator().manual_seed(6))
    assert a.item() == b.item() and a.item() != c.item()


def test_supervised_loss_trains_only_the_mask_pathway():
    torch.manual_seed(0)
    network = DiffusionTwin(tiny_config())
    loss = supervised_loss(network, torch.rand(2, 1, 16, 16), torch.randint(0, 2, (2, 16, 16)))
    assert has_gradient(gradients(loss, network.mask_path))
    assert no_gradient(gradients(loss, network.image_path))


# ----- stage 2 -----

@pytest.fixture
def twins():
    torch.manual_seed(0)
    config = tiny_config(num_classes=3)
    teacher, student = DiffusionTwin(config).train(), DiffusionTwin(config).train()
    generator = torch.Generator().manual_seed(1)
    labelled = torch.rand((2, 1, 32, 32), generator=generator)
    labels = torch.randint(0, 3, (2, 32, 32), generator=generator)
    unlabelled = torch.rand((2, 1, 32, 32), generator=generator)
    return teacher, student, labelled, labels, unlabelled


@pytest.mark.parametrize("with_unlabelled", [True, False], ids=["mixed", "labelled-only"])
@pytest.mark.parametrize("chained", [False, True], ids=["independent", "chained"])
def test_cotraining_terms_make_up_the_total(twins, with_unlabelled, chained):
    teacher, student, labelled, labels, unlabelled = twins
    weight, lambda_d, rounds = 0.7, 1.5, 2
    losses = cotraining_loss(teacher, student, labelled, labels, unlabelled if with_unlabelled else None, weight,
                             rounds=rounds, chained=chained, lambda_d=lambda_d,
                             generator=torch.Generator().manual_seed(0))
    terms = losses.terms
    sup = terms["sup_student"] + terms["sup_teacher"] + lambda_d / rounds * (
        terms["round_dice_labelled"] + terms["rec_labelled"])
    expected = sup
    if with_unlabelled:
        unsup = terms["cps_student"] + terms["cps_teacher"] + lambda_d / rounds * (
            terms["align"] + terms["rec_unlabelled"])
        expected = weight * unsup + sup
        assert losses.parts["cps"] == pytest.approx(float((terms["cps_student"] + terms["cps_teacher"]).detach()), rel=1e-6)
    else:
        assert "cps_student" not in terms and "align" not in terms
    torch.testing.assert_close(losses.total, expected)
    assert losses.parts["total"] == pytest.approx(float(losses.total.detach()), rel=1e-6)
    # the parts apart, as the loss plot draws them: one network's mask losses, and the rounds' terms on their own
    round_terms = [terms[name] for name in ("round_dice_labelled", "rec_labelled", "align", "rec_unlabelled")
                   if name in terms]
    assert losses.parts["rounds"] == pytest.approx(lambda_d / rounds * float(sum(round_terms).detach()), rel=1e-5)
    assert losses.parts["mask_labelled"] == pytest.approx(
        float((terms["sup_student"] + terms["sup_teacher"]).detach()) / 2, rel=1e-6)
    if with_unlabelled:
        assert losses.parts["mask_unlabelled"] == pytest.approx(losses.parts["cps"] / 2, rel=1e-6)
    assert all(torch.isfinite(t) for t in terms.values())
    assert float(terms["rec_labelled"].detach()) > 0 and float(terms["round_dice_labelled"].detach()) > 0


@pytest.mark.parametrize("chained", [False, True], ids=["independent", "chained"])
@pytest.mark.parametrize("with_unlabelled", [True, False], ids=["mixed", "labelled-only"])
def test_cotraining_stop_gradients(twins, chained, with_unlabelled):
    teacher, student, labelled, labels, unlabelled = twins
    losses = cotraining_loss(teacher, student, labelled, labels, unlabelled if with_unlabelled else None, 1.0,
                             rounds=2, chained=chained, lambda_d=10.0, generator=torch.Generator().manual_seed(0))
    terms = losses.terms
    rec = terms["rec_labelled"] + terms.get("rec_unlabelled", 0.0)
    round_dice = terms["round_dice_labelled"] + terms.get("align", 0.0)

    # (b) the teacher mask conditioning the image pathway is detached: L_rec trains the image pathway only
    assert no_gradient(gradients(rec, teacher.mask_path))
    assert has_gradient(gradients(rec, teacher.image_path))
    assert no_gradient(gradients(rec, student))
    # (c) the reconstruction fed back to the mask pathway is detached: round Dice terms train the mask pathway only
    assert no_gradient(gradients(round_dice, teacher.image_path))
    assert has_gradient(gradients(round_dice, teacher.mask_path))
    assert no_gradient(gradients(round_dice, student))  # align uses the student's hard labels as a target only
    # supervised terms: each twin learns from its own logits
    assert has_gradient(gradients(terms["sup_student"], student.mask_path))
    assert no_gradient(gradients(terms["sup_student"], teacher))
    assert has_gradient(gradients(terms["sup_teacher"], teacher.mask_path))
    assert no_gradient(gradients(terms["sup_teacher"], student))
    assert no_gradient(gradients(terms["sup_teacher"], teacher.image_path))
    # the student's image pathway is never used
    assert no_gradient(gradients(losses.total, student.image_path))
    if with_unlabelled:
        # (a) cross pseudo supervision: the hard targets carry no gradient to the network that made them
        assert no_gradient(gradients(terms["cps_student"], teacher))
        assert no_gradient(gradients(terms["cps_teacher"], student))
        # (d) the student learns from CPS, and so does the teacher (it keeps improving)
        assert has_gradient(gradients(terms["cps_student"], student.mask_path))
        assert has_gradient(gradients(terms["cps_teacher"], teacher.mask_path))


def test_cotraining_total_backward_reaches_all_trained_parts(twins):
    teacher, student, labelled, labels, unlabelled = twins
    losses = cotraining_loss(teacher, student, labelled, labels, unlabelled, 0.5, rounds=1,
                             generator=torch.Generator().manual_seed(0))
    losses.total.backward()
    for module in (teacher.mask_path, teacher.image_path, student.mask_path):
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in module.parameters())
    assert all(p.grad is None for p in student.image_path.parameters())


def test_unlabelled_weight_zero_leaves_only_the_labelled_loss(twins):
    teacher, student, labelled, labels, unlabelled = twins
    with_u = cotraining_loss(teacher, student, labelled, labels, unlabelled, 0.0, rounds=1,
                             generator=torch.Generator().manual_seed(0))
    sup_only = with_u.terms["sup_student"] + with_u.terms["sup_teacher"] + (
        with_u.terms["round_dice_labelled"] + with_u.terms["rec_labelled"])
    torch.testing.assert_close(with_u.total, sup_only)


class _Spy:
    """Records the soft masks given to teacher.reconstruct and the teacher's random_mask_logits outputs."""

    def __init__(self, teacher: DiffusionTwin, monkeypatch):
        self.soft_masks: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []
        reconstruct, random_mask_logits = teacher.reconstruct, teacher.random_mask_logits

        def spy_reconstruct(image01, soft_mask, generator=None, t_fraction=1.0):
            self.soft_masks.append(soft_mask.detach().clone())
            return reconstruct(image01, soft_mask, generator, t_fraction)

        def spy_logits(image01, generator=None):
            out = random_mask_logits(image01, generator)
            self.logits.append(out.detach().clone())
            return out

        monkeypatch.setattr(teacher, "reconstruct", spy_reconstruct)
        monkeypatch.setattr(teacher, "random_mask_logits", spy_logits)


def test_independent_rounds_all_start_from_the_initial_teacher_mask(twins, monkeypatch):
    teacher, student, labelled, labels, unlabelled = twins
    spy = _Spy(teacher, monkeypatch)
    cotraining_loss(teacher, student, labelled, labels, unlabelled, 1.0, rounds=3, chained=False,
                    generator=torch.Generator().manual_seed(0))
    assert len(spy.soft_masks) == 3 and len(spy.logits) == 4  # initial f_T, then one per round
    initial = torch.softmax(spy.logits[0].float(), dim=1)
    for soft_mask in spy.soft_masks:
        torch.testing.assert_close(soft_mask, initial)
    # the rounds do produce different masks (fresh t and noise), they are just not fed forward
    assert not torch.allclose(spy.logits[1], spy.logits[2])


def test_chained_rounds_feed_each_round_mask_to_the_next(twins, monkeypatch):
    teacher, student, labelled, labels, unlabelled = twins
    spy = _Spy(teacher, monkeypatch)
    cotraining_loss(teacher, student, labelled, labels, unlabelled, 1.0, rounds=3, chained=True,
                    generator=torch.Generator().manual_seed(0))
    assert len(spy.soft_masks) == 3 and len(spy.logits) == 4
    torch.testing.assert_close(spy.soft_masks[0], torch.softmax(spy.logits[0].float(), dim=1))
    for k in (1, 2):
        torch.testing.assert_close(spy.soft_masks[k], torch.softmax(spy.logits[k].float(), dim=1))
        assert not torch.allclose(spy.soft_masks[k], spy.soft_masks[0])


def test_zero_rounds(twins, monkeypatch):
    teacher, student, labelled, labels, unlabelled = twins
    spy = _Spy(teacher, monkeypatch)
    losses = cotraining_loss(teacher, student, labelled, labels, unlabelled, 0.5, rounds=0,
                             generator=torch.Generator().manual_seed(0))
    assert spy.soft_masks == [] and len(spy.logits) == 1
    terms = losses.terms
    assert float(terms["rec_labelled"]) == 0 and float(terms["align"]) == 0
    expected = 0.5 * (terms["cps_student"] + terms["cps_teacher"]) + terms["sup_student"] + terms["sup_teacher"]
    torch.testing.assert_close(losses.total, expected)
    losses.total.backward()
    assert all(p.grad is None for p in teacher.image_path.parameters())
    assert "rec" not in losses.parts and "rounds" not in losses.parts


def test_rounds_at_small_t_reconstruct_close_to_the_image(twins):
    """round_t_fraction: the round's one-step reconstruction from a small t stays near the image (a barely noised
    image), whereas any t (the paper's) gives reconstructions far from it for an untrained image pathway."""
    teacher, _, labelled, _, _ = twins
    soft = torch.full((labelled.shape[0], 3, *labelled.shape[2:]), 1 / 3)
    errors = {}
    for fraction in (1.0, 0.02):
        _, reconstruction = teacher.reconstruct(labelled, soft, torch.Generator().manual_seed(0), fraction)
        errors[fraction] = float((reconstruction - labelled).abs().mean())
    assert errors[0.02] < 0.5 * errors[1.0], errors


# ----- CutMix in cross pseudo supervision (MethodSettings.cutmix) -----

def test_swap_in_pairs_mixes_each_pair_and_is_its_own_inverse():
    batch = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 2, 4, 6).clone()  # sample i holds the value i
    boxes = cutmix_boxes(2, (4, 6), torch.Generator().manual_seed(3))
    mixed = swap_in_pairs(batch, boxes)
    for pair, (a, b) in enumerate([(0, 1), (2, 3)]):
        box = boxes[pair, 0]
        assert 0 < int(box.sum()) < box.numel()
        assert torch.equal(mixed[a][:, box], batch[a][:, box]) and torch.equal(mixed[a][:, ~box], batch[b][:, ~box])
        assert torch.equal(mixed[b][:, box], batch[b][:, box]) and torch.equal(mixed[b][:, ~box], batch[a][:, ~box])
    assert torch.equal(mixed[4], batch[4])  # an odd last sample has no partner
    assert torch.equal(swap_in_pairs(mixed, boxes), batch)
    class_maps = batch[:, 0].long()  # (B, *spatial): the hard targets
    assert torch.equal(swap_in_pairs(class_maps, boxes), mixed[:, 0].long())


class _PixelTwin:
    """A mask pathway whose logits at a pixel depend on that pixel's value only: (-x + 0.5, x - 0.5)."""

    def random_mask_logits(self, images, generator=None):
        x = images[:, :1]
        return torch.cat([0.5 - x, x - 0.5], dim=1)


def test_cutmix_targets_follow_the_pixels_they_were_predicted_on():
    generator = torch.Generator().manual_seed(0)
    labelled, labels = torch.rand(2, 1, 8, 8, generator=generator), torch.zeros(2, 8, 8, dtype=torch.long)
    unlabelled = torch.rand(4, 1, 8, 8, generator=generator)
    boxes = cutmix_boxes(2, (8, 8), generator)
    losses = cotraining_loss(_PixelTwin(), _PixelTwin(), labelled, labels, unlabelled, 1.0, rounds=0,
                             mix_boxes=boxes)
    mixed = swap_in_pairs(unlabelled, boxes)
    teacher_logits = _PixelTwin().random_mask_logits(mixed)
    # the teacher (strong view: mixed patches) learns the student's prediction on the unmixed patches, mixed the same
    # way; with twins that predict each pixel from its value, that is exactly its own prediction
    torch.testing.assert_close(losses.terms["cps_teacher"], soft_dice_loss(teacher_logits, teacher_logits.argmax(1)))
    misaligned = soft_dice_loss(teacher_logits, _PixelTwin().random_mask_logits(unlabelled).argmax(1))
    assert float((losses.terms["cps_teacher"] - misaligned).abs()) > 1e-3
    student_logits = _PixelTwin().random_mask_logits(unlabelled)
    torch.testing.assert_close(losses.terms["cps_student"], soft_dice_loss(student_logits, student_logits.argmax(1)))
