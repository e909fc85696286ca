"""The collection's appearance on the labelled patches: Fourier appearance transfer from unlabelled patches.

A labelled patch keeps the phase of its Fourier transform (where its structures are, so its ground truth stays
right) and takes part of the low-frequency amplitude (illumination, stain, contrast) of an unlabelled patch of the
pool: Fourier domain adaptation (FDA, Yang & Soatto, CVPR 2020) with the amplitude interpolated by a random amount
rather than swapped (FedDG's continuous frequency-space interpolation, Liu et al., CVPR 2021). The labelled images
then show the appearances of the whole collection from the first step, with true labels: a use of the unlabelled
images that cannot confirm a wrong pseudo-label, for two FFTs per patch.
"""

from __future__ import annotations

import torch

LOW_FREQUENCY_FRACTION = 0.05  # FDA's beta: the half-width of the swapped low-frequency box, per axis, as a fraction


def low_frequency_mask(shape: tuple[int, ...], fraction: float = LOW_FREQUENCY_FRACTION) -> torch.Tensor:
    """Bool mask over an unshifted FFT of ``shape`` (spatial axes): frequencies within ``fraction`` of each axis's
    length of zero on every axis (at least the zero frequency and its neighbours; ``fraction`` 0: the zero frequency
    alone, i.e. each channel's mean: colour and brightness, no structure)."""
    mask = torch.ones(shape, dtype=torch.bool)
    for axis, size in enumerate(shape):
        half_width = max(1, int(fraction * size)) if fraction > 0 else 0
        index = torch.fft.fftfreq(size) * size  # 0, 1, ..., -1
        near = index.abs() <= half_width
        mask = mask & near.view([-1 if a == axis else 1 for a in range(len(shape))])
    return mask


def transfer_appearance(images: torch.Tensor, references: torch.Tensor, generator: torch.Generator | None = None,
                        probability: float = 0.5, fraction: float = LOW_FREQUENCY_FRACTION) -> torch.Tensor:
    """``images`` (B, C, *spatial) in [0, 1], each, with ``probability``, given the low-frequency amplitude of
    ``references`` (same shape: unlabelled patches) mixed in by a random amount in [0, 1]; phase and geometry are
    untouched, so masks stay aligned. The others are returned unchanged."""
    if probability <= 0 or references.shape[0] == 0:
        return images
    if references.shape != images.shape:
        raise ValueError(f"references {tuple(references.shape)} must have the images' shape {tuple(images.shape)}")
    batch = images.shape[0]
    dims = tuple(range(2, images.dim()))
    chosen = torch.rand(batch, generator=generator) < probability
    amount = torch.rand(batch, generator=generator) * chosen
    if not bool(chosen.any()):
        return images
    x, reference = images.float(), references.to(images.device).float()
    spectrum = torch.fft.fftn(x, dim=dims)
    amplitude, phase = spectrum.abs(), spectrum.angle()
    reference_amplitude = torch.fft.fftn(reference, dim=dims).abs()
    mask = low_frequency_mask(tuple(images.shape[2:]), fraction).to(images.device)
    weight = amount.to(images.device).view(batch, *([1] * (images.dim() - 1))) * mask
    mixed = amplitude + weight * (reference_amplitude - amplitude)
    out = torch.fft.ifftn(torch.polar(mixed, phase), dim=dims).real.clamp(0, 1)
    return torch.where(chosen.to(images.device).view(batch, *([1] * (images.dim() - 1))), out, x).to(images.dtype)
