"""The diffusion teacher (mask pathway + image pathway), the twin student, and the losses of both stages.

Follows shared/METHOD.md:
- mask pathway: input concat(noised all-background one-hot mask, image) and t -> class logits (x0 parameterisation);
- image pathway: input concat(noised image, soft mask in [-1, 1]) and t -> predicted noise (eps parameterisation);
- stage 1: cycle-consistency loss on noise-corrupted image reconstruction, backpropagated into both pathways;
- stage 2: cross pseudo supervision between teacher and student, K pseudo-label rounds (independent or chained),
  ground truth where it exists.
The "clean" mask that gets noised is always the all-background one-hot mask (one convention for training and
inference). Images enter as float in [0, 1] with channels first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
import torch.nn.functional as F

from .diffusion import DiffusionSchedule, from_signed, to_signed
from .consistency import masked_segmentation_loss
from .networks import TimeUNet


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to rebuild the networks of a checkpoint."""

    spatial_dims: int
    image_channels: int
    num_classes: int = 2
    base_channels: int = 16
    depth: int = 3
    timesteps: int = 1000


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft multi-class Dice loss: softmax over classes, per sample and class
    1 - (2 sum p g + smooth) / (sum p^2 + sum g^2 + smooth), averaged over batch and all classes (background too).

    ``target`` holds hard class indices, shape (B, *spatial).
    """
    probs = torch.softmax(logits.float(), dim=1)
    one_hot = F.one_hot(target.long(), probs.shape[1]).movedim(-1, 1).float()
    dims = tuple(range(2, probs.dim()))
    intersection = (probs * one_hot).sum(dims)
    denominator = (probs * probs).sum(dims) + (one_hot * one_hot).sum(dims)
    return (1 - (2 * intersection + smooth) / (denominator + smooth)).mean()




def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "dice") -> torch.Tensor:
    """The loss of every mask term: soft Dice (the paper's), or soft Dice + cross-entropy ("dice_ce", nnU-Net's
    pairing: the cross-entropy gives every pixel a gradient from the first step on)."""
    loss = soft_dice_loss(logits, target)
    if kind == "dice_ce":
        loss = loss + F.cross_entropy(logits.float(), target.long())
    return loss


def empty_mask(batch: int, num_classes: int, spatial: tuple[int, ...], device=None, dtype=torch.float32) -> torch.Tensor:
    """The all-background one-hot mask in [-1, 1]: +1 in the background channel, -1 elsewhere."""
    mask = torch.full((batch, num_classes, *spatial), -1.0, device=device, dtype=dtype)
    mask[:, 0] = 1.0
    return mask


class DiffusionTwin(nn.Module):
    """One of the twins of the method: two U-Nets, the mask pathway that segments and the image pathway that
    reconstructs the image from noise given a mask. The teacher uses both; the student is the same class and uses
    only its mask pathway (so a student can become a teacher, and a teacher's mask pathway is the model kept)."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        c, k = config.image_channels, config.num_classes
        self.mask_path = TimeUNet(config.spatial_dims, k + c, k, config.base_channels, config.depth)
        self.image_path = TimeUNet(config.spatial_dims, c + k, c, config.base_channels, config.depth)
        self.schedule = DiffusionSchedule(config.timesteps)

    @property
    def size_multiple(self) -> int:
        return self.mask_path.size_multiple

    def mask_logits(
        self,
        image01: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        noisy_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """f(x): class logits of the mask pathway for images in [0, 1].

        With t and noise given, the all-background mask is noised at t (training and stochastic draws). Without
        them: t = 0 and no noise, the deterministic single-step prediction. ``noisy_mask`` overrides the noised
        empty mask (multi-step sampling).
        """
        batch, spatial = image01.shape[0], tuple(image01.shape[2:])
        if t is None:
            t = torch.zeros(batch, dtype=torch.long, device=image01.device)
        if noisy_mask is None:
            clean = empty_mask(batch, self.config.num_classes, spatial, image01.device, image01.dtype)
            noisy_mask = clean if noise is None else self.schedule.q_sample(clean, t, noise)
        return self.mask_path(torch.cat([noisy_mask, to_signed(image01)], dim=1), t)

    def random_mask_logits(self, image01: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """f(x) with a fresh uniform t and Gaussian noise per sample (as in training)."""
        batch, spatial = image01.shape[0], tuple(image01.shape[2:])
        t = self.schedule.sample_timesteps(batch, generator, image01.device)
        noise = torch.randn((batch, self.config.num_classes, *spatial), generator=generator).to(image01)
        return self.mask_logits(image01, t, noise)

    def reconstruct(
        self, image01: torch.Tensor, soft_mask: torch.Tensor, generator: torch.Generator | None = None,
        t_fraction: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise the image at a fresh t (in the first ``t_fraction`` of the schedule), predict the noise conditioned
        on ``soft_mask`` (probabilities in [0, 1]).

        Returns (per-sample mean squared noise error, shape (B,), and the one-step reconstruction x0_hat in [0, 1]).
        """
        batch = image01.shape[0]
        t = self.schedule.sample_timesteps(batch, generator, image01.device, t_fraction)
        noise = torch.randn(image01.shape, generator=generator).to(image01)
        noisy_image = self.schedule.q_sample(to_signed(image01), t, noise)
        eps_hat = self.image_path(torch.cat([noisy_image, to_signed(soft_mask.to(noisy_image.dtype))], dim=1), t)
        loss = (eps_hat.float() - noise.float()).pow(2).flatten(1).mean(1)
        x0_hat = self.schedule.predict_x0_from_eps(noisy_image.float(), t, eps_hat.float()).clamp(-1, 1)
        return loss, from_signed(x0_hat)


def pretraining_loss(teacher: DiffusionTwin, images01: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stage 1 cycle consistency: the soft mask must carry whatever helps denoise the image.

    m_hat = softmax(MaskPath([m_t, x], t1)); eps_hat = ImagePath([x_t, 2 m_hat - 1], t2); L = mse(eps_hat, eps2).
    The gradient flows into both pathways (through m_hat into the mask pathway). No label is used.
    """
    soft_mask = torch.softmax(teacher.random_mask_logits(images01, generator).float(), dim=1)
    loss, _ = teacher.reconstruct(images01, soft_mask, generator)
    return loss.mean()


@dataclass
class UnlabelledTargets:
    """Targets of the unlabelled patches for each twin: (class map, valid-pixel mask) pairs, and the loss kind."""

    for_student: tuple[torch.Tensor, torch.Tensor]
    for_teacher: tuple[torch.Tensor, torch.Tensor]
    loss: str = "dice_ce"


@dataclass
class CoTrainingLosses:
    """``total`` to backpropagate, ``parts`` as floats for logging, and ``terms``: the unweighted loss tensors
    (each summed over rounds where it has one per round) that ``total`` is made of, for inspection and tests:
    sup_student, sup_teacher, round_dice_labelled, rec_labelled, and with an unlabelled batch cps_student,
    cps_teacher, align, rec_unlabelled. total = w (cps_student + cps_teacher + lambda_d/K (align + rec_unlabelled))
    + sup_student + sup_teacher + lambda_d/K (round_dice_labelled + rec_labelled).

    ``parts``: supervised and unsupervised (the two halves of total, rounds included: on the steps that run rounds
    they jump), total, cps, rec (the rounds' mean reconstruction loss), and the parts apart, as the Train panel's
    loss plot draws them: mask_labelled (the mean of sup_student and sup_teacher: one network's mask loss on the
    labelled patches, comparable with the supervised warm-up's teacher alone), mask_unlabelled (the mean of
    cps_student and cps_teacher) and, on steps with rounds, rounds (lambda_d/K times all round terms)."""

    total: torch.Tensor
    parts: dict[str, float]
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


def swap_in_pairs(batch: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Complementary CutMix within pairs of samples (0 with 1, 2 with 3, ...; an odd last one stays as it is):
    sample 2i keeps its content inside ``boxes[i]`` and takes sample 2i+1's outside it, and 2i+1 the other way
    round. ``boxes`` is a bool tensor (pairs, 1, *spatial) (``data.cutmix_boxes``): it broadcasts over the channels
    of images (B, C, *spatial) and loses its channel axis for class maps (B, *spatial). The swap is its own inverse: applied to predictions made on
    the mixed batch it gives back, pixel for pixel, predictions aligned with the unmixed one."""
    pairs = boxes.shape[0]
    if pairs == 0:
        return batch
    first, second = batch[0:2 * pairs:2], batch[1:2 * pairs:2]
    box = boxes if boxes.dim() == first.dim() else boxes.reshape(first.shape[:1] + boxes.shape[2:])
    mixed = torch.stack([torch.where(box, first, second), torch.where(box, second, first)], dim=1)
    return torch.cat([mixed.flatten(0, 1), batch[2 * pairs:]])


def cotraining_loss(
    teacher: DiffusionTwin,
    student: DiffusionTwin,
    labelled: torch.Tensor,
    labels: torch.Tensor,
    unlabelled: torch.Tensor | None,
    unlabelled_weight: float,
    rounds: int = 3,
    chained: bool = False,
    lambda_d: float = 1.0,
    generator: torch.Generator | None = None,
    student_view: torch.Tensor | None = None,
    loss: str = "dice",
    mix_boxes: torch.Tensor | None = None,
    targets: UnlabelledTargets | None = None,
    round_t_fraction: float = 1.0,
) -> CoTrainingLosses:
    """Stage 2 loss L = lambda_u L_u + L_l of shared/METHOD.md for one labelled and one unlabelled batch.

    Labelled and unlabelled patches go through each network as one batch. Stop-gradients: the hard targets of the
    cross pseudo supervision, the teacher mask that conditions the image pathway, and the reconstruction fed back
    to the teacher's mask pathway. ``student_view``: the same patches (labelled then unlabelled) as the student
    sees them, e.g. with other intensity perturbations (default: the teacher's view), so that each twin learns
    to reproduce the other's mask under a perturbation it did not see. ``mix_boxes`` (see ``swap_in_pairs``): the
    teacher sees the unlabelled patches CutMixed in pairs (a strong view) and learns the student's prediction on
    the unmixed patches (the weak view), mixed the same way; the student learns the teacher's, unmixed.
    ``round_t_fraction``: the pseudo-label rounds noise the images at t in the first fraction of the schedule only
    (1: any t, the paper's; small: reconstructions close to the image rather than to noise).
    ``targets`` (weak-to-strong, ``consistency``): the unlabelled term takes its targets from there (each twin's
    class map and confident pixels, made from the weak view and aligned with the unlabelled patches as given)
    instead of the other twin's argmax on this step's noised forward; the loss then covers the confident pixels
    only (``consistency.masked_segmentation_loss``).
    """
    n_l = labelled.shape[0]
    mask_loss = lambda logits, target: segmentation_loss(logits, target, loss)  # noqa: E731
    mix = (lambda x: x) if mix_boxes is None else (lambda x: swap_in_pairs(x, mix_boxes))  # noqa: E731
    if unlabelled is not None and mix_boxes is not None:
        if student_view is None:
            student_view = torch.cat([labelled, unlabelled], dim=0)
        unlabelled = mix(unlabelled)
    images = labelled if unlabelled is None else torch.cat([labelled, unlabelled], dim=0)
    student_logits = student.random_mask_logits(images if student_view is None else student_view, generator)
    teacher_logits = teacher.random_mask_logits(images, generator)

    parts: dict[str, float] = {}
    terms: dict[str, torch.Tensor] = {
        "sup_student": mask_loss(student_logits[:n_l], labels),
        "sup_teacher": mask_loss(teacher_logits[:n_l], labels),
    }
    sup = terms["sup_student"] + terms["sup_teacher"]
    parts["mask_labelled"] = float(sup.detach()) / 2
    unsup = torch.zeros((), device=images.device)
    if unlabelled is not None and targets is not None:

        def unlabelled_loss(logits, target):
            return masked_segmentation_loss(logits, target[0], target[1], targets.loss)

        student_hard = targets.for_teacher  # what the teacher learns: the student's target (and its valid pixels)
        terms["cps_student"] = unlabelled_loss(student_logits[n_l:], targets.for_student)
        terms["cps_teacher"] = unlabelled_loss(teacher_logits[n_l:], targets.for_teacher)
        cps = terms["cps_student"] + terms["cps_teacher"]
        unsup = unsup + cps
        parts["cps"] = float(cps.detach())
        parts["mask_unlabelled"] = parts["cps"] / 2
        parts["confident"] = float(targets.for_student[1].mean())
    elif unlabelled is not None:
        student_hard = mix(student_logits[n_l:].argmax(1).detach())  # aligned with the teacher's view
        teacher_hard = mix(teacher_logits[n_l:].argmax(1).detach())  # aligned with the student's view
        terms["cps_student"] = mask_loss(student_logits[n_l:], teacher_hard)
        terms["cps_teacher"] = mask_loss(teacher_logits[n_l:], student_hard)
        cps = terms["cps_student"] + terms["cps_teacher"]
        unsup = unsup + cps
        parts["cps"] = float(cps.detach())
        parts["mask_unlabelled"] = parts["cps"] / 2

    conditioning = torch.softmax(teacher_logits.detach().float(), dim=1)
    round_sup = torch.zeros((), device=images.device)
    round_unsup = torch.zeros((), device=images.device)
    zero = torch.zeros((), device=images.device)
    terms.update(round_dice_labelled=zero, rec_labelled=zero)
    if unlabelled is not None:
        terms.update(align=zero, rec_unlabelled=zero)
    for _ in range(rounds):
        rec_loss, reconstruction = teacher.reconstruct(images, conditioning, generator, round_t_fraction)
        round_logits = teacher.random_mask_logits(reconstruction.detach().to(images.dtype), generator)
        round_dice, round_rec = mask_loss(round_logits[:n_l], labels), rec_loss[:n_l].mean()
        terms["round_dice_labelled"] = terms["round_dice_labelled"] + round_dice
        terms["rec_labelled"] = terms["rec_labelled"] + round_rec
        round_sup = round_sup + round_dice + round_rec
        if unlabelled is not None:
            align = (unlabelled_loss(round_logits[n_l:], student_hard) if targets is not None
                     else mask_loss(round_logits[n_l:], student_hard))
            round_rec = rec_loss[n_l:].mean()
            terms["align"] = terms["align"] + align
            terms["rec_unlabelled"] = terms["rec_unlabelled"] + round_rec
            round_unsup = round_unsup + align + round_rec
        parts["rec"] = parts.get("rec", 0.0) + float(rec_loss.detach().mean()) / rounds
        if chained:
            conditioning = torch.softmax(round_logits.detach().float(), dim=1)
    if rounds:
        sup = sup + lambda_d / rounds * round_sup
        unsup = unsup + lambda_d / rounds * round_unsup
        parts["rounds"] = float((round_sup + round_unsup).detach()) * lambda_d / rounds
    total = unlabelled_weight * unsup + sup
    parts.update(supervised=float(sup.detach()), unsupervised=float(unsup.detach()), total=float(total.detach()))
    return CoTrainingLosses(total, parts, terms)


def supervised_loss(network: DiffusionTwin, labelled: torch.Tensor, labels: torch.Tensor, generator=None,
                    loss: str = "dice") -> torch.Tensor:
    """Labels-only baseline: the same mask pathway trained with the same mask loss on ground truth alone."""
    return segmentation_loss(network.random_mask_logits(labelled, generator), labels, loss)
