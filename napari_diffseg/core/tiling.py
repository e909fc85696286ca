"""Sliding-window maths for tiled prediction: how many tiles cover an axis, where they start, how big they need
to be, and the Gaussian importance map that blends overlapping tiles (numpy only)."""

from __future__ import annotations

import numpy as np


def _tile_count(length: int, tile: int, min_overlap: int) -> int:
    if length <= tile:
        return 1
    return max(2, -(-(length - min_overlap) // max(1, tile - min_overlap)))


def fit_tile(length: int, tile: int, min_overlap: int, multiple: int) -> int:
    """Shrink a tile to the smallest multiple of ``multiple`` that still covers ``length`` with as few tiles."""
    count = _tile_count(length, tile, min_overlap)
    needed = -(-(length + (count - 1) * min_overlap) // count)
    return min(tile, -(-needed // multiple) * multiple)


def tile_starts(length: int, tile: int, min_overlap: int) -> list[int]:
    """Fewest tile starts covering ``length`` with neighbours overlapping by at least ``min_overlap`` pixels,
    spread evenly (so no compute is wasted on a nearly empty last tile)."""
    count = _tile_count(length, tile, min_overlap)
    if count == 1:
        return [0]
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def gaussian_weight(tile: tuple[int, ...], sigma_scale: float = 0.125) -> np.ndarray:
    """Importance map for blending tiles: a Gaussian centred on the tile, floored so borders keep some weight."""
    grids = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in tile], indexing="ij")
    weight = np.exp(-sum((g / (sigma_scale * n)) ** 2 / 2 for g, n in zip(grids, tile)))
    weight /= weight.max()
    return np.maximum(weight, 1e-3).astype(np.float32)
