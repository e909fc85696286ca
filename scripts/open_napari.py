"""Start napari with the bundled DSB2018 sample open and the five DiffSeg panels docked (the README's GUI command).

    python scripts/open_napari.py                  # the sample, the panels (Project in front)
    python scripts/open_napari.py --project DIR    # ... and open (or create, if DIR is new/empty) a project

``napari`` alone cannot open a sample and dock plugin panels from the command line, hence this script. It also
owns :func:`open_viewer`, which ``scripts/screenshots.py`` and ``benchmarks/bench_gui_event_loop.py`` reuse so
that all three show the same window.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

PLUGIN = "napari-diffseg"
SAMPLE_KEY = "dsb2018_nuclei"
PANELS = ("Project", "Annotate", "Train", "Review", "Predict")  # npe2 display names, in docking order
WINDOW_SIZE = (1600, 1000)
DOCK_WIDTH = 520

log = logging.getLogger("open_napari")


def open_viewer(show: bool = True, size: tuple[int, int] | None = WINDOW_SIZE) -> tuple[Any, dict[str, Any],
                                                                                           dict[str, Any]]:
    """A napari viewer with the sample opened and the panels docked as tabs on the right (Project in front).

    Returns ``(viewer, panels, docks)``; panels and docks are keyed by the names in :data:`PANELS`.
    """
    import napari
    from qtpy.QtCore import Qt

    viewer = napari.Viewer(title="napari-diffseg", show=show)
    if size is not None:
        viewer.window._qt_window.resize(*size)
    viewer.open_sample(PLUGIN, SAMPLE_KEY)
    viewer.dims.set_current_step(0, 0)  # a labelled plane (the first 3 have masks), not the middle one
    panels: dict[str, Any] = {}
    docks: dict[str, Any] = {}
    for name in PANELS:
        docks[name], panels[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True)
        docks[name].setWindowTitle(name)  # the tab text; "Train (napari-diffseg)" would be cut off
    viewer.window._qt_window.resizeDocks([docks["Project"]], [DOCK_WIDTH], Qt.Horizontal)
    raise_panel(docks["Project"])
    return viewer, panels, docks


def raise_panel(dock: Any) -> bool:
    """Bring a tabbed panel to the front; True once it is on screen (Qt may still be setting up the tab bar)."""
    dock.raise_()
    widget = dock.widget()
    return widget.isVisible() and not widget.visibleRegion().isEmpty()


def open_or_create_project(project_panel: Any, folder: Path) -> Any:
    """Open the project in ``folder``, or create it (adding the sample with its labels) when the folder is new."""
    folder = Path(folder)
    if (folder / "project.sqlite").is_file():
        return project_panel.open_project(folder)
    project = project_panel.create_project(folder)
    if project is not None:
        project_panel.add_layer()  # the sample stack + its labels: one image per plane, 3 labelled
    return project


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, help="open this project folder (created from the sample if new)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import napari
    from qtpy.QtCore import QTimer

    viewer, panels, docks = open_viewer()
    if args.project is not None:
        open_or_create_project(panels["Project"], args.project)
    QTimer.singleShot(0, viewer.reset_view)  # once the window has its size
    QTimer.singleShot(0, lambda: raise_panel(docks["Project"]))
    log.info("napari is open with the DSB2018 sample and the DiffSeg panels (Plugins > DiffSeg)")
    napari.run()
    del viewer


if __name__ == "__main__":
    main()
