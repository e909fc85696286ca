"""Screenshots of the human-in-the-loop cycle in a real napari window, for the README (docs/screenshots/).

Opens napari (a real window: run it under Xvfb with QT_QPA_PLATFORM=xcb, see scripts/screenshots.sh), loads the
bundled DSB2018 sample, docks the five DiffSeg panels, and drives them like a user would: a project from the
sample, training with a short budget, review of a pseudo-label with its uncertainty, an edit, accept, and a
prediction on a test image. After each step it saves the whole window, downscaled and palette-quantised to keep
the committed PNGs small.

    bash scripts/screenshots.sh                    # at 1280x800 and 1920x1080, under xvfb-run
    python scripts/screenshots.py --budget 75 --size 1280x800 --out docs/screenshots/1280x800

``--size`` is the window size (the X screen must be at least as large); the DiffSeg docks get the width a user
would see there (DOCK_WIDTHS), and the PNGs keep the window's own pixels unless ``--width`` asks for less.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import logging
from pathlib import Path
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from open_napari import open_viewer, raise_panel  # noqa: E402  (the launcher of scripts/napari_demo.sh)

REPO = Path(__file__).resolve().parents[1]
TEST_IMAGE = "3b957237bc1e09740b58a414282393d3a91dde996b061e7061f4198fb03dab2e"

log = logging.getLogger("screenshots")

DOCK_WIDTHS = {1280: 340, 1920: 420}  # the DiffSeg dock's width per window width (the laptop: 340 px)


def pump(seconds: float = 0.0) -> None:
    """Run the Qt event loop for ``seconds`` (at least one pass)."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    deadline = time.monotonic() + seconds
    while True:
        app.processEvents()
        if time.monotonic() >= deadline:
            return
        time.sleep(0.01)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Run the event loop until ``predicate()`` holds; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        pump(0.05)


class Camera:
    """Saves the whole napari window as docs/screenshots/NN_<step>.png."""

    def __init__(self, viewer: Any, out_dir: Path, width: int, colours: int):
        self.viewer = viewer
        self.out_dir = out_dir
        self.width = width
        self.colours = colours
        self.count = 0
        self.saved: list[Path] = []
        out_dir.mkdir(parents=True, exist_ok=True)

    def shot(self, step: str, settle: float = 1.0) -> Path:
        from napari._qt.dialogs.qt_notification import NapariQtNotification
        from PIL import Image as PILImage

        for toast in self.viewer.window._qt_window.findChildren(NapariQtNotification):
            toast.close()  # e.g. napari's "PyQt5 backend is deprecated" warning, which would cover the canvas
        pump(settle)  # let the canvas and the docks repaint
        array = self.viewer.screenshot(canvas_only=False, flash=False)
        image = PILImage.fromarray(np.asarray(array)[..., :3])
        if self.width and image.width > self.width:
            image = image.resize((self.width, round(image.height * self.width / image.width)), PILImage.LANCZOS)
        if self.colours:
            image = image.quantize(colors=self.colours, method=PILImage.Quantize.MEDIANCUT,
                                   dither=PILImage.Dither.NONE)
        self.count += 1
        path = self.out_dir / f"{self.count:02d}_{step}.png"
        image.save(path, optimize=True)
        self.saved.append(path)
        log.info("saved %s (%d KiB)", path.relative_to(REPO) if path.is_relative_to(REPO) else path,
                 path.stat().st_size // 1024)
        return path


def correct_pseudo_label(layer: Any, name: str) -> int:
    """Edit the pseudo-label as a user would: fill nuclei it missed, erase false detections (from the sample's
    ground truth), through the Labels layer's painting API. Returns the number of changed pixels."""
    from skimage.measure import label as connected

    from napari_diffseg._sample_data import sample_data_dir
    from napari_diffseg.core.data.io import read_mask

    truth = read_mask(sample_data_dir() / "train" / "masks" / f"{name}.tif").astype(bool)
    current = np.asarray(layer.data) > 0
    changed = 0
    for wrong, value in ((truth & ~current, 1), (current & ~truth, 0)):
        regions = connected(wrong)
        sizes = np.bincount(regions.ravel())[1:]
        for region in np.argsort(sizes)[::-1][:6] + 1:  # the largest mistakes
            if sizes[region - 1] < 20:
                break
            indices = np.nonzero(regions == region)
            layer.data_setitem(indices, value)
            changed += len(indices[0])
    if changed == 0:  # a perfect pseudo-label: still show an edit (a brush stroke of label 1)
        layer.brush_size = 12
        for x in range(40, 80, 4):
            layer.paint((40, x), 1)
        changed = int(np.sum(np.asarray(layer.data) > 0) - np.sum(current))
    return changed


def show_panel(docks: dict[str, Any], name: str) -> None:
    wait_until(lambda: raise_panel(docks[name]), 10, f"the {name} panel to come to the front")


def hide_layers(viewer: Any) -> None:
    for layer in viewer.layers:
        layer.visible = False


def run(budget: float, out_dir: Path, width: int, colours: int, project_dir: Path,
        size: tuple[int, int] = (1600, 1000)) -> list[Path]:
    import tifffile

    from napari_diffseg._sample_data import sample_data_dir
    from napari_diffseg._state import Status
    from napari_diffseg._widgets import _layers

    from qtpy.QtCore import Qt

    viewer, panels, docks = open_viewer(show=True, size=size)
    if size[0] in DOCK_WIDTHS:
        viewer.window._qt_window.resizeDocks([docks["Project"]], [DOCK_WIDTHS[size[0]]], Qt.Horizontal)
    camera = Camera(viewer, out_dir, width, colours)
    project_panel, train, review, predict = (panels[n] for n in ("Project", "Train", "Review", "Predict"))
    state = project_panel.state
    wait_until(lambda: viewer.window._qt_window.isVisible(), 10, "the window")
    pump(0.5)
    viewer.reset_view()  # now that the window has its final size
    show_panel(docks, "Project")

    # 1. the sample and the panels
    camera.shot("sample_and_panels", settle=2.0)

    # 2. a project from the sample: one click on "Add layer" (one image per plane, 3 planes labelled)
    project = project_panel.create_project(project_dir)
    if project is None:
        raise RuntimeError(f"could not create a project in {project_dir}")
    project_panel.add_layer_button.click()
    wait_until(lambda: project_panel.import_worker is None, 60, "the images to be added")
    log.info("project: %s", project_panel.counts_label.text())
    camera.shot("project")

    # 3. training with a short budget, default settings otherwise
    show_panel(docks, "Train")
    train.budget.setValue(int(budget))
    train.start_button.click()
    if state.status != Status.RUNNING:
        raise RuntimeError(f"training did not start: {state.last_error or state.status}")
    wait_until(lambda: state.step > 0 and state.losses and state.losses[-1][1] == "cotrain"
               and len(train.plot.points) > 20, budget + 120, "co-training")
    pump(min(10.0, budget / 6))
    camera.shot("training")
    wait_until(lambda: not state.busy and state.worker is None, budget + 300, "the end of training")
    if state.status != Status.DONE:
        raise RuntimeError(f"training ended with status {state.status.value}: {state.last_error}")
    camera.shot("trained")

    # 4. review: the most uncertain pseudo-label over its image, with the uncertainty map
    hide_layers(viewer)
    show_panel(docks, "Review")
    wait_until(lambda: review.queue, 10, "the review queue")
    if review.current_name() is None:
        review.next()
    wait_until(lambda: review.current_name() is not None, 10, "a pseudo-label in the Review panel")
    viewer.reset_view()
    name = review.current_name()
    camera.shot("review")

    # 5. correct it with the Labels tools (done programmatically), then accept: ground truth at once
    layer = viewer.layers[_layers.REVIEW_PSEUDO]
    changed = correct_pseudo_label(layer, name)
    viewer.layers[_layers.REVIEW_UNCERTAINTY].visible = False  # see the edit clearly
    log.info("edited the pseudo-label of %s: %d pixels changed", name, changed)
    camera.shot("edited")
    review.accept_button.click()
    if project.record(name).status.value != "accepted":
        raise RuntimeError(f"{name} was not accepted")
    show_panel(docks, "Project")
    camera.shot("accepted")

    # 6. segment a test image with the trained model
    hide_layers(viewer)
    path = sample_data_dir() / "test" / "images" / f"{TEST_IMAGE}.tif"
    viewer.add_image(tifffile.imread(path), name="test image")
    show_panel(docks, "Predict")
    predict.use_latest_model()
    predict.layer_combo.setCurrentText("test image")
    predict.uncertainty_check.setChecked(False)
    predict.run_button.click()
    wait_until(lambda: predict.worker is None, 300, "the prediction")
    if "test image prediction" not in viewer.layers:
        raise RuntimeError(f"no prediction layer: {predict.status_label.text()}")
    viewer.layers["test image prediction"].contour = 2  # outlines: the nuclei stay visible underneath
    viewer.reset_view()
    camera.shot("predict")
    viewer.close()
    return camera.saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=75.0, help="training time in seconds (default 75)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots", help="output folder")
    parser.add_argument("--size", default="1600x1000", help="window size WIDTHxHEIGHT (default 1600x1000)")
    parser.add_argument("--width", type=int, default=0, help="downscale screenshots to this width (px; 0: keep)")
    parser.add_argument("--colours", type=int, default=256, help="palette size of the PNGs (0: full colour)")
    parser.add_argument("--keep-project", action="store_true", help="keep the temporary project folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    temp = Path(tempfile.mkdtemp(prefix="diffseg-screenshots-"))
    try:
        size = tuple(int(value) for value in args.size.lower().split("x"))
        saved = run(args.budget, args.out, args.width, args.colours, temp / "project", size=size)
    finally:
        if args.keep_project:
            log.info("project kept in %s", temp / "project")
        else:
            shutil.rmtree(temp, ignore_errors=True)
    print("\n".join(str(path) for path in saved))
    return 0


if __name__ == "__main__":
    sys.exit(main())
