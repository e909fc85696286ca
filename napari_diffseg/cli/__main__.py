"""``python -m napari_diffseg.cli``: the ``diffseg`` command."""

import sys

from napari_diffseg.cli import main

sys.exit(main())
