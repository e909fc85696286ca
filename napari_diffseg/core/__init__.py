"""The Qt-free engine of napari-diffseg: data I/O, project store, diffusion teacher, training, prediction, metrics.

Nothing in this package imports Qt or napari; the GUI and the CLI are thin layers on top of it.
"""
