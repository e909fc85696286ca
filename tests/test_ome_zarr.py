"""OME-Zarr in and out (core/prediction/large.py, ``diffseg predict --level``): an OME-Zarr image is predicted at the level
the user chooses; the mask of the block-by-block path is OME-Zarr labels that ome-zarr-py's reader opens with the
pixels of the TIFF of the same prediction, the NGFF metadata and the image-label colours."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_diffseg.core.prediction import large
from napari_diffseg.core.errors import InputError
from napari_diffseg.core.data.synthetic import make_blobs_dataset
from test_cli import assert_one_line_error, run_cli
from test_predict import fitted_model_dir

ome_zarr = pytest.importorskip("ome_zarr", reason="the [ome-zarr] extra (in [testing]) writes the NGFF metadata")

BLOCK = (64, 64)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return fitted_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def raw() -> np.ndarray:
    (image, _), = make_blobs_dataset(1, shape=(200, 170), seed=3)
    return image.astype(np.uint16) * 200


def _write_ome_image(path, data: np.ndarray, axes: str = "yx", levels: int = 2) -> None:
    """An OME-Zarr image written by ome-zarr-py, halved in y and x per level."""
    from ome_zarr.writer import write_image

    write_image(data, zarr.open_group(str(path), mode="w"), axes=list(axes),
                scale_factors=[2 ** k for k in range(1, levels)], storage_options={"chunks": (1,) * (data.ndim - 2)
                                                                                     + (50, 50)})


def _read_labels(folder):
    """The label nodes that ome-zarr-py's reader finds in ``folder``."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    return [node for node in Reader(parse_url(str(folder)))() if node.load(Label) is not None]


def test_predict_writes_ome_zarr_labels_with_the_pixels_of_the_tiff(model_dir, raw, tmp_path, monkeypatch):
    monkeypatch.setattr(large, "BLOCK_2D", BLOCK)
    monkeypatch.setattr(large, "PYRAMID_TOP", 64)  # 200 x 170 -> 100 x 85 -> 50 x 43
    _write_ome_image(tmp_path / "cells.ome.zarr", raw)
    code, out, err = run_cli(["predict", model_dir, tmp_path / "cells.ome.zarr", "--out", tmp_path / "pred"])
    assert code == 0, err
    folder, tiff = tmp_path / "pred" / "cells.zarr", tmp_path / "pred" / "cells.tif"  # '.ome' is dropped
    assert large.is_complete(folder)
    mask = tifffile.imread(tiff)
    assert mask.shape == raw.shape and 0.05 < (mask > 0).mean() < 0.9
    labels, = _read_labels(folder)
    levels = [np.asarray(level) for level in labels.data]
    assert [level.shape for level in levels] == [(200, 170), (100, 85), (50, 43)]
    np.testing.assert_array_equal(levels[0], mask)
    for k, level in enumerate(levels):
        np.testing.assert_array_equal(level, mask[::2 ** k, ::2 ** k])  # nearest: class ids stay class ids
    attrs = zarr.open_group(str(folder / large.LABELS_NAME), mode="r").attrs["ome"]
    assert attrs["version"] == "0.5"
    assert [a["name"] for a in attrs["multiscales"][0]["axes"]] == ["y", "x"]
    assert [d["coordinateTransformations"][0]["scale"] for d in attrs["multiscales"][0]["datasets"]] == \
        [[1.0, 1.0], [2.0, 2.0], [4.0, 4.0]]
    colours = {c["label-value"]: c["rgba"] for c in attrs["image-label"]["colors"]}
    assert colours[0][3] == 0 and colours[1] == list(large.LABEL_COLOURS[0])
    assert zarr.open_group(str(folder), mode="r").attrs["ome"]["labels"] == [large.LABELS_NAME]


def test_the_labels_validate_against_the_ngff_models(model_dir, raw, tmp_path, monkeypatch):
    """ome-zarr-models (the pydantic NGFF models that ome-zarr-py installs) accepts the written label image."""
    models = pytest.importorskip("ome_zarr_models.v05.labels")
    image_label = pytest.importorskip("ome_zarr_models.v05.image_label")
    monkeypatch.setattr(large, "BLOCK_2D", BLOCK)
    monkeypatch.setattr(large, "PYRAMID_TOP", 64)
    _write_ome_image(tmp_path / "cells.ome.zarr", raw, levels=1)
    code, out, err = run_cli(["predict", model_dir, tmp_path / "cells.ome.zarr", "--out", tmp_path / "pred"])
    assert code == 0, err
    folder = tmp_path / "pred" / "cells.zarr"
    models.Labels.from_zarr(zarr.open_group(str(folder), mode="r"))
    image_label.ImageLabel.from_zarr(zarr.open_group(str(folder / large.LABELS_NAME), mode="r"))


def test_an_ome_zarr_input_predicts_at_level_0_and_level_1(model_dir, raw, tmp_path, monkeypatch):
    monkeypatch.setattr(large, "BLOCK_2D", BLOCK)
    _write_ome_image(tmp_path / "cells.ome.zarr", raw)
    level1 = np.asarray(large.open_lazy(tmp_path / "cells.ome.zarr", level=1))
    assert level1.shape == (100, 85)
    for level, expected in ((0, raw.shape), (1, level1.shape)):
        out = tmp_path / f"pred{level}"
        code, _, err = run_cli(["predict", model_dir, tmp_path / "cells.ome.zarr", "--out", out, "--level", level])
        assert code == 0, err
        mask = tifffile.imread(out / "cells.tif")
        assert mask.shape == expected and 0.05 < (mask > 0).mean() < 0.9
        labels, = _read_labels(out / "cells.zarr")
        np.testing.assert_array_equal(np.asarray(labels.data[0]), mask)
        transforms = zarr.open_group(str(out / "cells.zarr" / large.LABELS_NAME), mode="r").attrs["ome"][
            "multiscales"][0]["datasets"][0]["coordinateTransformations"]
        # the labels lie on the input level's grid in physical space (ome-zarr-py shifts its level 1 by half a pixel)
        assert transforms[0]["scale"] == [2.0 ** level] * 2
        assert transforms[1:] == ([] if level == 0 else [{"type": "translation", "translation": [0.5, 0.5]}])
    # level 1 segments the same cells as level 0, at half the resolution
    full, half = tifffile.imread(tmp_path / "pred0" / "cells.tif"), tifffile.imread(tmp_path / "pred1" / "cells.tif")
    assert ((full[::2, ::2] > 0) == (half > 0)).mean() > 0.9


def test_a_missing_level_and_level_for_a_tiff_are_one_line_errors(model_dir, raw, tmp_path):
    _write_ome_image(tmp_path / "cells.ome.zarr", raw)
    code, _, err = run_cli(["predict", model_dir, tmp_path / "cells.ome.zarr", "--out", tmp_path / "a", "--level", 5])
    assert code == 2 and "no resolution level 5" in err and "0: (200, 170), 1: (100, 85)" in err
    tifffile.imwrite(tmp_path / "image.tif", raw)
    code, _, err = run_cli(["predict", model_dir, tmp_path / "image.tif", "--out", tmp_path / "b", "--level", 1])
    assert_one_line_error(code, err, "applies to OME-Zarr images")


def test_ngff_axes_become_the_model_layout(tmp_path):
    """t, c and z of size 1 are dropped, channels move last; several time points are refused."""
    data = np.arange(1 * 3 * 1 * 40 * 30, dtype=np.uint16).reshape(1, 3, 1, 40, 30)
    _write_ome_image(tmp_path / "rgb.ome.zarr", data, axes="tczyx", levels=1)
    view = large.open_lazy(tmp_path / "rgb.ome.zarr")
    assert view.shape == (40, 30, 3)
    expected = np.moveaxis(data[0, :, 0], 0, -1)
    np.testing.assert_array_equal(view[5:20, 3:9], expected[5:20, 3:9])
    np.testing.assert_array_equal(np.asarray(view), expected)
    assert large.pixel_count(tmp_path / "rgb.ome.zarr") == 40 * 30
    volume = np.zeros((1, 1, 6, 40, 30), np.uint8)
    _write_ome_image(tmp_path / "vol.ome.zarr", volume, axes="tczyx", levels=1)
    assert large.open_lazy(tmp_path / "vol.ome.zarr").shape == (6, 40, 30)
    _write_ome_image(tmp_path / "movie.ome.zarr", np.zeros((2, 40, 30), np.uint8), axes="tyx", levels=1)
    with pytest.raises(InputError, match="2 points along the 't' axis"):
        large.open_lazy(tmp_path / "movie.ome.zarr")
    with pytest.raises(InputError, match="not an OME-Zarr image"):
        zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").create_array("a", shape=(4, 4), dtype=np.uint8)
        large.open_lazy(tmp_path / "plain.zarr", level=1)


def test_without_ome_zarr_py_the_levels_are_written_and_a_warning_says_why(tmp_path, monkeypatch, caplog):
    import sys

    folder = tmp_path / "m.zarr"
    large.prepare_labels_group(folder)
    zarr.open_array(str(folder / large.LABELS_NAME / "0"), mode="w", shape=(10, 10), dtype=np.uint8)[:] = 1
    monkeypatch.setitem(sys.modules, "ome_zarr.writer", None)  # import fails
    assert large.write_ngff_labels(folder, 2) == ["0"]
    assert "napari-diffseg[ome-zarr]" in caplog.text


def test_ngff_0_4_and_the_bioformats2raw_layout_are_read(raw, tmp_path):
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    write_image(raw, zarr.open_group(str(tmp_path / "v04.ome.zarr"), mode="w", zarr_format=2), axes=["y", "x"],
                fmt=FormatV04(), scale_factors=[2])
    assert large.open_lazy(tmp_path / "v04.ome.zarr", level=1).shape == (100, 85)
    root = zarr.open_group(str(tmp_path / "b2r.ome.zarr"), mode="w")
    root.attrs["ome"] = {"version": "0.5", "bioformats2raw.layout": 3}
    write_image(raw, root.create_group("0"), axes=["y", "x"], scale_factors=[2])
    np.testing.assert_array_equal(np.asarray(large.open_lazy(tmp_path / "b2r.ome.zarr")), raw)


def test_a_second_predict_names_the_labels_as_an_earlier_run_of_ours(model_dir, raw, tmp_path, monkeypatch):
    from napari_diffseg.core.data import safety

    monkeypatch.setattr(large, "BLOCK_2D", BLOCK)
    _write_ome_image(tmp_path / "cells.ome.zarr", raw, levels=1)
    argv = ["predict", model_dir, tmp_path / "cells.ome.zarr", "--out", tmp_path / "pred"]
    assert run_cli(argv)[0] == 0
    assert safety.written_by_diffseg(tmp_path / "pred" / "cells.zarr")
    assert not safety.written_by_diffseg(tmp_path / "cells.ome.zarr")  # the user's image is not ours
    code, _, err = run_cli(argv)
    assert_one_line_error(code, err, "(from an earlier diffseg run)")
    assert run_cli([*argv, "--overwrite"])[0] == 0
    assert large.is_complete(tmp_path / "pred" / "cells.zarr")
