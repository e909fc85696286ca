"""What napari itself costs to add the plugin's layers (the review image, uncertainty and pseudo-label layers) in an
idle window: the time of each ``add_*`` call and of the event processing (first draw) after it. Run under Xvfb:

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_layer_cost.py
"""

from __future__ import annotations

import time

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_diffseg._widgets import _layers


def main() -> None:
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    for _ in range(20):  # let the window settle
        app.processEvents()
        time.sleep(0.02)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (256, 256), dtype=np.uint8)
    mask = (image > 128).astype(np.uint8)
    steps = [
        ("add_image (first image layer)", lambda: viewer.add_image(image, name="image")),
        ("add_image (uncertainty colormap)", lambda: viewer.add_image(
            rng.random((256, 256), dtype=np.float32), name="uncertainty", colormap=_layers.uncertainty_colormap(),
            blending="translucent", contrast_limits=(0, 1))),
        ("add_labels (first labels layer)", lambda: viewer.add_labels(
            mask, name="pseudo", colormap=_layers.pseudo_label_colormap(2))),
        ("contour = 2", lambda: setattr(viewer.layers["pseudo"], "contour", 2)),
        ("add_image (second image layer)", lambda: viewer.add_image(image, name="image 2")),
        ("add_labels (second labels layer)", lambda: viewer.add_labels(mask, name="pseudo 2")),
    ]
    print("| step | call ms | events after ms |\n|---|---:|---:|")
    for label, step in steps:
        began = time.perf_counter()
        step()
        called = time.perf_counter()
        app.processEvents()
        print(f"| {label} | {1000 * (called - began):.0f} | {1000 * (time.perf_counter() - called):.0f} |")
    viewer.close()


if __name__ == "__main__":
    main()
