"""The engine and the command line work without napari and Qt (a headless GPU node installs only the base
dependencies): `diffseg train` and `diffseg predict` run on the bundled sample in a process where importing
napari, Qt, magicgui or npe2 fails, and `napari_diffseg.core` imports none of them."""

from __future__ import annotations

from pathlib import Path
import subprocess
import sys

import tifffile

SAMPLE = Path(__file__).resolve().parents[1] / "napari_diffseg" / "sample_data"
GUI_PACKAGES = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "npe2", "superqt", "vispy")

WITHOUT_GUI = f"""
import importlib.abc, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {GUI_PACKAGES!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (headless test)")

sys.meta_path.insert(0, NotInstalled())
"""


def run_headless(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_GUI + code], capture_output=True, text=True, timeout=600)


def test_core_imports_no_gui_package():
    result = run_headless(
        "import napari_diffseg.core.method.training, napari_diffseg.core.project.rounds, napari_diffseg.core.prediction.model, "
        "napari_diffseg.cli\n"
        f"print(sorted(name for name in sys.modules if name.split('.')[0] in {GUI_PACKAGES!r}))")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_train_and_predict_on_the_sample_without_napari_or_qt(tmp_path):
    model, masks = tmp_path / "model", tmp_path / "masks"
    train = run_headless(
        "from napari_diffseg.cli import main\n"
        f"sys.exit(main(['-q', 'train', {str(SAMPLE / 'train' / 'images')!r}, '--labels', "
        f"{str(SAMPLE / 'train' / 'labels')!r}, '--out', {str(model)!r}, '--steps', '2', '--width', '8', "
        "'--patch-size', '64', '64', '--threads', '1']))")
    assert train.returncode == 0, train.stderr[-2000:]
    predict = run_headless(
        "from napari_diffseg.cli import main\n"
        f"sys.exit(main(['-q', 'predict', {str(model)!r}, {str(SAMPLE / 'test' / 'images')!r}, '--out', "
        f"{str(masks)!r}, '--threads', '1']))")
    assert predict.returncode == 0, predict.stderr[-2000:]
    written = sorted(masks.glob("*.tif"))
    assert [p.name for p in written] == sorted(p.name for p in (SAMPLE / "test" / "images").glob("*.tif"))
    assert tifffile.imread(written[0]).dtype.name == "uint8"
