"""napari-diffseg: semi-supervised segmentation with a diffusion teacher and a co-trained student.

The package root stays light (no torch import) so napari starts fast; the engine lives in
``napari_diffseg.core`` and the command line in ``napari_diffseg.cli``.
"""

__version__ = "0.1.0"
