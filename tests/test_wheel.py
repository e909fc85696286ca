"""What a release ships: an sdist of this tree builds a wheel, and that wheel installed into a fresh virtual environment
runs `diffseg`, carries the npe2 manifest and the sample data, and declares the metadata the napari hub shows.

Offline and quick (about half a minute): the build runs without isolation on this environment's setuptools and
setuptools-scm (the [testing] extra), and the fresh environment sees this environment's dependencies through a .pth
file instead of downloading them, so only the wheel itself is installed (--no-deps). The tree is copied first (what
git tracks or would track), so the build leaves nothing in the checkout; the copy has no git metadata, so the version
is pyproject's fallback_version, which is also what an install from a source archive gets.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(args: list, cwd: Path, env: dict | None = None, timeout: int = 300) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _copy_tree(dest: Path) -> None:
    if not (REPO / ".git").exists():  # a source archive: copy it without the local environment and build outputs
        ignore = shutil.ignore_patterns(".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "runs")
        shutil.copytree(REPO, dest, symlinks=True, ignore=ignore)
        return
    listed = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO)
    for name in filter(None, listed.split("\0")):
        src = REPO / name
        if not src.exists() and not src.is_symlink():  # deleted in the working tree
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, target)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("release")
    src, dist = root / "src", root / "dist"
    _copy_tree(src)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SETUPTOOLS_SCM_PRETEND_VERSION")}
    # sdist first, then the wheel from the unpacked sdist: the path `python -m build` takes for a release
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, src], cwd=root, env=env, timeout=600)
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    return {"root": root, "sdist": sdist, "wheel": wheel}


@pytest.fixture(scope="module")
def venv(built) -> Path:
    venv = built["root"] / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=built["root"])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--quiet",
          built["wheel"]], cwd=built["root"])
    # the dependencies (torch, npe2, napari, ...) come from this environment, appended after the fresh site-packages
    fresh_site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv).strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(fresh_site) / "_diffseg_test_deps.pth").write_text("\n".join(sorted(ours)) + "\n")
    return venv


@pytest.mark.slow
def test_wheel_and_sdist_contents(built) -> None:
    fallback = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools_scm"]["fallback_version"]
    assert built["wheel"].name == f"napari_diffseg-{fallback}-py3-none-any.whl"
    names = zipfile.ZipFile(built["wheel"]).namelist()
    assert "napari_diffseg/napari.yaml" in names
    assert "napari_diffseg/sample_data/split.json" in names
    assert sum(n.startswith("napari_diffseg/sample_data/train/images/") for n in names) == 12
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "scripts/", "docs/"))]
    (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    meta = zipfile.ZipFile(built["wheel"]).read(meta_name).decode()
    assert f"Version: {fallback}\n" in meta
    assert "License-Expression: BSD-3-Clause" in meta
    assert "Classifier: Framework :: napari" in meta
    assert "Keywords: napari" in meta
    assert "Description-Content-Type: text/markdown" in meta
    for label in ("Source Code", "Bug Tracker", "Documentation", "User Support"):  # the napari hub's link labels
        assert f"Project-URL: {label}, https://" in meta
    entry_points = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(built["wheel"]).read(entry_points[0]).decode()
    assert "diffseg = napari_diffseg.cli:main" in text and "napari-diffseg = napari_diffseg:napari.yaml" in text
    import tarfile

    with tarfile.open(built["sdist"]) as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
    assert {"README.md", "LICENSE", "pyproject.toml", "PKG-INFO", "napari_diffseg/napari.yaml"} <= members


@pytest.mark.slow
def test_installed_wheel_runs_the_cli_and_loads_the_manifest(built, venv, tmp_path) -> None:
    fallback = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools_scm"]["fallback_version"]
    diffseg = venv / "bin" / "diffseg"
    assert "usage: diffseg" in _run([diffseg, "--help"], cwd=tmp_path)
    assert _run([diffseg, "--version"], cwd=tmp_path).strip() == f"diffseg {fallback}"
    code = """
import json, napari_diffseg
from importlib.metadata import distribution
from npe2 import PluginManifest
from napari_diffseg._sample_data import load_sample_pairs
manifest = PluginManifest.from_distribution("napari-diffseg")
manifest.validate_imports()
print(json.dumps({
    "package": napari_diffseg.__file__,
    "dist": str(distribution("napari-diffseg").locate_file("")),
    "version": napari_diffseg.__version__,
    "name": manifest.name,
    "display_name": manifest.display_name,
    "widgets": len(manifest.contributions.widgets or []),
    "samples": [s.key for s in manifest.contributions.sample_data or []],
    "pairs": len(load_sample_pairs()),
}))
"""
    found = json.loads(_run([venv / "bin" / "python", "-c", code], cwd=tmp_path).strip().splitlines()[-1])
    assert Path(found["package"]).is_relative_to(venv), found  # the wheel's copy, not the checkout
    assert Path(found["dist"]).is_relative_to(venv), found
    assert found["version"] == fallback
    assert (found["name"], found["display_name"]) == ("napari-diffseg", "DiffSeg")
    assert found["widgets"] == 6 and found["samples"] == ["dsb2018_nuclei"]
    assert found["pairs"] == 12
