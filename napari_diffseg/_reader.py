"""npe2 readers: a napari-diffseg folder dropped on napari (or opened with File > Open Folder / ``viewer.open``)
opens in the DiffSeg panels instead of as layers.

- a project folder (it holds ``project.sqlite``), or that file itself, opens in the Project panel as its "Open
  project…" button does (statuses, training settings and the layers the project had open come back);
- a model folder (it holds ``best.pt``), or its ``best.pt`` / ``model_card.json``, becomes the model of the Predict
  panel, and its model card's summary is shown there (and as a notification).

The panels are those already docked in the viewer (the all-panels widget or a separate one), else the all-panels
widget is docked. ``get_reader`` only looks at file names (a few ``stat`` calls, no torch, no Qt) and never raises:
anything that is not one of our folders or files gets None, so napari tries its other readers. The reader itself
returns napari's "read, no layers" sentinel ``[(None,)]``: what it opens are panels, not layers.

napari's builtin reader also accepts every folder, so a dropped folder makes napari ask which reader to use (tick
"remember" to skip the question for that folder); a dropped ``project.sqlite``, ``best.pt`` or ``model_card.json``
has no other reader and opens directly.
"""

from __future__ import annotations

from collections.abc import Callable
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROJECT_FILE = "project.sqlite"  # core.project.store.DB_NAME (tests/test_reader.py checks that they agree)
MODEL_FILE = "best.pt"  # core.data.io.BEST
CARD_FILE = "model_card.json"  # core.method.checkpoint.CARD (not imported: core.method.checkpoint imports torch)
NULL_LAYERS = [(None,)]  # napari's sentinel: read without error, no layer to add
MAIN_WIDGET = "DiffSeg (all panels)"  # the display name of the all-panels widget in napari.yaml


def classify(path: Any) -> tuple[str, Path] | None:
    """("project", folder) or ("model", folder) for a path napari hands to a reader (a folder, one of the marker
    files, or a list of one such path); None for anything else, also for paths that cannot be looked at."""
    try:
        if isinstance(path, (list, tuple)):
            if len(path) != 1:
                return None
            path = path[0]
        if not isinstance(path, (str, Path)) or not str(path) or "://" in str(path):
            return None
        path = Path(path)
        if path.is_file():
            if path.name == PROJECT_FILE:
                return "project", path.parent
            if path.name in (MODEL_FILE, CARD_FILE) and (path.parent / MODEL_FILE).is_file():
                return "model", path.parent
            return None
        if path.is_dir():
            if (path / PROJECT_FILE).is_file():
                return "project", path
            if (path / MODEL_FILE).is_file():
                return "model", path
    except (OSError, ValueError):  # unreadable, a name the OS refuses, embedded NUL
        return None
    return None


def get_reader(path: Any) -> Callable[[Any], list] | None:
    """npe2 reader command: a reader for a napari-diffseg project or model (folder or marker file), else None."""
    found = classify(path)
    if found is None:
        return None
    kind, folder = found
    return (lambda _path: open_project(folder)) if kind == "project" else (lambda _path: open_model(folder))


def _current_viewer() -> Any:
    import napari

    return napari.current_viewer()


def _panel(viewer: Any, name: str) -> Any:
    """The DiffSeg panel ``name`` ("Project", "Predict", ...) of ``viewer``, brought to the front: that of a docked
    all-panels widget or a docked separate panel, else of a newly docked all-panels widget."""
    from napari_diffseg._widgets.main import PANEL_CLASSES, DiffsegWidget

    for widget in list(viewer.window.dock_widgets.values()):
        if isinstance(widget, DiffsegWidget):
            _raise_dock(widget)
            return widget.show_panel(name)
        if isinstance(widget, PANEL_CLASSES[name]):
            _raise_dock(widget)
            return widget
    _, widget = viewer.window.add_plugin_dock_widget("napari-diffseg", MAIN_WIDGET)
    return widget.show_panel(name)


def _raise_dock(widget: Any) -> None:
    dock = widget.parent()
    if dock is not None and hasattr(dock, "raise_"):
        dock.show()
        dock.raise_()


def _no_viewer(folder: Path) -> list:
    log.warning("%s: no napari viewer to open it in", folder)
    return NULL_LAYERS


def open_project(folder: Path) -> list:
    """Open the project ``folder`` in the Project panel of the current viewer (errors are shown there, as for the
    Open button); returns the no-layers sentinel."""
    viewer = _current_viewer()
    if viewer is None:
        return _no_viewer(folder)
    _panel(viewer, "Project").open_project(folder)
    return NULL_LAYERS


def open_model(folder: Path) -> list:
    """Make ``folder`` the model of the Predict panel and show its model card's summary; returns the no-layers
    sentinel."""
    from napari.utils import notifications

    viewer = _current_viewer()
    if viewer is None:
        return _no_viewer(folder)
    panel = _panel(viewer, "Predict")
    panel.model_row.setText(str(folder))
    summary = model_summary(folder)
    panel.status_label.setText(summary)
    notifications.show_info(summary)
    return NULL_LAYERS


def model_summary(folder: Path) -> str:
    """A few lines about the model in ``folder`` from its model card (what ``diffseg info`` says, shorter); says so
    when the card is missing or unreadable, never raises."""
    folder = Path(folder)
    lines = [f"Model {folder.name} ({folder})"]
    try:
        card = json.loads((folder / CARD_FILE).read_text())
        if not isinstance(card, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        return "\n".join(lines + [f"no {CARD_FILE}: a model without its card"])
    except (OSError, ValueError) as error:
        return "\n".join(lines + [f"{CARD_FILE} unreadable ({type(error).__name__})"])
    try:
        network = card.get("network") or {}
        dims, channels = network.get("spatial_dims"), network.get("image_channels")
        kind = f"{dims}D {'RGB' if channels == 3 else 'grey'}" if dims else "?"
        lines.append(f"method: {card.get('method', 'unknown')}; {kind} images, {network.get('num_classes', '?')} "
                      "classes")
        data = card.get("data") or []
        labelled = sum(1 for entry in data if isinstance(entry, dict) and entry.get("label_sha256"))
        training = card.get("training") or {}
        lines.append(f"trained on {len(data)} image(s), {labelled} labelled; {training.get('steps', '?')} steps")
        from napari_diffseg.core.method.events import FitReport

        fit = FitReport.from_dict(card.get("metrics") or {})
        if fit is not None:
            lines.append(f"kept: {fit.describe()}")
    except Exception as error:  # a card edited by hand: say so, the model may still predict
        lines.append(f"{CARD_FILE}: content not understood ({type(error).__name__})")
    return "\n".join(lines)
