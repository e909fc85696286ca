"""Synthetic segmentation data for fast tests and demos: bright blobs on a dark, textured, noisy background.

Each image holds a few bright discs (2D) or balls (3D) of random radius and brightness over a smoothly varying
dark background, with a handful of tiny bright specks that are *not* foreground, a slight blur and Gaussian
noise. A global threshold is therefore imperfect (noise, specks, uneven background), while a small CNN that sees
some context learns the task well. Image ``i`` depends only on ``(seed, i)``, so datasets are reproducible and a
longer dataset starts with the images of a shorter one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_diffseg.core.data.io import write_mask, write_tiff_atomic

logger = logging.getLogger(__name__)

# colour of background and blobs for rgb=True (a pinkish stain with purple nuclei)
_BACKGROUND_TINT = np.array([0.95, 0.75, 0.85])
_BLOB_TINT = np.array([0.75, 0.45, 1.0])


def _resolve_shape(shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3:
        return shape  # a 3D shape always means a volume
    if len(shape) != 2:
        raise ValueError(f"shape must have 2 or 3 entries, got {shape}")
    if ndim == 2:
        return shape
    if ndim == 3:
        return (shape[0], *shape)  # a 2D shape with ndim=3: a volume of shape[0] slices
    raise ValueError(f"ndim must be 2 or 3, got {ndim}")


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-range-ish smooth random field (background texture / illumination)."""
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="reflect")
    spread = float(np.abs(field).max()) or 1.0
    return field / spread


def _balls(
    rng: np.random.Generator, shape: tuple[int, ...], n: int, radius_range: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Union mask of ``n`` random discs/balls and a float map with each ball's brightness (max over overlaps)."""
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    mask = np.zeros(shape, dtype=bool)
    brightness = np.zeros(shape, dtype=np.float32)
    for _ in range(n):
        radius = rng.uniform(*radius_range)
        centre = [rng.uniform(0, s) for s in shape]
        dist2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
        ball = dist2 <= radius**2
        level = rng.uniform(0.5, 0.9)
        mask |= ball
        np.maximum(brightness, np.where(ball, level, 0.0).astype(np.float32), out=brightness)
    return mask, brightness


def _make_one(
    rng: np.random.Generator, shape: tuple[int, ...], rgb: bool, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    ndim = len(shape)
    size = min(shape[-2:])
    scale = size / 64.0
    volume = float(np.prod(shape))
    # blob count proportional to the area / volume, radii proportional to the image size
    r_lo, r_hi = max(2.0, 3.5 * scale), max(3.0, 8.0 * scale)
    mean_ball = (np.pi * ((r_lo + r_hi) / 2) ** 2) if ndim == 2 else (4 / 3 * np.pi * ((r_lo + r_hi) / 2) ** 3)
    n_blobs = int(rng.integers(max(1, int(0.06 * volume / mean_ball)), max(2, int(0.2 * volume / mean_ball)) + 1))
    mask, brightness = _balls(rng, shape, n_blobs, (r_lo, r_hi))
    if not mask.any():  # guarantee some foreground: one blob in the centre
        centre_mask, centre_bright = _balls(np.random.default_rng(0), shape, 1, (r_lo, r_lo))
        mask, brightness = centre_mask, centre_bright

    # a few tiny bright specks that are background (defeat a pure threshold)
    n_specks = int(rng.integers(1, max(2, int(volume / 800)) + 1))
    specks, speck_bright = _balls(rng, shape, n_specks, (0.8, 1.4))
    specks &= ~ndi.binary_dilation(mask, iterations=2)

    background = 0.18 + 0.08 * _smooth_field(rng, shape, sigma=max(2.0, size / 8))  # uneven illumination
    background += 0.04 * _smooth_field(rng, shape, sigma=1.0)  # fine texture
    # blobs are slightly textured inside too
    blob_level = brightness * (1.0 + 0.08 * _smooth_field(rng, shape, sigma=1.5))

    channels = 3 if rgb else 1
    out = np.empty((*shape, channels), dtype=np.float32)
    for c in range(channels):
        bg_tint = _BACKGROUND_TINT[c] if rgb else 1.0
        fg_tint = _BLOB_TINT[c] if rgb else 1.0
        clean = np.where(mask, blob_level * fg_tint, background * bg_tint)
        clean = np.where(specks, speck_bright * fg_tint, clean)
        clean = ndi.gaussian_filter(clean, sigma=0.8)
        out[..., c] = clean + noise * rng.standard_normal(shape)
    image = (np.clip(out, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if not rgb:
        image = image[..., 0]
    return image, mask.astype(np.uint8)


def make_blobs_dataset(
    n_images: int,
    shape: tuple[int, ...] = (64, 64),
    rgb: bool = False,
    ndim: int = 2,
    seed: int = 0,
    noise: float = 0.15,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_images`` (image, mask) pairs: uint8 image (Y, X) / (Y, X, 3) / (Z, Y, X) and uint8 0/1 mask (*spatial).

    ``ndim=3`` (or a 3-entry ``shape``) gives volumes; with ``ndim=3`` and a 2-entry shape the volume is
    ``(shape[0], *shape)``. RGB volumes are not supported. Deterministic per ``seed``.
    """
    if n_images < 0:
        raise ValueError(f"n_images must be >= 0, got {n_images}")
    full_shape = _resolve_shape(shape, ndim)
    if rgb and len(full_shape) == 3:
        raise ValueError("rgb=True is only supported for 2D images")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    pairs = []
    for i in range(n_images):
        rng = np.random.default_rng([int(seed), i])
        pairs.append(_make_one(rng, full_shape, rgb, float(noise)))
    return pairs


def write_dataset(
    folder: Path, pairs: list[tuple[np.ndarray, np.ndarray]], n_labelled: int
) -> tuple[Path, Path]:
    """Write ``folder/images/img_###.tif`` for every pair, ``folder/labels/`` for the first ``n_labelled`` masks and
    ``folder/masks/`` for all masks (ground truth for evaluation). Returns (images_dir, labels_dir)."""
    if not 0 <= n_labelled <= len(pairs):
        raise ValueError(f"n_labelled must be in 0..{len(pairs)}, got {n_labelled}")
    folder = Path(folder)
    images_dir, labels_dir, masks_dir = folder / "images", folder / "labels", folder / "masks"
    for d in (images_dir, labels_dir, masks_dir):
        d.mkdir(parents=True, exist_ok=True)
    for i, (image, mask) in enumerate(pairs):
        name = f"img_{i:03d}.tif"
        write_tiff_atomic(images_dir / name, image)
        write_mask(masks_dir / name, mask)
        if i < n_labelled:
            write_mask(labels_dir / name, mask)
    logger.info("wrote %d synthetic images (%d labelled) to %s", len(pairs), n_labelled, folder)
    return images_dir, labels_dir
