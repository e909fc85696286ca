"""The npe2 manifest, the bundled DSB2018 sample data and its napari sample-data contribution."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
from npe2 import PluginManifest

from napari_diffseg._sample_data import (
    LABELS_NAME,
    SAMPLE_NAME,
    load_sample_pairs,
    sample_data_dir,
)

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_LABELLED, N_TEST = 12, 3, 6


def test_npe2_validate_cli_passes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "--imports", "napari-diffseg"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_manifest_from_distribution() -> None:
    manifest = PluginManifest.from_distribution("napari-diffseg")
    manifest.validate_imports()  # raises if a python_name does not import
    assert manifest.name == "napari-diffseg"
    assert manifest.display_name == "DiffSeg"
    samples = manifest.contributions.sample_data or []
    assert [sample.key for sample in samples] == ["dsb2018_nuclei"]


def test_top_level_symlinks_point_into_package() -> None:
    assert (REPO / "napari.yaml").is_symlink()
    assert (REPO / "napari.yaml").resolve() == (REPO / "napari_diffseg" / "napari.yaml").resolve()
    assert (REPO / "sample_data").is_symlink()
    assert (REPO / "sample_data").resolve() == (REPO / "napari_diffseg" / "sample_data").resolve()


def test_sample_folder_matches_split() -> None:
    root = sample_data_dir()
    split = json.loads((root / "split.json").read_text())
    assert len(split["train"]) == N_TRAIN and len(split["test"]) == N_TEST
    assert split["labelled"] == split["train"][:N_LABELLED]
    assert not set(split["train"]) & set(split["test"])
    for part in ("train", "test"):
        for sub in ("images", "masks"):
            assert sorted(p.stem for p in (root / part / sub).glob("*.tif")) == sorted(split[part])
    assert sorted(p.stem for p in (root / "train" / "labels").glob("*.tif")) == sorted(split["labelled"])
    for name in split["labelled"]:  # the demo labels are the ground-truth masks of the labelled ids
        np.testing.assert_array_equal(
            tifffile.imread(root / "train" / "labels" / f"{name}.tif"),
            tifffile.imread(root / "train" / "masks" / f"{name}.tif"),
        )
    assert (root / "README.md").read_text().count("CC0") >= 1


def test_load_sample_pairs() -> None:
    pairs = load_sample_pairs()
    assert len(pairs) == N_TRAIN
    for index, (image, mask, name) in enumerate(pairs):
        assert image.shape == (256, 256) and image.dtype == np.uint8
        assert image.std() > 0
        assert len(name) == 64
        if index < N_LABELLED:
            assert mask is not None and mask.dtype == np.uint8 and mask.shape == image.shape
            assert set(np.unique(mask)) == {0, 1}
            assert 0.005 < mask.mean() < 0.5  # nuclei cover a small but real part of the tile
        else:
            assert mask is None


def test_package_and_sample_module_do_not_import_torch() -> None:
    code = "import sys, napari_diffseg, napari_diffseg._sample_data; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_open_sample_in_viewer(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-diffseg", "dsb2018_nuclei")
    assert [layer.name for layer in layers] == [SAMPLE_NAME, LABELS_NAME]
    assert [layer.name for layer in viewer.layers] == [SAMPLE_NAME, LABELS_NAME]
    image, labels = viewer.layers[SAMPLE_NAME], viewer.layers[LABELS_NAME]
    assert image._type_string == "image" and labels._type_string == "labels"
    assert image.data.shape == (N_TRAIN, 256, 256)
    assert labels.data.shape == image.data.shape
    assert labels.data.dtype == np.uint8
    assert set(np.unique(labels.data)) == {0, 1}
    per_plane = np.asarray(labels.data).reshape(N_TRAIN, -1).sum(axis=1)
    assert (per_plane[:N_LABELLED] > 0).all()
    assert (per_plane[N_LABELLED:] == 0).all()
    # the stack is the training pool in split order
    first_image, _, _ = load_sample_pairs()[0]
    np.testing.assert_array_equal(image.data[0], first_image)


def test_distribution_declares_its_licence() -> None:
    from importlib.metadata import metadata

    meta = metadata("napari-diffseg")
    assert meta["License-Expression"] == "BSD-3-Clause"
    assert "LICENSE" in (meta.get_all("License-File") or [])
    assert (REPO / "LICENSE").read_text().startswith("BSD 3-Clause License")
