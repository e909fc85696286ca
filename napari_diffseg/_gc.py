"""Keep Python's garbage collector from freezing the napari window.

A full collection walks every object the process holds, with the GIL held, in whichever thread allocates at the
moment: 150-240 ms with napari, Qt and torch loaded (~500,000 objects) on the 2-core test machine, often in the
middle of adding a layer or painting. Modules, classes and functions imported once live as long as the process
anyway, so after each large one-time import the plugin moves everything alive out of the collector's sight
(``gc.freeze``); objects made later are collected as usual. Cyclic garbage that exists at that moment is kept
(a one-off, small amount).
"""

from __future__ import annotations

import gc


def freeze_long_lived_objects() -> None:
    """Move every object alive now to the collector's permanent generation (see the module docstring)."""
    gc.freeze()
