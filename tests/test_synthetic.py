"""Tests for napari_diffseg.core.data.synthetic: shapes, dtypes, determinism, difficulty, and the written dataset."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from napari_diffseg.core.data.io import image_layout, list_images, pair_images_with_labels, read_image, read_mask
from napari_diffseg.core.data.metrics import dice
from napari_diffseg.core.data.synthetic import make_blobs_dataset, write_dataset


def test_grey_2d_shapes_dtypes_and_mask_values():
    pairs = make_blobs_dataset(3, shape=(48, 40))
    assert len(pairs) == 3
    for image, mask in pairs:
        assert image.shape == (48, 40) and image.dtype == np.uint8
        assert mask.shape == (48, 40) and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 1}
        assert 0.02 < mask.mean() < 0.5
        assert image_layout(image) == (2, 1)


def test_rgb_is_tinted_three_channels():
    (image, mask), = make_blobs_dataset(1, shape=(40, 40), rgb=True, seed=3)
    assert image.shape == (40, 40, 3) and image.dtype == np.uint8 and mask.shape == (40, 40)
    assert image_layout(image) == (2, 3)
    means = [image[..., c][mask > 0].mean() for c in range(3)]
    assert max(means) - min(means) > 10  # channels differ: a tint, not grey copies


@pytest.mark.parametrize(
    "kwargs, shape", [({"shape": (12, 24, 20)}, (12, 24, 20)), ({"shape": (16, 16), "ndim": 3}, (16, 16, 16))]
)
def test_volumes(kwargs, shape):
    (image, mask), = make_blobs_dataset(1, **kwargs)
    assert image.shape == shape and mask.shape == shape
    assert image.dtype == np.uint8 and mask.dtype == np.uint8
    assert image_layout(image) == (3, 1)
    assert mask.any()
    # balls: at least one foreground component spans several slices
    labels, n = ndi.label(mask)
    extents = [sl[0].stop - sl[0].start for sl in ndi.find_objects(labels)]
    assert max(extents) >= 3


def test_deterministic_per_seed_and_prefix_stable():
    a = make_blobs_dataset(3, seed=7)
    b = make_blobs_dataset(3, seed=7)
    c = make_blobs_dataset(3, seed=8)
    for (ia, ma), (ib, mb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ma, mb)
    assert not np.array_equal(a[0][0], c[0][0])
    longer = make_blobs_dataset(4, seed=7)
    np.testing.assert_array_equal(longer[2][0], a[2][0])
    assert not np.array_equal(a[0][0], a[1][0])  # images within a dataset differ


def test_blobs_are_bright_and_threshold_is_imperfect_but_context_helps():
    pairs = make_blobs_dataset(6, shape=(64, 64), seed=1)
    raw_scores, smooth_scores = [], []
    for image, mask in pairs:
        assert image[mask > 0].mean() > image[mask == 0].mean() + 40  # bright foreground
        g = image.astype(np.float32)
        raw_scores.append(dice(g > threshold_otsu(g), mask))
        s = ndi.gaussian_filter(g, 1.5)
        smooth_scores.append(dice(s > threshold_otsu(s), mask))
    assert np.mean(raw_scores) < 0.85  # a pixel threshold alone is imperfect ...
    assert np.mean(smooth_scores) > 0.8  # ... but the task is learnable from local context
    assert np.mean(smooth_scores) > np.mean(raw_scores) + 0.1


def test_noise_parameter_controls_noise():
    quiet, = make_blobs_dataset(1, seed=2, noise=0.0)
    loud, = make_blobs_dataset(1, seed=2, noise=0.3)
    np.testing.assert_array_equal(quiet[1], loud[1])  # same geometry
    background = quiet[1] == 0
    assert loud[0][background].astype(float).std() > 2 * quiet[0][background].astype(float).std()


def test_bad_arguments():
    with pytest.raises(ValueError, match="rgb"):
        make_blobs_dataset(1, shape=(8, 16, 16), rgb=True)
    with pytest.raises(ValueError, match="ndim"):
        make_blobs_dataset(1, ndim=4)
    with pytest.raises(ValueError, match="n_labelled"):
        write_dataset("unused", make_blobs_dataset(1), n_labelled=2)


def test_write_dataset_layout_and_round_trip(tmp_path):
    pairs = make_blobs_dataset(4, shape=(32, 32))
    images_dir, labels_dir = write_dataset(tmp_path / "ds", pairs, n_labelled=2)
    assert images_dir == tmp_path / "ds" / "images" and labels_dir == tmp_path / "ds" / "labels"
    assert [p.name for p in list_images(images_dir)] == [f"img_{i:03d}.tif" for i in range(4)]
    assert [p.name for p in list_images(labels_dir)] == ["img_000.tif", "img_001.tif"]
    assert [p.name for p in list_images(tmp_path / "ds" / "masks")] == [f"img_{i:03d}.tif" for i in range(4)]
    for i, (image, mask) in enumerate(pairs):
        np.testing.assert_array_equal(read_image(images_dir / f"img_{i:03d}.tif"), image)
        np.testing.assert_array_equal(read_mask(tmp_path / "ds" / "masks" / f"img_{i:03d}.tif"), mask)
    image_paths, labels = pair_images_with_labels(images_dir, labels_dir)
    assert len(image_paths) == 4 and sorted(labels) == ["img_000", "img_001"]


def test_write_dataset_rgb_and_volume(tmp_path):
    rgb = make_blobs_dataset(2, shape=(24, 24), rgb=True)
    images_dir, _ = write_dataset(tmp_path / "rgb", rgb, n_labelled=0)
    np.testing.assert_array_equal(read_image(images_dir / "img_001.tif"), rgb[1][0])
    vol = make_blobs_dataset(1, shape=(10, 16, 16))
    images_dir, labels_dir = write_dataset(tmp_path / "vol", vol, n_labelled=1)
    np.testing.assert_array_equal(read_image(images_dir / "img_000.tif"), vol[0][0])
    np.testing.assert_array_equal(read_mask(labels_dir / "img_000.tif"), vol[0][1])
