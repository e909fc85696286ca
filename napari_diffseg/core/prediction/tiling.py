"""Sliding-window maths for tiled prediction: how many tiles cover an axis, where they start, how big they need
to be, and the Gaussian importance map that blends overlapping tiles (numpy only)."""

from __future__ import annotations

import numpy as np


def _tile_count(length: int, tile: int, min_overlap: int) -> int:
    if length <= tile:
        return 1
    return max(2, -(-(length - min_overlap) // max(1, tile - min_overlap)))


MAX_TILE_GROWTH = 1.25  # a tile may grow this much (per axis) when that saves a row of tiles


def fit_tile(length: int, tile: int, min_overlap: int, multiple: int, max_growth: float = MAX_TILE_GROWTH) -> int:
    """The tile edge for an axis of ``length``: the fewest tiles of at most ``tile`` x ``max_growth`` pixels, each
    as small as that count allows (a multiple of ``multiple``). Growing a tile a little can save a whole row of
    tiles: 2048 px in tiles of at most 1024 px overlapping by 128 px takes 3 tiles of 768 (1.13x the pixels
    computed per axis), in tiles of up to 1280 px 2 of 1088 (1.06x), and fewer, larger tiles run faster."""
    largest = max(tile, int(tile * max_growth) // multiple * multiple)
    count = _tile_count(length, largest, min_overlap)
    needed = -(-(length + (count - 1) * min_overlap) // count)
    return min(largest, -(-needed // multiple) * multiple)


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
