"""The napari panels of napari-diffseg (Project, Annotate, Train, Review, Predict), contributed as npe2 widgets.

Each panel is a thin QWidget class taking ``(viewer, state)``; the ``*Widget`` subclasses are the npe2 entry
points: napari constructs them with only the viewer, and they look up the viewer's shared
:class:`~napari_diffseg._state.DiffsegState`. Nothing here imports torch at module import time.
"""
