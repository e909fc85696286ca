"""napari-diffseg: semi-supervised segmentation with a diffusion teacher and a co-trained student.

The package root stays light (no torch import) so napari starts fast; the engine lives in
``napari_diffseg.core`` and the command line in ``napari_diffseg.cli``.
"""

from importlib.metadata import PackageNotFoundError, version

try:  # the installed distribution's version: setuptools-scm derives it from the git tag at install or build time
    __version__ = version("napari-diffseg")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
del PackageNotFoundError, version
