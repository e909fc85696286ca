"""Objects mode on the command line (#28): ``train --objects`` (instance masks -> three-class targets),
``predict`` of an objects model (instance masks out) and ``measure`` (the per-object table as CSV)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from napari_diffseg.core.errors import InputError

from napari_diffseg.cli._common import EXIT_OK, log


def num_classes_of(args: argparse.Namespace) -> int:
    """The number of classes a ``train`` run learns: 3 in objects mode (background, interior, boundary)."""
    if not getattr(args, "objects", False):
        if getattr(args, "boundary_width", None) is not None:
            raise InputError("--boundary-width applies to objects mode; add --objects")
        return args.num_classes
    if args.num_classes not in (2, 3):  # 2 is the option's default
        raise InputError(f"--objects trains 3 classes (background, object interior, object boundary); leave out "
                         f"--num-classes {args.num_classes}")
    return 3


def project_objects(args: argparse.Namespace) -> dict | None:
    """``project create --objects``: the objects settings a new project stores (None: a regions project)."""
    from napari_diffseg.core.objects.files import objects_card
    from napari_diffseg.core.objects.targets import DEFAULT_BOUNDARY_WIDTH

    num_classes_of(args)  # the same checks as train's
    if not args.objects:
        return None
    return objects_card(args.boundary_width if args.boundary_width is not None else DEFAULT_BOUNDARY_WIDTH)


def read_training_data(args: argparse.Namespace):
    """Objects-mode TrainingData from ``train``'s IMAGES and LABELS (instance masks)."""
    from napari_diffseg.core.objects.files import objects_training_data_from_folders
    from napari_diffseg.core.objects.targets import DEFAULT_BOUNDARY_WIDTH

    width = args.boundary_width if args.boundary_width is not None else DEFAULT_BOUNDARY_WIDTH
    data = objects_training_data_from_folders(Path(args.images), Path(args.labels), width)
    log.info("objects mode: instance masks trained as background / interior / boundary (boundary %d px); "
             "predict writes instance masks", width)
    return data


def model_objects(model) -> dict | None:
    """The objects entry of a loaded model's card (None for a regions model)."""
    from napari_diffseg.core.objects.files import card_objects

    return card_objects(model.card)


def write_prediction(target: Path, prediction) -> int:
    """Decode a prediction's class probabilities into objects and write the instance mask; returns the count."""
    from napari_diffseg.core.objects.decode import probabilities_to_instances
    from napari_diffseg.core.objects.files import write_instances

    instances = probabilities_to_instances(prediction.probabilities)
    write_instances(target, instances)
    return int(instances.max()) if instances.size else 0


def decode_large(target: Path):
    """After a block-by-block prediction into ``target``'s OME-Zarr labels (the three classes), decode the objects
    block by block into the instance TIFF ``target`` (core/objects/blocks.py: one id per object across block
    borders); a progress generator for ``_drive``."""
    from napari_diffseg.core.objects import blocks
    from napari_diffseg.core.prediction import large

    decoded = yield from blocks.decode_large(large.output_zarr(target), target)
    log.info("%s: %d object(s) decoded block by block (%s holds the three classes)", target.name, decoded.count,
             large.output_folder(target).name)
    if decoded.cut:
        log.warning("%s: %d object(s) reach beyond the margin of the block decoding (%s px in 2D, %s in 3D) and may "
                    "be cut at a block border", target.name, decoded.cut, "x".join(map(str, blocks.MARGIN_2D)),
                    "x".join(map(str, blocks.MARGIN_3D)))
    return decoded


def _measure_pairs(images: Path, masks: Path) -> list[tuple[str, Path, Path]]:
    from napari_diffseg.core.data import io

    if images.is_file() and masks.is_file():
        return [(io.name_stem(images), images, masks)]
    if images.is_file() or masks.is_file():
        raise InputError("give IMAGES and MASKS as two files or as two folders")
    image_paths, mask_paths = io.pair_images_with_labels(images, masks)
    pairs = [(io.name_stem(path), path, mask_paths[io.name_stem(path)]) for path in image_paths
             if io.name_stem(path) in mask_paths]
    missing = len(image_paths) - len(pairs)
    if missing:
        log.warning("%d image(s) in %s have no mask in %s and are not measured", missing, images, masks)
    return pairs


def _cmd_measure(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from napari_diffseg.core.data import safety
    from napari_diffseg.core.objects.measure import measure_files, measure_project, write_table

    out = Path(args.out)
    if args.project is not None and (args.images or args.masks):
        raise InputError("give IMAGES and MASKS, or --project DIR, not both")
    if args.project is None and not (args.images and args.masks):
        raise InputError("give IMAGES and MASKS (files or folders), or --project DIR")
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; give a file name for the table (e.g. objects.csv)")
    if out.suffix.lower() != ".csv":
        raise InputError(f"--out {out}: the table is CSV; give a name ending in .csv")
    if args.project is not None:  # the Predict panel's "Measure project", from the command line
        from napari_diffseg.core.project.layout import DB_NAME
        from napari_diffseg.core.project.store import Project

        project = Project.open(Path(args.project))
        reads = [project.folder / DB_NAME]
        measured = measure_project(project)
    else:
        images, masks = Path(args.images), Path(args.masks)
        for given, path in (("IMAGES", images), ("MASKS", masks)):
            if not path.exists():
                raise InputError(f"{given} {path} not found; give an image file or a folder of images")
        pairs = _measure_pairs(images, masks)
        reads = [path for _, image, mask in pairs for path in (image, mask)]
        measured = measure_files(pairs)  # the Predict panel's project table measures as core does too
    safety.refuse_unsafe_outputs(out.parent, [out], overwrite=args.overwrite, inputs=reads, option="--out file")
    rows: list[dict] = []
    count = 0
    for name, found in measured:
        log.info("%s: %d object(s)", name, len(found))
        rows += found
        count += 1
    write_table(rows, out)
    print(f"measured {len(rows)} object(s) in {count} image(s): {out}")
    return EXIT_OK
