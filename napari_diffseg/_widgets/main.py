"""The "DiffSeg" entry point: the five panels (Project, Annotate, Train, Review, Predict) as tabs of one dock, so
that the plugin fits a laptop screen (stacked as five docks they needed ~1900 px of height)."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QScrollArea, QTabWidget, QWidget

from napari_diffseg._state import state_for_viewer
from napari_diffseg._widgets._closing import guard_closing
from napari_diffseg._widgets.annotate import AnnotatePanel
from napari_diffseg._widgets.predict import PredictPanel
from napari_diffseg._widgets.project import ProjectPanel
from napari_diffseg._widgets.review import ReviewPanel
from napari_diffseg._widgets.train import TrainPanel

PANEL_CLASSES = {"Project": ProjectPanel, "Annotate": AnnotatePanel, "Train": TrainPanel, "Review": ReviewPanel,
                 "Predict": PredictPanel}


class DiffsegWidget(QTabWidget):
    """npe2 entry point: one tab per panel, each in a scroll area (the window's height never depends on a panel's);
    the panels share the viewer's state like separately opened ones."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        state = self.state = state_for_viewer(napari_viewer)
        self.panels: dict[str, QWidget] = {}
        for name, cls in PANEL_CLASSES.items():
            panel = cls(napari_viewer, state)
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setWidget(panel)
            self.addTab(scroll, name)
            self.panels[name] = panel

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt naming
        super().showEvent(event)
        guard_closing(self, self.state)  # closing this dock (or napari) during training asks first

    def show_panel(self, name: str) -> QWidget:
        """Bring a panel's tab to the front."""
        self.setCurrentIndex(list(self.panels).index(name))
        return self.panels[name]
