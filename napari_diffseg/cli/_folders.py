"""The commands on folders of images: train, predict, eval, info."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import contextlib
import logging
import csv
from pathlib import Path
import sys
import time

from napari_diffseg.core.errors import DiffsegError, InputError, ModelError
from napari_diffseg.core.method.events import FitReport
from napari_diffseg.core.data.io import UNCERTAINTY_SUFFIX, describe_kind, format_duration, one_line

from napari_diffseg.cli._common import (EXIT_INTERRUPTED, EXIT_OK, EXIT_USER_ERROR, PROG, _check_writable_folder,
                                        _limits, _read_training_data, _train_config, log)
from napari_diffseg.cli._output import _bar, _bar_logging, _print_trained, _resume_command, _run_training


def _cmd_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from napari_diffseg.core import device as devices
    from napari_diffseg.core.method import distributed, rollback, training
    from napari_diffseg.core.project import locks
    from napari_diffseg.core.method.checkpoint import CARD, LAST
    from napari_diffseg.core.method.events import require_a_step

    from napari_diffseg.cli import _objects

    config = _train_config(args, _objects.num_classes_of(args))
    ranks = distributed.torchrun_ranks()  # started by torchrun: one data-parallel rank of several
    if ranks is not None and not ranks.main:
        logging.getLogger("napari_diffseg").setLevel(logging.WARNING)  # rank 0 tells the story
    # an unavailable device fails before any image is read
    wanted = config.runtime.device
    device = devices.select_device(distributed.device_for(ranks, wanted) if ranks else wanted)
    devices.configure_threads(config.runtime.threads)
    out = Path(args.out)
    new_folder = not out.exists()
    _check_model_folder(out, args)
    # one run per model folder (rank 0 of a data-parallel run holds it for all); a folder made for a run that fails
    # before writing anything is removed again, and one that held a model is put back when the run learns nothing
    writes = ranks is None or ranks.main
    with locks.model_folder_lock(out, new_folder) if writes else contextlib.nullcontext(), \
            rollback.restored_if_untrained(out) if writes and not args.resume else contextlib.nullcontext():
        if writes and not args.resume and (out / LAST).exists():
            log.warning("%s already holds a model; it will be replaced (use --resume to continue it instead)", out)
        data = (_objects.read_training_data(args) if args.objects
                else _read_training_data(Path(args.images), Path(args.labels), config.network.num_classes))
        _describe_training(data, config, device, out)
        with _process_group(ranks, device):
            events = training.train(data, config, out, resume=args.resume,
                                    warm_start=Path(args.warm_start) if args.warm_start else None, ranks=ranks)
            if not args.resume:
                events = require_a_step(events, config.schedule.budget_seconds)
            outcome = _run_training(events, args.quiet or (ranks is not None and not ranks.main), out,
                                    _resume_command(argv, drop_options=("--warm-start",)))
    if ranks is not None and not ranks.main:
        return EXIT_OK if outcome is not None else EXIT_INTERRUPTED  # rank 0 reports and writes
    if outcome is None:
        return EXIT_INTERRUPTED
    _print_trained(out, outcome, config.method.labels_only, device)
    print(f"resume:   {out / LAST};  card: {out / CARD};  losses: {out / training.LOSSES_FILE}")
    if data.unlabelled_indices:
        print(f"pseudo-labels of the {len(data.unlabelled_indices)} unlabelled image(s): "
              f"{out / training.PSEUDO_LABEL_DIR}")
    return EXIT_OK


def _check_model_folder(out: Path, args: argparse.Namespace) -> None:
    """Refuse a model folder that cannot work, before minutes of training: a file, the images or labels folder,
    not writable, nothing to resume."""
    from napari_diffseg.core.method.checkpoint import LAST

    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for the model")
    for given, folder in (("images", args.images), ("labels", args.labels)):
        if out.resolve() == Path(folder).resolve():
            raise InputError(f"--out {out} is the {given} folder; give the model its own folder")
    _check_writable_folder(out)
    if not args.resume and not args.overwrite:
        _refuse_foreign_model_files(out)
    if args.resume and not (out / LAST).is_file():
        raise ModelError(f"{out / LAST}: nothing to resume (no last.pt); start without --resume")


def _refuse_foreign_model_files(out: Path) -> None:
    """Training replaces best.pt, last.pt, model_card.json, losses.csv and pseudo_labels/ in its folder: that is
    fine for a model of an earlier diffseg run (a warning says so), not for files of the user or of another tool."""
    from napari_diffseg.core.data import safety
    from napari_diffseg.core.method import training
    from napari_diffseg.core.method.checkpoint import BEST, CARD, LAST

    if safety.written_by_diffseg(out / BEST) or safety.written_by_diffseg(out / LAST):
        return  # an earlier run's model folder
    for name in (BEST, LAST, CARD, training.LOSSES_FILE, training.PSEUDO_LABEL_DIR):
        path = out / name
        if path.exists() and not safety.written_by_diffseg(path):
            raise InputError(f"training would replace {path}, which diffseg did not write; use --overwrite or "
                             "another --out folder (nothing was written)")


def _describe_training(data, config, device, out: Path) -> None:
    n_unlabelled = len(data.unlabelled_indices)
    log.info("%d %s image(s): %d labelled, %d unlabelled%s", len(data.images),
             describe_kind(data.spatial_dims, data.channels), len(data.labelled_indices), n_unlabelled,
             " (not trained on: --labels-only)" if config.method.labels_only and n_unlabelled else "")
    if not config.method.labels_only and not n_unlabelled:
        log.warning("every image is labelled: the semi-supervised stages have no unlabelled image to learn from")
    log.info("training the %s on %s, %s, into %s", config.method.describe(), device, _limits(config), out)


@contextlib.contextmanager
def _process_group(ranks, device):
    """Join the data-parallel process group for the block when torchrun started this process (else nothing)."""
    from napari_diffseg.core.method import distributed

    if ranks is None:
        yield
        return
    distributed.start(ranks, device)
    log.info("data-parallel training: %d ranks (%s); each step sees %d x the batch", ranks.world,
             "nccl" if device.type == "cuda" else "gloo", ranks.world)
    try:
        yield
    finally:
        distributed.stop()


def _prediction_inputs(source: Path) -> list[Path]:
    from napari_diffseg.core.data import io
    from napari_diffseg.core.prediction import large

    if not source.exists():
        raise InputError(f"input not found: {source}; give an image file or a folder of images")
    if source.is_dir() and source.suffix.lower() == large.ZARR_SUFFIX:
        return [source]
    if source.is_dir():
        images, _ = io.pair_images_with_labels(source, None)  # also refuses two images with one name stem
        return images
    if source.suffix.lower() not in io.IMAGE_SUFFIXES:
        raise InputError(f"{source}: unsupported file type '{source.suffix}'; give a .tif, .tiff, .png, .jpg or "
                         ".jpeg image, a .zarr array or a folder of images")
    return [source]


def _cmd_predict(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from napari_diffseg.core import device as devices
    from napari_diffseg.core.data import io

    device = devices.select_device(args.device)
    threads = devices.configure_threads(args.threads, spare_core=False)  # no GUI to keep responsive
    inputs = _prediction_inputs(Path(args.input))
    if args.level and not all(path.is_dir() for path in inputs):
        raise InputError(f"--level {args.level} applies to OME-Zarr images; {args.input} is not one")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for the masks")
    targets = {path: out / f"{io.name_stem(path)}.tif" for path in inputs}
    _refuse_unsafe_masks(Path(args.input), out, targets, args)
    model = _load_model(args, device)
    config = model.config
    log.info("predicting %d image(s) with the %s model%s in %s (threshold %.2f) on %s, %d thread(s)", len(inputs),
             describe_kind(model.image_dims, config.image_channels),
             model.layout_note(), args.model,
             model.threshold, device, threads)
    started = time.perf_counter()
    failed = _predict_all(model, inputs, targets, args)
    extra = f" and <stem>{UNCERTAINTY_SUFFIX}.tif uncertainty maps" if args.uncertainty else ""
    print(f"predicted {len(inputs) - len(failed)} image(s) in {format_duration(time.perf_counter() - started)}: "
          f"masks <stem>.tif{extra} in {out}")
    if failed:
        print(f"{PROG}: error: {len(failed)} of {len(inputs)} image(s) failed: "
              + "; ".join(f"{name} ({reason})" for name, reason in failed), file=sys.stderr)
        return EXIT_USER_ERROR
    return EXIT_OK


def _refuse_unsafe_masks(source: Path, out: Path, targets: dict[Path, Path], args: argparse.Namespace) -> None:
    """Before the model loads: no mask, uncertainty map or zarr copy may replace an input, a file of the user or
    one of an earlier run (without --overwrite), nor land in the folder of the input images (core.data.safety)."""
    from napari_diffseg.core.data import safety

    outputs = list(targets.values())
    if args.uncertainty:
        outputs += [target.with_name(f"{target.stem}{UNCERTAINTY_SUFFIX}.tif") for target in targets.values()]
    input_folder = source if source.is_dir() and source.suffix.lower() != ".zarr" else source.parent
    safety.refuse_unsafe_outputs(out, outputs, overwrite=args.overwrite, inputs=list(targets),
                                 originals={"input images": input_folder}, option="--out folder")


def _predict_all(model, inputs: list[Path], targets: dict[Path, Path], args: argparse.Namespace,
                 ) -> list[tuple[str, str]]:
    """Predict every input with an image progress bar; a bad file is logged and listed, the others go on.
    Returns the (name, reason) of the files that failed."""
    failed: list[tuple[str, str]] = []
    images_bar = _bar(args.quiet, total=len(inputs), unit="image", desc="predict")
    try:
        with _bar_logging(images_bar):
            for path in inputs:
                images_bar.set_postfix_str(path.name)
                try:
                    _predict_file(model, path, targets[path], args)
                except DiffsegError as error:
                    failed.append((path.name, one_line(error)))
                    message = one_line(error)  # it usually names the file already
                    log.warning("%s", message if path.name in message else f"{path.name}: {message}")
                images_bar.update(1)
    finally:
        images_bar.close()
    return failed


def _load_model(args: argparse.Namespace, device):
    from napari_diffseg.core import device as devices
    from napari_diffseg.core.prediction.model import SegmentationModel

    bf16 = False if args.no_bf16 else devices.bf16_supported(device)
    model = SegmentationModel.load(Path(args.model), device=device, bf16=bf16, backend=args.backend)
    log.info("prediction backend: %s", model.backend)
    dims = model.config.spatial_dims
    if args.tile is not None and len(args.tile) != dims:
        raise InputError(f"--tile needs {dims} numbers for this {dims}D model, got {len(args.tile)}")
    model.mirror = bool(getattr(args, "mirror", False))
    if model.mirror and getattr(args, "dask_scheduler", None):
        log.warning("--mirror: the blocks that run on the dask scheduler are predicted without mirroring")
    return model


def _predict_file(model, path: Path, target: Path, args: argparse.Namespace) -> None:
    """Predict one image file into ``target`` (and its uncertainty map): in memory, or block by block for a zarr
    array, an OME-Zarr image (at ``--level``) or an image over core.prediction.large.LARGE_IMAGE_PIXELS (then also OME-Zarr
    labels beside the TIFF)."""
    from napari_diffseg.core.data import io
    from napari_diffseg.core.prediction import large

    from napari_diffseg.cli import _objects

    tile = tuple(args.tile) if args.tile else None
    objects = _objects.model_objects(model) is not None
    if path.is_dir() or large.pixel_count(path) > large.LARGE_IMAGE_PIXELS:
        if args.uncertainty:
            log.warning("%s: too large to hold in memory; predicted block by block, without an uncertainty map",
                        path.name)
        run_blocks = None
        if args.dask_scheduler:
            from napari_diffseg.core.prediction.large_cluster import predict_large_on_cluster

            run_blocks = lambda zarr_path: predict_large_on_cluster(  # noqa: E731
                Path(args.model), path, zarr_path, args.dask_scheduler, tile, bf16=False if args.no_bf16 else None,
                level=args.level)
        _drive(large.predict_file(model, path, target, tile, run_blocks, level=args.level), args.quiet, "block")
        if objects:  # the classes went block by block into <stem>.zarr; the objects into <stem>.tif
            _drive(_objects.decode_large(target), args.quiet, "block")
        log.info("%s: block by block into %s (OME-Zarr labels) and %s", path.name, large.output_folder(target),
                 target)
        return
    prediction = _drive(model.iter_predict(io.read_image(path), uncertainty=args.uncertainty, draws=args.draws,
                                           sampling_steps=args.sampling_steps, tile=tile, name=path.name),
                        args.quiet, "tile")
    if objects:
        count = _objects.write_prediction(target, prediction)
        log.debug("%s: %s, %d object(s)", path.name, prediction.mask.shape, count)
    else:
        io.write_mask(target, prediction.mask)
    if args.uncertainty:
        io.write_tiff_atomic(target.with_name(f"{target.stem}{UNCERTAINTY_SUFFIX}.tif"),
                             prediction.uncertainty.astype("float32"))
    log.debug("%s: %s, foreground %.1f%%", path.name, prediction.mask.shape, 100 * float((prediction.mask > 0).mean()))


def _drive(steps, quiet: bool, unit: str):
    """Run a progress generator (events with ``done`` / ``total``) to its end and return its result, with a
    progress bar once it has more than one step."""
    bar = None
    try:
        while True:
            try:
                progress = next(steps)
            except StopIteration as stop:
                return stop.value
            if bar is None and progress.done < progress.total:
                bar = _bar(quiet, total=progress.total, unit=unit, desc=f"  {unit}s", leave=False)
            if bar is not None:
                bar.update(progress.done - bar.n)
    finally:
        if bar is not None:
            bar.close()
        steps.close()


def _cmd_eval(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from napari_diffseg.core.data import metrics

    if args.csv:
        _refuse_unsafe_table(Path(args.csv), Path(args.pred), Path(args.masks), args.overwrite)
    if args.objects:  # instance masks: object scores (core/objects/metrics.py)
        from napari_diffseg.core.objects import metrics
    rows = metrics.evaluate_folders(Path(args.pred), Path(args.masks))
    print(metrics.format_table(rows))
    if args.csv:
        path = Path(args.csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        log.info("table written to %s", path)
    return EXIT_OK


def _refuse_unsafe_table(path: Path, pred: Path, masks: Path, overwrite: bool) -> None:
    """--csv never replaces a mask the command reads; any other existing file only with --overwrite."""
    from napari_diffseg.core.data import io, safety

    if path.is_dir():
        raise InputError(f"--csv {path} is a folder; give a file name for the table")
    reads = [p for folder in (pred, masks) if folder.is_dir() for p in folder.iterdir() if io.is_image_file(p)]
    safety.refuse_unsafe_outputs(path.parent, [path], overwrite=overwrite, inputs=reads, option="--csv file")


def _cmd_info(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from napari_diffseg.core.method.checkpoint import CARD
    from napari_diffseg.core.prediction.model import SegmentationModel

    model_dir = Path(args.model)
    model = SegmentationModel.load(model_dir)  # validates best.pt
    card = model.card
    network = model.config  # the architecture (teacher.NetworkConfig), not the training settings
    kind = describe_kind(model.image_dims, network.image_channels)
    slices = "" if model.slice_axis is None else f" as 2D slices across axis {model.slice_axis}"
    try:  # the card is data, edited by hand at times: read all of it before printing a line
        described = _card_lines(card) if card else [f"threshold:    {model.threshold:.2f} ({CARD} missing)"]
    except (AttributeError, TypeError, ValueError, OverflowError) as error:
        raise ModelError(f"{model_dir / CARD}: the model card's content does not fit napari-diffseg "
                         f"({type(error).__name__}; edited by hand?); retrain, or restore the file") from None
    print(f"model folder: {model_dir}")
    print(f"method:       {card.get('method', 'unknown (no ' + CARD + ')')}")
    print(f"network:      {kind} images{slices}, {network.num_classes} classes, width {network.base_channels}, "
          f"depth {network.depth}")
    if model.describe_plan() is not None:
        print(f"plan:         {model.describe_plan().removeprefix('plan: ')}")
    print("\n".join(described))
    return EXIT_OK


def _card_lines(card: dict) -> list[str]:
    """What ``info`` prints of a model card; TypeError / ValueError / AttributeError for content of the wrong
    kind."""
    data = card.get("data", [])
    labelled = sum(1 for entry in data if entry.get("label_sha256"))
    training_info = card.get("training", {})
    lines = [f"data:         {len(data)} image(s), {labelled} labelled",
             f"training:     {training_info.get('steps', '?')} steps, "
             f"{format_duration(float(training_info.get('elapsed_seconds', 0)))}, patch {card.get('patch_size')}, "
             f"batch {card.get('batch_size')}, working scale {card.get('working_scale', 1.0)}"]
    fit = FitReport.from_dict(card.get("metrics", {}))
    lines.append(f"kept:         {fit.describe() if fit is not None else 'no model yet'}")
    objects = card.get("objects")
    if isinstance(objects, dict) and objects.get("mode") == "objects":
        lines.append(f"objects:      predicts instance masks (background / interior / boundary of "
                     f"{int(objects.get('boundary_width', 1))} px, decoded by a seeded watershed)")
    environment = card.get("environment", {})
    if environment:
        lines.append(f"trained with: torch {environment.get('torch')}, {environment.get('device')}, "
                     f"{environment.get('threads')} thread(s), bf16 {environment.get('bf16')}")
    return lines


