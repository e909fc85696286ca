"""``diffseg export``: a model folder as a bioimage.io model package (core.prediction.bioimageio_export)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from napari_diffseg.cli._common import EXIT_OK, log


def _cmd_export(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from napari_diffseg.core.prediction.bioimageio_export import export_bioimageio

    out = export_bioimageio(Path(args.model), Path(args.out), sample=Path(args.sample) if args.sample else None,
                            name=args.name, authors=args.author or None, license=args.license,
                            overwrite=args.overwrite)
    from napari_diffseg.core.method.checkpoint import read_model_card
    from napari_diffseg.core.objects.files import card_objects

    if card_objects(read_model_card(Path(args.model))):
        log.warning("%s is an objects-mode model: the package outputs its three classes (0 background, 1 object "
                    "interior, 2 object boundary), not instance ids; the seeded watershed that turns them into "
                    "objects is napari-diffseg's (diffseg predict)", args.model)
    print(f"bioimage.io model package: {out}")
    return EXIT_OK
