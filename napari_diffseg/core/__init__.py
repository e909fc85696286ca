"""The Qt-free engine of napari-diffseg, one sub-package per concern: data, method, prediction, project.

Nothing in this package imports Qt or napari; the GUI and the CLI are thin layers on top of it.
"""
