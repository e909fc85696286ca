"""Tiled prediction with overlapping, Gaussian-weighted tiles in 2D and 3D; multi-step sampling; uncertainty.

``tiled_probabilities`` is a generator: it yields ``TileProgress`` after every batch of tiles (so callers can show
progress and cancel) and returns a ``Probabilities`` result. Memory is bounded by the tile size plus the output.
Uncertainty is the normalised entropy of the mean class probabilities over an ensemble of stochastic draws
(fresh t and noise per draw) of one or more networks, so it grows both where the networks are unsure and where
they disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
import itertools

import numpy as np
import torch

from ..device import autocast_context, memory_format_for, to_device
from ..method.teacher import DiffusionTwin
from .tiling import MAX_TILE_GROWTH, fit_tile, gaussian_weight, tile_starts

DEFAULT_TILE_2D = (1024, 1024)
DEFAULT_TILE_3D = (64, 128, 128)


@dataclass
class TileProgress:
    done: int
    total: int


@dataclass
class Probabilities:
    primary: np.ndarray  # (K, *spatial) class probabilities of the first network's deterministic pass
    ensemble: np.ndarray | None  # (K, *spatial) mean over all draws of all networks (several networks or draws)
    second: np.ndarray | None = None  # (K, *spatial) the second network's deterministic pass, when there is one


def mirror_sets(spatial_dims: int) -> list[tuple[int, ...]]:
    """The tensor dims (of a (B, C, *spatial) batch) to flip for mirroring test-time augmentation: every subset of
    the spatial axes, the identity first (4 passes in 2D, 8 in 3D, as nnU-Net mirrors)."""
    axes = range(2, 2 + spatial_dims)
    return [dims for size in range(spatial_dims + 1) for dims in itertools.combinations(axes, size)]


def _forward_probs(
    network: DiffusionTwin, batch: torch.Tensor, stochastic: bool, sampling_steps: int, generator,
    mirror: bool = False,
) -> torch.Tensor:
    """Class probabilities for a batch of tiles: one deterministic step, a stochastic draw, or DDIM-style sampling;
    ``mirror``: the deterministic step's mean over the batch mirrored along every subset of its spatial axes."""
    if mirror and not stochastic and sampling_steps <= 1:
        flips = mirror_sets(batch.ndim - 2)
        total = torch.softmax(network.mask_logits(batch).float(), dim=1)  # flips[0] is the identity
        for dims in flips[1:]:
            total = total + torch.softmax(network.mask_logits(batch.flip(dims)).float(), dim=1).flip(dims)
        return total / len(flips)
    if sampling_steps > 1:
        return sample_mask(network, batch, sampling_steps, generator)
    logits = network.random_mask_logits(batch, generator) if stochastic else network.mask_logits(batch)
    return torch.softmax(logits.float(), dim=1)


def sample_mask(network: DiffusionTwin, image01: torch.Tensor, steps: int, generator=None) -> torch.Tensor:
    """Multi-step (DDIM, eta = 0) refinement of the mask from pure noise; returns class probabilities.

    Each step predicts the clean mask (x0), then re-noises it to the next, smaller t along the predicted noise.
    """
    schedule = network.schedule
    batch, spatial = image01.shape[0], tuple(image01.shape[2:])
    k = network.config.num_classes
    timesteps = schedule.sampling_timesteps(steps)
    noisy = torch.randn((batch, k, *spatial), generator=generator).to(image01)
    probs = None
    for index, t_value in enumerate(timesteps):
        t = torch.full((batch,), t_value, dtype=torch.long, device=image01.device)
        probs = torch.softmax(network.mask_logits(image01, t, noisy_mask=noisy).float(), dim=1)
        if index + 1 < len(timesteps):
            x0 = probs * 2 - 1
            eps = schedule.predict_eps_from_x0(noisy.float(), t, x0)
            t_next = torch.full((batch,), timesteps[index + 1], dtype=torch.long, device=image01.device)
            noisy = schedule.q_sample(x0, t_next, eps).to(image01.dtype)
    return probs


def tiled_probabilities(
    networks: Sequence[DiffusionTwin],
    image01: np.ndarray,
    tile: tuple[int, ...],
    overlap: float = 0.125,
    batch_size: int = 1,
    draws: int = 0,
    sampling_steps: int = 1,
    device: torch.device | str = "cpu",
    bf16: bool = False,
    seed: int = 0,
    mirror: bool = False,
) -> Generator[TileProgress, None, Probabilities]:
    """Predict class probabilities of a (C, *spatial) image in [0, 1] with overlapping tiles.

    Tiles overlap by at least ``overlap`` x tile size and are blended with Gaussian weights. Networks and tiles
    use the channels-last memory layout (2-3x faster convolutions on CPU). One tile per forward pass by default:
    on a 2-core CPU 1024-px tiles one at a time ran 1.4x faster than four at a time (the activations of four no
    longer fit the caches; benchmarks/predict_speed.md). The first network's deterministic
    pass gives ``primary``; with several networks or ``draws`` > 0, ``ensemble`` is the mean of every network's
    deterministic pass and ``draws`` stochastic passes each, and ``second`` the second network's deterministic pass.
    ``mirror``: every deterministic pass is the mean over the tile mirrored along each subset of its axes (test-time
    augmentation: 4x the forwards in 2D, 8x in 3D).
    """
    device = torch.device(device)
    networks = list(networks)
    multiple = networks[0].size_multiple
    spatial = image01.shape[1:]
    tile = tuple(max(multiple, (int(t) // multiple) * multiple) for t in tile)
    overlaps = [int(t * overlap) for t in tile]
    growth = MAX_TILE_GROWTH if len(tile) == 2 else 1.0  # a 3D tile grown 25 % per axis holds 2x the voxels
    tile = tuple(fit_tile(s, t, o, multiple, growth) for s, t, o in zip(spatial, tile, overlaps))
    padded_shape = tuple(max(s, t) for s, t in zip(spatial, tile))
    pad = [(0, 0)] + [(0, p - s) for s, p in zip(spatial, padded_shape)]
    padded = np.pad(image01, pad, mode="reflect") if any(p[1] for p in pad) else image01
    corners = list(itertools.product(*[tile_starts(s, t, o) for s, t, o in zip(padded_shape, tile, overlaps)]))
    k = networks[0].config.num_classes
    weight = gaussian_weight(tile)
    primary = np.zeros((k, *padded_shape), np.float32)
    ensemble = np.zeros((k, *padded_shape), np.float32) if draws > 0 or len(networks) > 1 else None
    second = np.zeros((k, *padded_shape), np.float32) if len(networks) > 1 else None
    weights = np.zeros(padded_shape, np.float32)
    generator = torch.Generator().manual_seed(seed)
    members = 1 + draws
    memory_format = memory_format_for(len(tile))
    for net in networks:
        net.eval().to(memory_format=memory_format)
    total = len(corners)
    with torch.inference_mode(), autocast_context(device, bf16):
        for start in range(0, total, batch_size):
            chunk = corners[start : start + batch_size]
            slices = [tuple(slice(c, c + t) for c, t in zip(corner, tile)) for corner in chunk]
            batch = to_device(torch.from_numpy(np.stack([padded[(slice(None),) + s] for s in slices])), device)
            batch = batch.contiguous(memory_format=memory_format)
            first = _forward_probs(networks[0], batch, False, sampling_steps, generator, mirror).cpu().numpy()
            accumulated = None
            if ensemble is not None:
                accumulated = first.copy()
                for net_index, net in enumerate(networks):
                    if net_index:
                        deterministic = _forward_probs(net, batch, False, sampling_steps, generator,
                                                       mirror).cpu().numpy()
                        accumulated += deterministic
                        if net_index == 1:
                            for i, s in enumerate(slices):
                                second[(slice(None),) + s] += deterministic[i] * weight
                    for _ in range(draws):
                        accumulated += _forward_probs(net, batch, True, 1, generator).cpu().numpy()
                accumulated /= members * len(networks)
            for i, s in enumerate(slices):
                primary[(slice(None),) + s] += first[i] * weight
                if accumulated is not None:
                    ensemble[(slice(None),) + s] += accumulated[i] * weight
                weights[s] += weight
            yield TileProgress(min(start + batch_size, total), total)
    crop = (slice(None),) + tuple(slice(0, s) for s in spatial)
    primary = (primary / weights)[crop]
    if ensemble is not None:
        ensemble = (ensemble / weights)[crop]
    if second is not None:
        second = (second / weights)[crop]
    return Probabilities(primary, ensemble, second)


def slice_probabilities(
    networks: Sequence[DiffusionTwin], volume01: np.ndarray, tile: tuple[int, ...], axis: int, **options,
) -> Generator[TileProgress, None, Probabilities]:
    """``tiled_probabilities`` of a (C, *3 spatial) volume through 2D networks, slice by slice across spatial
    ``axis``, stacked back into a volume (the plan's "2d" layout). Memory: one slice's tiles plus the output;
    progress counts tiles over all slices."""
    moved = np.moveaxis(volume01, 1 + axis, 1)  # a view: slice i is moved[:, i]
    count = moved.shape[1]
    outputs: dict[str, np.ndarray] = {}
    for index in range(count):
        run = tiled_probabilities(networks, np.ascontiguousarray(moved[:, index]), tile, **options)
        while True:
            try:
                event = next(run)
            except StopIteration as stop:
                probs: Probabilities = stop.value
                break
            yield TileProgress(index * event.total + event.done, count * event.total)
        for name in ("primary", "ensemble", "second"):
            part = getattr(probs, name)
            if part is None:
                continue
            if name not in outputs:
                outputs[name] = np.zeros((part.shape[0], *volume01.shape[1:]), np.float32)
            np.moveaxis(outputs[name], 1 + axis, 1)[:, index] = part
    return Probabilities(outputs["primary"], outputs.get("ensemble"), outputs.get("second"))


def predict_probabilities(
    networks: Sequence[DiffusionTwin], image01: np.ndarray, tile: tuple[int, ...], slice_axis: int | None = None,
    **options,
) -> Generator[TileProgress, None, Probabilities]:
    """Tiled probabilities of an image in the network's layout: whole (2D images, 3D networks) or slice by slice
    across ``slice_axis`` (2D networks on volumes)."""
    if slice_axis is None or image01.ndim - 1 == networks[0].config.spatial_dims:
        return (yield from tiled_probabilities(networks, image01, tile, **options))
    return (yield from slice_probabilities(networks, image01, tile, slice_axis, **options))


def run_to_completion(generator: Generator, on_progress: Callable[[TileProgress], None] | None = None):
    """Drive a progress generator to completion and return its result."""
    while True:
        try:
            event = next(generator)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(event)


def probabilities_to_mask(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """uint8 class map: background where the foreground probability (1 - p_background) <= threshold, else the
    most likely foreground class."""
    foreground = 1.0 - probs[0]
    if probs.shape[0] == 2:
        return (foreground > threshold).astype(np.uint8)
    classes = probs[1:].argmax(0).astype(np.uint8) + 1
    return np.where(foreground > threshold, classes, 0).astype(np.uint8)


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """Per-pixel entropy of class probabilities divided by log(K): 0 = certain, 1 = uniform."""
    p = np.clip(probs, 1e-7, 1.0)
    return (-(p * np.log(p)).sum(0) / np.log(probs.shape[0])).astype(np.float32)


def disagreement(first: np.ndarray, second: np.ndarray) -> float:
    """Image-level uncertainty of a pseudo-label: 1 - soft Dice between the foreground probabilities of two
    networks (0 = they agree everywhere, 1 = no overlap). Two twins trained apart that disagree point at a mask
    that is likely wrong; both predicting no foreground counts as agreement."""
    a, b = 1.0 - first[0], 1.0 - second[0]
    denominator = float(a.sum() + b.sum())
    return 0.0 if denominator < 1e-6 else float(1.0 - 2.0 * (a * b).sum() / denominator)
