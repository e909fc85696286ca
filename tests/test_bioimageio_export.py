"""bioimage.io export (core/prediction/bioimageio_export.py, ``diffseg export``): a tiny model trained on synthetic blobs is
exported, bioimageio.core's test_model passes offline (sockets refused: the package is self-contained), and a
prediction through bioimageio.core agrees with ``diffseg predict`` on >= 99.9 % of the pixels of a sample image;
the TorchScript module matches SegmentationModel for the working scale, tiles, odd sizes, RGB and 3D; user mistakes
are one-line errors."""

from __future__ import annotations

import contextlib
import io as _io
import shutil
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("bioimageio.spec")
pytest.importorskip("bioimageio.core")

from napari_diffseg import cli  # noqa: E402
from napari_diffseg.core.prediction.bioimageio_export import (ExportError, export_bioimageio, raw_to_tensor,  # noqa: E402
                                                   scripted_module, spec_preprocess)
from napari_diffseg.core.method.checkpoint import BEST, ModelCheckpoint  # noqa: E402
from napari_diffseg.core.data.io import read_mask, write_tiff_atomic  # noqa: E402
from napari_diffseg.core.prediction.model import SegmentationModel  # noqa: E402
from napari_diffseg.core.data.synthetic import make_blobs_dataset, write_dataset  # noqa: E402
from napari_diffseg.core.method.teacher import DiffusionTwin, NetworkConfig  # noqa: E402

FAST = ["--steps", "30", "--width", "8", "--patch-size", "32", "32"]
AGREEMENT = 0.999


def run_cli(argv) -> tuple[int, str, str]:
    out, err = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def offline(monkeypatch):
    """No network: any connection attempt fails (the package must hold everything it needs)."""
    def refuse(*args, **kwargs):
        raise OSError("network access attempted during an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny 2D model trained through the CLI on blobs, and a larger sample image of the same kind."""
    data = tmp_path_factory.mktemp("blobs")
    write_dataset(data, make_blobs_dataset(6, (48, 48), seed=1), 3)
    model = tmp_path_factory.mktemp("model") / "model"
    code, _, err = run_cli(["train", data / "images", "--labels", data / "labels", "--out", model,
                            "--budget", "120", "--seed", "3", *FAST])
    assert code == 0, err
    sample_dir = tmp_path_factory.mktemp("sample")
    sample = sample_dir / "sample.tif"
    write_tiff_atomic(sample, make_blobs_dataset(1, (160, 144), seed=7)[0][0])
    return {"model": model, "sample": sample}


def _with_working_scale(model_dir: Path, target: Path, scale: float) -> Path:
    """A copy of a model folder whose best.pt says ``scale`` (same weights)."""
    shutil.copytree(model_dir, target, ignore=shutil.ignore_patterns("pseudo_labels", "*.lock"))
    saved = ModelCheckpoint.load(target / BEST)
    saved.working_scale = scale
    saved.save(target / BEST)
    return target


def _bioimageio_mask(package: Path, image: np.ndarray) -> np.ndarray:
    from bioimageio.core import load_description, predict

    descr = load_description(package)
    sample = predict(model=descr, inputs={"image": raw_to_tensor(image)})
    return np.asarray(sample.members["mask"].data)[0, 0]


# ------------------------------------------------------------------------------------------------- the package
def test_export_validates_offline_and_agrees_with_predict(trained, tmp_path, offline):
    from bioimageio.core import test_model

    package = tmp_path / "model.zip"
    code, out, err = run_cli(["export", trained["model"], "--out", package, "--sample", trained["sample"],
                              "--author", "Ada Lovelace"])
    assert code == 0, err
    assert str(package) in out
    names = set(zipfile.ZipFile(package).namelist())
    for name in ("rdf.yaml", "mask_pathway.pt", "test_input.npy", "test_output.npy", "cover.png", "README.md",
                 "sample_input.tif", "sample_output.tif"):
        assert name in names, names
    rdf = zipfile.ZipFile(package).read("rdf.yaml").decode()
    for fragment in ("2504.01547", "CC-BY-4.0", "scale_range", "clip", "torchscript", "Ada Lovelace",
                     "format_version: 0.5"):
        assert fragment in rdf, fragment
    readme = zipfile.ZipFile(package).read("README.md").decode()
    assert "working scale" in readme and "not expressible" in readme

    summary = test_model(package)
    assert summary.status == "passed", summary.format()

    # bioimageio.core (its own preprocessing, the TorchScript weights) against `diffseg predict`
    image = make_blobs_dataset(1, (720, 660), seed=11)[0][0]  # 2 x 2 tiles of napari-diffseg's 512-px tiles
    images = tmp_path / "images"
    images.mkdir()
    write_tiff_atomic(images / "new.tif", image)
    code, _, err = run_cli(["predict", trained["model"], images, "--out", tmp_path / "masks", "--backend", "torch"])
    assert code == 0, err
    expected = read_mask(tmp_path / "masks" / "new.tif")
    got = _bioimageio_mask(package, image)
    assert got.shape == expected.shape
    assert 0.02 < expected.mean() < 0.98, "the tiny model must segment something for the comparison to mean much"
    assert (got == (expected > 0)).mean() >= AGREEMENT


def test_working_scale_lives_in_the_package(trained, tmp_path, offline):
    from bioimageio.core import test_model

    model_dir = _with_working_scale(trained["model"], tmp_path / "half", 0.5)
    package = export_bioimageio(model_dir, tmp_path / "half.zip", sample=trained["sample"])
    assert test_model(package).status == "passed"
    image = make_blobs_dataset(1, (157, 203), seed=12)[0][0]  # odd sizes: rounding of the scaled shape, padding
    expected = SegmentationModel.load(model_dir, backend="torch").predict(image).mask
    got = _bioimageio_mask(package, image)
    assert got.shape == expected.shape
    assert (got == expected).mean() >= AGREEMENT
    assert "working scale 0.5" in zipfile.ZipFile(package).read("README.md").decode()


@pytest.mark.parametrize("kind", ["rgb", "3d", "3-classes"])
def test_module_matches_the_model(tmp_path, kind):
    """The scripted module on the spec's preprocessing gives SegmentationModel's mask (random networks)."""
    torch.manual_seed(0)
    spatial_dims, channels, classes = {"rgb": (2, 3, 2), "3d": (3, 1, 2), "3-classes": (2, 1, 3)}[kind]
    net = DiffusionTwin(NetworkConfig(spatial_dims, channels, classes, base_channels=4, depth=2))
    ModelCheckpoint(
        {"spatial_dims": spatial_dims, "image_channels": channels, "num_classes": classes, "base_channels": 4,
         "depth": 2, "timesteps": 1000},
        net.mask_path.state_dict(), 0.5, 0.75 if kind == "rgb" else 1.0).save(tmp_path / BEST)
    model = SegmentationModel.load(tmp_path, backend="torch")
    shape = (72, 37, 41) if spatial_dims == 3 else (61, 70)  # 3D: two tiles of 64 along z
    image = make_blobs_dataset(1, shape, rgb=channels == 3, ndim=spatial_dims, seed=2)[0][0]
    expected = model.predict(image).mask
    module = scripted_module(model)
    with torch.inference_mode():
        got = module(torch.from_numpy(spec_preprocess(raw_to_tensor(image)))).numpy()[0, 0]
    assert got.dtype == np.uint8 and got.shape == expected.shape
    assert (got == expected).mean() >= AGREEMENT


# ------------------------------------------------------------------------------------------------- mistakes
def test_mistakes_are_one_line_errors(trained, tmp_path, monkeypatch):
    existing = tmp_path / "exists.zip"
    existing.write_bytes(b"")
    cases = [
        (["--out", existing], "--overwrite"),
        (["--out", tmp_path / "model.tar"], ".zip"),
        (["--out", tmp_path / "missing" / "m.zip"], "not found"),
        (["--out", tmp_path / "m.zip", "--license", "NOT-A-LICENCE"], "SPDX"),
        (["--out", tmp_path / "m.zip", "--name", "a/b"], "5 to 128 letters"),
    ]
    for extra, fragment in cases:
        code, _, err = run_cli(["export", trained["model"], *extra])
        assert code == 2, err
        assert err.startswith("diffseg: error: ") and len(err.strip().splitlines()) == 1, err
        assert fragment in err, err
    assert existing.read_bytes() == b""
    code, _, err = run_cli(["export", tmp_path / "no_model", "--out", tmp_path / "m.zip"])
    assert code == 2 and "not found" in err
    assert not (tmp_path / "m.zip").exists()
    monkeypatch.setitem(__import__("sys").modules, "bioimageio.spec", None)  # the [export] extra missing
    with pytest.raises(ExportError, match=r"napari-diffseg\[export\]"):
        export_bioimageio(trained["model"], tmp_path / "m.zip")


# ------------------------------------------------------------------------------------------------- the panel
def test_predict_panel_exports_in_a_worker_and_shows_errors_in_one_line(trained, make_napari_viewer, qtbot,
                                                                        tmp_path, monkeypatch):
    from napari.utils import notifications

    from napari_diffseg._state import DiffsegState
    from napari_diffseg._widgets.predict import PredictPanel

    errors: list[str] = []
    monkeypatch.setattr(notifications, "show_error", lambda message: errors.append(str(message)))
    panel = PredictPanel(make_napari_viewer(), DiffsegState())
    panel.model_row.setText(str(trained["model"]))
    package = tmp_path / "panel.zip"
    assert panel.export(package) is not None
    assert not panel.export_button.isEnabled()
    qtbot.waitUntil(lambda: panel.export_worker is None, timeout=60_000)
    assert package.is_file() and zipfile.is_zipfile(package)
    assert panel.status_label.text() == f"bioimage.io package written: {package}"
    assert panel.export_button.isEnabled() and not errors

    panel.export(package)  # exists: refused, one line, the package kept
    qtbot.waitUntil(lambda: panel.export_worker is None, timeout=60_000)
    assert len(errors) == 1 and "\n" not in errors[0] and "exists" in errors[0]
    assert panel.status_label.text().startswith("Export failed: ")
    assert zipfile.is_zipfile(package)

    panel.model_row.setText("")
    assert panel.export(package) is None and "choose a model folder" in errors[-1]
