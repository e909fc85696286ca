"""Weak-to-strong targets for the unlabelled term of co-training: a running average (EMA) of each twin's mask
pathway, its deterministic t = 0 prediction on the weak view of an unlabelled patch as the target, a confidence
filter, the strong view (stronger intensity/colour perturbation and blur) the loss is taken on, and the masked
loss; BCP copy-paste. Options of co-training (FixMatch / UniMatch / Mean Teacher / BCP ideas inside the paper's
teacher-student frame), measured against the default in docs/how-it-works.md and benchmarks/quality/ABLATIONS.md.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..data.training_set import augment_intensity


class WeightAverage:
    """An exponential moving average of a twin's mask pathway (Mean Teacher): parameters averaged with ``decay``
    (lower while few steps have been averaged: min(decay, (1 + n) / (10 + n))), BatchNorm statistics copied.
    Used in eval mode to make targets; it is never trained and never saved (a resumed run restarts it from the
    live weights)."""

    def __init__(self, twin: nn.Module, decay: float):
        self.decay = decay
        self.twin = copy.deepcopy(twin).eval()
        for parameter in self.twin.parameters():
            parameter.requires_grad_(False)
        self.updates = 0

    def reset(self, twin: nn.Module) -> None:
        """Start again from ``twin``'s current weights (e.g. when the student starts as the teacher's copy)."""
        self.twin.mask_path.load_state_dict(twin.mask_path.state_dict())
        self.updates = 0

    @torch.no_grad()
    def update(self, twin: nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averaged, live = self.twin.mask_path, twin.mask_path
        for mine, theirs in zip(averaged.parameters(), live.parameters()):
            mine.mul_(decay).add_(theirs.detach().to(mine.dtype), alpha=1 - decay)
        for mine, theirs in zip(averaged.buffers(), live.buffers()):
            mine.copy_(theirs)
        self.updates += 1

    @torch.no_grad()
    def probabilities(self, images01: torch.Tensor) -> torch.Tensor:
        """Class probabilities at t = 0 without mask noise (what prediction and review use), eval mode."""
        self.twin.eval()
        return torch.softmax(self.twin.mask_logits(images01).float(), dim=1)


def confident_targets(probabilities: torch.Tensor, confidence: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(hard class map, float mask of the pixels whose top probability reaches ``confidence``; all ones at 0)."""
    top, hard = probabilities.max(dim=1)
    valid = (top >= confidence).float() if confidence > 0 else torch.ones_like(top)
    return hard, valid


def masked_segmentation_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                             kind: str = "dice_ce") -> torch.Tensor:
    """The mask loss restricted to the ``valid`` pixels: soft Dice over those pixels only and, for "dice_ce",
    cross-entropy summed over them and divided by all pixels (as UniMatch does, so a batch with few confident
    pixels pulls less). ``valid`` all ones gives back ``teacher.segmentation_loss``."""
    probs = torch.softmax(logits.float(), dim=1)
    one_hot = F.one_hot(target.long(), probs.shape[1]).movedim(-1, 1).float()
    weight = valid.unsqueeze(1)
    dims = tuple(range(2, probs.dim()))
    intersection = (probs * one_hot * weight).sum(dims)
    denominator = (probs * probs * weight).sum(dims) + (one_hot * weight).sum(dims)
    loss = (1 - (2 * intersection + 1.0) / (denominator + 1.0)).mean()
    if kind == "dice_ce":
        loss = loss + (F.cross_entropy(logits.float(), target.long(), reduction="none") * valid).mean()
    return loss


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(round(2 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, *spatial) over every spatial axis (reflect-padded)."""
    if sigma <= 0:
        return images
    kernel = _gaussian_kernel(sigma).to(images.device, images.dtype)
    spatial = images.dim() - 2
    channels = images.shape[1]
    out = images
    conv = F.conv2d if spatial == 2 else F.conv3d
    for axis in range(spatial):
        shape = [1] * spatial
        shape[axis] = kernel.numel()
        weight = kernel.view(1, 1, *shape).repeat(channels, 1, *([1] * spatial))
        pad = [0, 0] * spatial
        radius = kernel.numel() // 2
        pad[2 * (spatial - 1 - axis)] = pad[2 * (spatial - 1 - axis) + 1] = radius
        mode = "reflect" if min(out.shape[2:]) > radius else "replicate"
        out = conv(F.pad(out, pad, mode=mode), weight, groups=channels)
    return out


def strong_view(images: torch.Tensor, generator: torch.Generator | None, strength: float) -> torch.Tensor:
    """The strong view of a batch in [0, 1]: ``augment_intensity`` at ``strength`` and, for half of the samples,
    a Gaussian blur of sigma 0.5-1.5 pixels. Geometry is untouched (targets stay aligned)."""
    if strength <= 0:
        return images
    out = augment_intensity(images, generator, strength)
    blurred = []
    for index in range(out.shape[0]):
        sample = out[index:index + 1]
        if float(torch.rand((), generator=generator)) < 0.5:
            sigma = 0.5 + float(torch.rand((), generator=generator))
            sample = blur(sample, sigma)
        blurred.append(sample)
    return torch.cat(blurred).clamp(0, 1)



def paste_labelled(views: list[torch.Tensor], labelled_views: list[torch.Tensor], labels: torch.Tensor,
                   targets: tuple[tuple[torch.Tensor, torch.Tensor], ...], boxes: torch.Tensor):
    """Copy-paste between labelled and unlabelled patches (BCP): inside ``boxes[i]`` (bool (U, 1, *spatial)),
    unlabelled patch i of each view shows labelled patch i mod L of the matching labelled view, and its target is
    that patch's ground truth (every pixel valid); outside, the unlabelled patch and its pseudo-label stay.
    Returns (views, targets) with the pasted content."""
    count = views[0].shape[0]
    source = torch.arange(count, device=labels.device) % labels.shape[0]
    box = boxes.to(views[0].device)
    pasted = [torch.where(box, labelled[source], view) for view, labelled in zip(views, labelled_views)]
    inside = box[:, 0]
    truth = labels[source].to(inside.device)
    new_targets = tuple((torch.where(inside, truth, hard), torch.where(inside, torch.ones_like(valid), valid))
                        for hard, valid in targets)
    return pasted, new_targets
