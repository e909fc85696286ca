"""Tests for napari_diffseg.core.data.metrics against closed forms and a brute-force HD95."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from scipy.spatial.distance import cdist

from napari_diffseg.core.errors import InputError
from napari_diffseg.core.data.io import write_mask
from napari_diffseg.core.data.metrics import POOLED_NAME, dice, evaluate_folders, format_table, hd95, jaccard


def _square(shape, top_left, side) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[top_left[0] : top_left[0] + side, top_left[1] : top_left[1] + side] = True
    return m


def _disc(shape, centre, radius) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _brute_force_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """Surface = voxels removed by a face-connected erosion; all pairwise distances with cdist."""

    def surface_points(m):
        eroded = ndi.binary_erosion(m, structure=ndi.generate_binary_structure(m.ndim, 1), border_value=0)
        return np.argwhere(m & ~eroded) * np.asarray(spacing, float)

    pa, pb = surface_points(a), surface_points(b)
    d = cdist(pa, pb)
    return float(np.percentile(np.concatenate([d.min(axis=1), d.min(axis=0)]), 95))


@pytest.mark.parametrize("side, k", [(10, 0), (10, 3), (12, 5), (8, 7)])
def test_dice_jaccard_offset_squares_closed_form(side, k):
    a = _square((32, 32), (5, 5), side)
    b = _square((32, 32), (5, 5 + k), side)
    assert dice(a, b) == pytest.approx((side - k) / side)
    assert jaccard(a, b) == pytest.approx((side - k) / (side + k))


def test_dice_uses_foreground_of_label_values():
    a = np.zeros((10, 10), np.uint16)
    a[:5] = 7  # instance / class ids count as foreground
    b = np.zeros((10, 10), np.uint8)
    b[:5] = 1
    assert dice(a, b) == 1.0 and jaccard(a, b) == 1.0


def test_dice_jaccard_empty_conventions():
    empty = np.zeros((9, 9), np.uint8)
    full = np.ones((9, 9), np.uint8)
    assert dice(empty, empty) == 1.0 and jaccard(empty, empty) == 1.0
    assert dice(empty, full) == 0.0 and jaccard(full, empty) == 0.0


def test_dice_3d_closed_form():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros((10, 10, 10), bool)
    a[2:6, 2:6, 2:6] = True  # 64 voxels
    b[2:6, 2:6, 4:8] = True  # 64 voxels, overlap 32
    assert dice(a, b) == pytest.approx(0.5)
    assert jaccard(a, b) == pytest.approx(32 / 96)


def test_hd95_identical_and_empty_conventions():
    a = _disc((30, 30), (15, 15), 8)
    assert hd95(a, a) == 0.0
    empty = np.zeros_like(a)
    assert hd95(empty, empty) == 0.0
    assert math.isnan(hd95(a, empty)) and math.isnan(hd95(empty, a))


@pytest.mark.parametrize("shift", [1, 3, 6])
def test_hd95_disc_vs_shifted_disc_is_the_shift(shift):
    a = _disc((64, 64), (32, 28), 12)
    b = _disc((64, 64), (32, 28 + shift), 12)
    # continuous limit: 95th percentile of shift*|cos(theta)| ~ 0.997 * shift
    assert abs(hd95(a, b) - shift) <= 1.0
    assert hd95(a, b) == pytest.approx(hd95(b, a))


def test_hd95_spacing_scales_distances():
    a = _disc((64, 64), (32, 28), 12)
    b = _disc((64, 64), (32, 32), 12)  # shifted along x only
    assert hd95(a, b, spacing=2.0) == pytest.approx(2.0 * hd95(a, b))
    assert hd95(a, b, spacing=(5.0, 0.5)) == pytest.approx(_brute_force_hd95(a, b, (5.0, 0.5)))


def test_hd95_3d_ball_shift():
    zz, yy, xx = np.ogrid[:24, :24, :24]
    a = (zz - 12) ** 2 + (yy - 12) ** 2 + (xx - 10) ** 2 <= 36
    b = (zz - 12) ** 2 + (yy - 12) ** 2 + (xx - 14) ** 2 <= 36
    assert abs(hd95(a, b) - 4) <= 1.0
    assert hd95(a, b, spacing=(1, 1, 0.5)) < hd95(a, b)


@pytest.mark.parametrize("seed", range(4))
def test_hd95_matches_brute_force_on_random_pairs(seed):
    rng = np.random.default_rng(seed)
    shape = (20, 24) if seed % 2 == 0 else (10, 12, 14)
    a = ndi.binary_opening(rng.random(shape) > 0.55)
    b = ndi.binary_opening(rng.random(shape) > 0.6)
    a[(0,) * len(shape)] = b[(-1,) * len(shape)] = True  # never empty
    spacing = (1.0,) * len(shape) if seed < 2 else tuple(rng.uniform(0.5, 2.0, len(shape)))
    assert hd95(a, b, spacing) == pytest.approx(_brute_force_hd95(a, b, spacing), rel=1e-9)


def test_metric_shape_mismatch_is_input_error():
    with pytest.raises(InputError, match="shape mismatch"):
        dice(np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(InputError, match="shape mismatch"):
        hd95(np.zeros((8, 8)), np.zeros((9, 8)))


def _write_pairs(tmp_path, pairs):
    pred_dir, mask_dir = tmp_path / "pred", tmp_path / "masks"
    for name, (p, t) in pairs.items():
        write_mask(pred_dir / f"{name}.tif", p)
        write_mask(mask_dir / f"{name}.tif", t)
    return pred_dir, mask_dir


def test_evaluate_folders_rows_and_pooled(tmp_path):
    a1, b1 = _square((32, 32), (4, 4), 10), _square((32, 32), (4, 7), 10)  # I=70, |P|=|T|=100
    a2, b2 = _square((32, 32), (2, 2), 4), _square((32, 32), (2, 2), 4)  # I=16, |P|=|T|=16
    a3, b3 = np.zeros((32, 32), bool), _square((32, 32), (0, 0), 2)  # missed object: hd95 nan
    pred_dir, mask_dir = _write_pairs(tmp_path, {"x1": (a1, b1), "x2": (a2, b2), "x3": (a3, b3)})
    write_mask(pred_dir / "extra.tif", a1)  # no mask: ignored
    rows = evaluate_folders(pred_dir, mask_dir)
    assert [r["name"] for r in rows] == ["x1", "x2", "x3", POOLED_NAME]
    assert rows[0]["dice"] == pytest.approx(0.7) and rows[0]["jaccard"] == pytest.approx(70 / 130)
    assert rows[1]["dice"] == 1.0 and rows[1]["hd95"] == 0.0
    assert rows[2]["dice"] == 0.0 and math.isnan(rows[2]["hd95"])
    pooled = rows[-1]
    inter, total_p, total_t = 70 + 16, 100 + 16, 100 + 16 + 4
    assert pooled["dice"] == pytest.approx(2 * inter / (total_p + total_t))
    assert pooled["jaccard"] == pytest.approx(inter / (total_p + total_t - inter))
    assert pooled["hd95"] == pytest.approx((rows[0]["hd95"] + 0.0) / 2)  # nan-mean


def test_evaluate_folders_ome_stems_and_instance_masks(tmp_path):
    pred_dir, mask_dir = tmp_path / "pred", tmp_path / "masks"
    pred_dir.mkdir()
    mask_dir.mkdir()
    inst = np.zeros((16, 16), np.uint16)
    inst[2:6, 2:6] = 1
    inst[8:12, 8:12] = 400
    tifffile.imwrite(mask_dir / "a.ome.tif", inst)
    write_mask(pred_dir / "a.tif", inst > 0)
    rows = evaluate_folders(pred_dir, mask_dir)
    assert rows[0]["name"] == "a" and rows[0]["dice"] == 1.0 and rows[-1]["dice"] == 1.0


def test_bad_evaluate_no_matches(tmp_path):
    pred_dir, mask_dir = tmp_path / "pred", tmp_path / "masks"
    write_mask(pred_dir / "a.tif", np.zeros((8, 8), np.uint8))
    write_mask(mask_dir / "b.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError, match="no prediction in .* has the name stem of a mask"):
        evaluate_folders(pred_dir, mask_dir)


def test_bad_evaluate_shape_mismatch(tmp_path):
    pred_dir, mask_dir = _write_pairs(tmp_path, {"a": (np.zeros((8, 8), bool), np.zeros((8, 8), bool))})
    write_mask(mask_dir / "a.tif", np.zeros((8, 9), np.uint8))
    with pytest.raises(InputError, match=r"shape mismatch for a: .*\(8, 8\).*\(8, 9\)"):
        evaluate_folders(pred_dir, mask_dir)


def test_bad_evaluate_missing_folder(tmp_path):
    with pytest.raises(InputError, match="folder not found"):
        evaluate_folders(tmp_path / "pred", tmp_path / "masks")


def test_format_table_aligned_with_four_decimals():
    rows = [
        {"name": "img_000", "dice": 0.91234567, "jaccard": 0.8, "hd95": 1.41421356},
        {"name": "a", "dice": 0.0, "jaccard": 0.0, "hd95": math.nan},
        {"name": POOLED_NAME, "dice": 0.5, "jaccard": 1 / 3, "hd95": 12.0},
    ]
    text = format_table(rows)
    lines = text.splitlines()
    assert len(lines) == 2 + len(rows)
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["name", "dice", "jaccard", "hd95"]
    assert len({len(line) for line in lines}) == 1  # aligned: every line equally long
    assert [c.strip() for c in lines[2].strip("|").split("|")] == ["img_000", "0.9123", "0.8000", "1.4142"]
    assert "nan" in lines[3] and "12.0000" in lines[4] and "0.3333" in lines[4]
    # columns line up: the separators are at the same positions on every line
    positions = {tuple(i for i, ch in enumerate(line) if ch == "|") for line in lines}
    assert len(positions) == 1
