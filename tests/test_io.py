"""Tests for napari_diffseg.core.data.io: reading, layouts, normalisation, masks, pairing, atomic writes, bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_diffseg.core.data import io
from napari_diffseg.core.errors import DiffsegError, InputError
from napari_diffseg.core.data.io import (
    IMAGE_SUFFIXES,
    check_mask_matches,
    image_layout,
    list_images,
    name_stem,
    normalise_mask,
    pair_images_with_labels,
    read_image,
    read_mask,
    to_channels_first,
    write_mask,
    write_tiff_atomic,
)


def _grey(shape=(16, 20), dtype=np.uint8, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.floating):
        return rng.random(shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


# ------------------------------------------------------------------------------------------------ good input
def test_image_suffixes_constant():
    assert IMAGE_SUFFIXES == (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def test_list_images_sorted_case_insensitive_skips_hidden_and_others(tmp_path):
    for name in ["b.TIF", "a.png", "c.jpeg", "d.Tiff", ".hidden.tif", "notes.txt", "e.JPG"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.tif").mkdir()  # a folder with an image suffix is not an image
    names = [p.name for p in list_images(tmp_path)]
    assert names == sorted(["b.TIF", "a.png", "c.jpeg", "d.Tiff", "e.JPG"])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_read_tiff_round_trip_dtypes(tmp_path, dtype):
    image = _grey(dtype=dtype)
    tifffile.imwrite(tmp_path / "x.tif", image)
    out = read_image(tmp_path / "x.tif")
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, image)


def test_read_planar_rgb_tiff_is_channels_last(tmp_path):
    rgb = _grey((10, 12, 3))
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    out = read_image(tmp_path / "planar.tif")
    np.testing.assert_array_equal(out, rgb)
    assert image_layout(out) == (2, 3)


def test_read_ome_tiff_volume_and_stem(tmp_path):
    volume = _grey((9, 12, 10))
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, volume, ome=True)
    out = read_image(path)
    np.testing.assert_array_equal(out, volume)
    assert image_layout(out) == (3, 1)
    assert name_stem(path) == "stack"
    assert name_stem(Path("a.b.png")) == "a.b"


def test_read_png_grey_rgb_rgba_and_jpg(tmp_path):
    grey = _grey((12, 14))
    rgb = _grey((12, 14, 3), seed=1)
    rgba = _grey((12, 14, 4), seed=2)
    grey16 = _grey((12, 14), dtype=np.uint16, seed=3)
    iio.imwrite(tmp_path / "g.png", grey)
    iio.imwrite(tmp_path / "c.png", rgb)
    iio.imwrite(tmp_path / "a.png", rgba)
    iio.imwrite(tmp_path / "g16.png", grey16)
    iio.imwrite(tmp_path / "j.jpg", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), grey)
    np.testing.assert_array_equal(read_image(tmp_path / "c.png"), rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba)
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png"), grey16)
    jpg = read_image(tmp_path / "j.jpg")
    assert jpg.shape == (12, 14, 3) and jpg.dtype == np.uint8
    assert image_layout(read_image(tmp_path / "a.png")) == (2, 3)


@pytest.mark.parametrize(
    "shape, layout",
    [((8, 9), (2, 1)), ((10, 11, 3), (2, 3)), ((10, 11, 4), (2, 3)), ((10, 11, 1), (2, 1)), ((8, 10, 12), (3, 1))],
)
def test_image_layout(shape, layout):
    assert image_layout(np.zeros(shape)) == layout


def test_to_channels_first_grey_percentiles():
    image = np.arange(100 * 100, dtype=np.float64).reshape(100, 100)
    out = to_channels_first(image)
    assert out.shape == (1, 100, 100) and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    lo, hi = np.percentile(image, (1, 99.8))
    # a pixel in the middle maps linearly
    np.testing.assert_allclose(out[0, 50, 0], (image[50, 0] - lo) / (hi - lo), rtol=1e-5)
    # below the 1st percentile clips to 0, above 99.8 to 1
    assert out[0, 0, 0] == 0.0 and out[0, -1, -1] == 1.0


def test_to_channels_first_rgb_per_channel_and_alpha_dropped():
    rng = np.random.default_rng(0)
    rgba = np.empty((20, 30, 4), dtype=np.uint8)
    rgba[..., 0] = rng.integers(0, 50, (20, 30))
    rgba[..., 1] = rng.integers(100, 250, (20, 30))
    rgba[..., 2] = 7  # constant channel -> zeros
    rgba[..., 3] = 255
    out = to_channels_first(rgba)
    assert out.shape == (3, 20, 30) and out.dtype == np.float32
    for c in range(2):  # every varying channel spans [0, 1] on its own
        assert out[c].min() == 0.0 and out[c].max() == 1.0
    assert np.all(out[2] == 0.0)


def test_to_channels_first_volume_constant_and_sparse():
    assert to_channels_first(np.zeros((8, 9, 10), np.uint16)).shape == (1, 8, 9, 10)
    assert np.all(to_channels_first(np.full((9, 9), 5.0)) == 0.0)
    sparse = np.zeros((40, 40), np.uint8)
    sparse[3, 4] = 200  # < 0.2 % of pixels: percentiles coincide, fall back to min / max
    out = to_channels_first(sparse)
    assert out[0, 3, 4] == 1.0 and out.sum() == 1.0
    assert to_channels_first(np.zeros((9, 9, 1), np.uint8)).shape == (1, 9, 9)


def test_read_mask_binary_instances_and_multiclass(tmp_path):
    instances = np.zeros((10, 12), np.uint16)
    instances[1:4, 1:4] = 1
    instances[5:9, 5:9] = 300
    tifffile.imwrite(tmp_path / "inst.tif", instances)
    binary = read_mask(tmp_path / "inst.tif")
    assert binary.dtype == np.int64
    np.testing.assert_array_equal(binary, (instances > 0).astype(np.int64))
    classes = np.array([[0, 1, 2, 3]] * 8, np.uint8).repeat(2, axis=1)  # (8, 8)
    tifffile.imwrite(tmp_path / "cls.tif", classes)
    np.testing.assert_array_equal(read_mask(tmp_path / "cls.tif", num_classes=4), classes)


def test_normalise_mask_accepts_bool_integer_floats_and_grey_rgb():
    m = np.zeros((8, 8), bool)
    m[2:5, 2:5] = True
    assert normalise_mask(m).sum() == 9
    np.testing.assert_array_equal(normalise_mask(m.astype(np.float32) * 255.0), m.astype(np.int64))
    rgb = np.stack([m.astype(np.uint8) * 255] * 3, axis=-1)
    np.testing.assert_array_equal(normalise_mask(rgb), m.astype(np.int64))


def test_read_mask_palette_png_keeps_indices(tmp_path):
    from PIL import Image

    labels = np.zeros((10, 10), np.uint8)
    labels[2:5, 2:5] = 1
    labels[6:9, 6:9] = 2
    img = Image.fromarray(labels, mode="L").convert("P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    img.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png", num_classes=3), labels)


def test_check_mask_matches_ok_for_rgb_and_volume():
    check_mask_matches(np.zeros((10, 12, 3)), np.zeros((10, 12)), "rgb")
    check_mask_matches(np.zeros((9, 10, 12)), np.zeros((9, 10, 12)), "vol")


def test_write_mask_round_trip_uint8_zlib(tmp_path):
    mask = np.zeros((9, 11), np.int64)
    mask[2:6, 3:8] = 3
    path = tmp_path / "new" / "deeper" / "m.tif"
    write_mask(path, mask)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.dtype == np.uint8
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        np.testing.assert_array_equal(page.asarray(), mask)
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.tif"]


def test_write_tiff_atomic_float_map_volume_and_rgb(tmp_path):
    unc = np.random.default_rng(0).random((8, 9, 10)).astype(np.float32)
    write_tiff_atomic(tmp_path / "u.tif", unc)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "u.tif"), unc)
    rgb = _grey((10, 12, 3))
    write_tiff_atomic(tmp_path / "rgb.tif", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.tif"), rgb)
    write_tiff_atomic(tmp_path / "rgb.tif", rgb[..., 0])  # overwrite an existing file
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.tif"), rgb[..., 0])


def _half_writing_imwrite(exc: BaseException):
    def fake_imwrite(fh, data, **kwargs):
        fh.write(b"II*\x00" + b"\x00" * 64)  # some bytes reached the temp file ...
        raise exc  # ... then the write fails

    return fake_imwrite


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "m.tif"
    old = np.ones((8, 8), np.uint8)
    write_mask(path, old)
    monkeypatch.setattr(tifffile, "imwrite", _half_writing_imwrite(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        write_mask(path, np.zeros((8, 8), np.uint8))
    monkeypatch.undo()
    np.testing.assert_array_equal(tifffile.imread(path), old)
    assert [p.name for p in tmp_path.iterdir()] == ["m.tif"]


def test_full_disk_is_a_one_line_input_error(tmp_path, monkeypatch):
    path = tmp_path / "u.tif"
    write_tiff_atomic(path, np.zeros((8, 8), np.float32))
    monkeypatch.setattr(tifffile, "imwrite", _half_writing_imwrite(OSError(28, "No space left on device")))
    with pytest.raises(InputError, match="No space left on device") as info:
        write_tiff_atomic(path, np.ones((8, 8), np.float32))
    monkeypatch.undo()
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert np.all(tifffile.imread(path) == 0)
    assert [p.name for p in tmp_path.iterdir()] == ["u.tif"]


def test_pair_images_with_labels(tmp_path, caplog):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for name in ["a.tif", "b.png", "c.ome.tif"]:
        (images / name).write_bytes(b"x")
    for name in ["a.tif", "c.tif", "orphan.tif"]:
        (labels / name).write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="napari_diffseg.core.data.io"):
        image_paths, pairs = pair_images_with_labels(images, labels)
    assert [p.name for p in image_paths] == ["a.tif", "b.png", "c.ome.tif"]
    assert pairs == {"a": labels / "a.tif", "c": labels / "c.tif"}
    assert "orphan.tif" in caplog.text
    image_paths, pairs = pair_images_with_labels(images, None)
    assert len(image_paths) == 3 and pairs == {}


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_list_missing_folder(tmp_path):
    with pytest.raises(InputError, match="folder not found") as info:
        list_images(tmp_path / "nope")
    assert "nope" in str(info.value)


def test_bad_list_path_is_a_file(tmp_path):
    f = tmp_path / "x.tif"
    f.write_bytes(b"x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        list_images(f)


def test_bad_list_empty_folder(tmp_path):
    (tmp_path / ".hidden.tif").write_bytes(b"x")
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(InputError, match="no images in") as info:
        list_images(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_bad_read_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found") as info:
        read_image(tmp_path / "gone.tif")
    assert "gone.tif" in str(info.value)


def test_bad_read_text_file_named_tif(tmp_path):
    path = tmp_path / "fake.tif"
    path.write_text("this is not an image\nsecond line\n")
    with pytest.raises(InputError, match="cannot read .*fake.tif: not a valid TIF image") as info:
        read_image(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_bad_read_truncated_tif(tmp_path, compression):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, _grey((64, 64)), compression=compression)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cannot read .*cut.tif"):
        read_image(path)


def test_bad_read_corrupt_png(tmp_path):
    path = tmp_path / "bad.png"
    path.write_bytes(b"\x89PNG garbage")
    with pytest.raises(InputError, match="cannot read .*bad.png: not a valid PNG image"):
        read_image(path)


def test_bad_read_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="empty.png is an empty file"):
        read_image(path)


def test_bad_read_unsupported_suffix(tmp_path):
    path = tmp_path / "x.bmp"
    path.write_bytes(b"BM")
    with pytest.raises(InputError, match="unsupported file type '.bmp'"):
        read_image(path)


def test_bad_read_folder_instead_of_file(tmp_path):
    (tmp_path / "d.tif").mkdir()
    with pytest.raises(InputError, match="is a folder, not an image file"):
        read_image(tmp_path / "d.tif")


@pytest.mark.parametrize(
    "shape, fragment",
    [
        ((50,), "1 dimension"),
        ((2, 9, 10, 11), "4 dimension"),
        ((2, 3, 9, 10, 11), "5 dimension"),
        ((5, 40), "shorter than 8 px"),
        ((40, 40, 2), "shorter than 8 px"),
        ((4, 40, 40), "shorter than 8 px"),
        ((6, 40, 3), "shorter than 8 px"),
    ],
)
def test_bad_layout_wrong_dimensions(shape, fragment):
    with pytest.raises(InputError, match=fragment):
        image_layout(np.zeros(shape))


def test_bad_read_image_4d_names_file(tmp_path):
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, np.zeros((2, 3, 9, 9), np.uint8), photometric="minisblack")
    with pytest.raises(InputError, match=r"hyper\.tif: image has 4 dimension"):
        read_image(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_bad_nan_inf_in_image(bad):
    image = np.ones((10, 10), np.float32)
    image[3, 3] = bad
    with pytest.raises(InputError, match="NaN or infinite"):
        to_channels_first(image)


def test_bad_nan_in_image_file_names_file(tmp_path):
    image = np.ones((10, 10), np.float32)
    image[0, 0] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", image)
    with pytest.raises(InputError, match=r"nan\.tif: image contains 1 NaN"):
        read_image(tmp_path / "nan.tif")


def test_bad_mask_values_outside_classes(tmp_path):
    mask = np.zeros((10, 10), np.uint8)
    mask[2, 2] = 5
    tifffile.imwrite(tmp_path / "m.tif", mask)
    with pytest.raises(InputError, match=r"m\.tif: mask has label value 5 outside the 3 classes"):
        read_mask(tmp_path / "m.tif", num_classes=3)
    assert read_mask(tmp_path / "m.tif").max() == 1  # fine as a binary mask


def test_bad_mask_negative_values():
    mask = np.zeros((10, 10), np.int16)
    mask[1, 1] = -1
    with pytest.raises(InputError, match="negative values"):
        normalise_mask(mask)


def test_bad_mask_non_integer_floats(tmp_path):
    probabilities = np.random.default_rng(0).random((10, 10)).astype(np.float32)
    tifffile.imwrite(tmp_path / "prob.tif", probabilities)
    with pytest.raises(InputError, match=r"prob\.tif: mask has non-integer values"):
        read_mask(tmp_path / "prob.tif")


def test_bad_mask_nan_and_colour():
    mask = np.zeros((10, 10), np.float32)
    mask[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN or infinite"):
        normalise_mask(mask)
    colour = np.zeros((10, 10, 3), np.uint8)
    colour[1, 1] = (255, 0, 0)
    with pytest.raises(InputError, match="colour image"):
        normalise_mask(colour)


def test_bad_mask_wrong_dimensions():
    with pytest.raises(InputError, match="mask has 4 dimension"):
        normalise_mask(np.zeros((2, 9, 9, 9)))


def test_bad_shape_mismatch():
    with pytest.raises(InputError, match="shape mismatch for img_007") as info:
        check_mask_matches(np.zeros((20, 30, 3)), np.zeros((30, 20)), "img_007")
    assert "(20, 30)" in str(info.value) and "(30, 20)" in str(info.value)


def test_bad_pair_all_labels_unmatched(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    (images / "a.tif").write_bytes(b"x")
    (labels / "b.tif").write_bytes(b"x")
    with pytest.raises(InputError, match="no labelled image: none of the files in") as info:
        pair_images_with_labels(images, labels)
    assert "has the name stem of an image in" in str(info.value)
    assert str(labels) in str(info.value) and str(images) in str(info.value)


def test_bad_pair_duplicate_stems(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.tif").write_bytes(b"x")
    (images / "a.png").write_bytes(b"x")
    with pytest.raises(InputError, match="have the name stem 'a'"):
        pair_images_with_labels(images, None)


def test_bad_pair_missing_labels_folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.tif").write_bytes(b"x")
    with pytest.raises(InputError, match="folder not found"):
        pair_images_with_labels(images, tmp_path / "labels")


def test_bad_write_mask_values_over_255(tmp_path):
    mask = np.zeros((8, 8), np.uint16)
    mask[0, 0] = 256
    with pytest.raises(InputError, match=r"do not fit uint8 \(0\.\.255\)"):
        write_mask(tmp_path / "m.tif", mask)
    assert not (tmp_path / "m.tif").exists()


def test_bad_write_mask_non_integer(tmp_path):
    with pytest.raises(InputError, match="non-integer"):
        write_mask(tmp_path / "m.tif", np.full((8, 8), 0.5))


def test_input_error_is_a_diffseg_error():
    assert issubclass(InputError, DiffsegError)
    assert io.MIN_AXIS == 8


def test_a_tiff_with_pages_of_different_sizes_is_refused(tmp_path):
    path = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.zeros((32, 32), np.uint8))
        tif.write(np.zeros((16, 24), np.uint8))
    with pytest.raises(InputError, match="2 images of different shapes"):
        read_image(path)


def test_an_unreadable_file_says_permission_denied(tmp_path, monkeypatch):
    path = tmp_path / "locked.tif"
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8))

    def denied(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tifffile, "TiffFile", denied)  # root reads any file: simulate the user's case
    with pytest.raises(InputError, match="permission denied"):
        read_image(path)


def test_labels_folder_equal_to_the_images_folder_is_refused(tmp_path):
    io.write_mask(tmp_path / "a.tif", np.ones((8, 8), np.uint8))
    with pytest.raises(InputError, match="is the images folder"):
        pair_images_with_labels(tmp_path, tmp_path / ".")
