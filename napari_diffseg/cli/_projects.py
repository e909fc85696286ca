"""The commands on a project folder (the store the napari plugin shares): create, train, pretrain, status,
export."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
import shlex
import shutil

from napari_diffseg.core.errors import ModelError, UntrainedRunError
from napari_diffseg.core.data.io import format_duration

from napari_diffseg.cli._common import (EXIT_INTERRUPTED, EXIT_OK, PROG, _limits, _open_project, _text_table,
                                        _train_config, log)
from napari_diffseg.cli._output import _bar, _bar_logging, _print_trained, _resume_command, _run_training


def _cmd_project_create(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from napari_diffseg.core.data import io
    from napari_diffseg.core.project.store import Project

    from napari_diffseg.cli import _objects

    images_dir = Path(args.images)
    objects = _objects.project_objects(args)
    bar = _bar(args.quiet, total=len(io.list_images(images_dir)), unit="image", desc="add")
    try:
        with _bar_logging(bar):
            project = Project.create_from_folders(Path(args.project), images_dir, args.labels and Path(args.labels),
                                                  args.num_classes, on_image=lambda path: bar.update(1),
                                                  objects=objects)
    finally:
        bar.close()
    labelled, image_count = len(project.labelled_names()), len(project.names())
    folder = project.folder
    print(f"created project {folder}: {image_count} image(s), {labelled} labelled, "
          f"{image_count - labelled} unlabelled ({'objects mode' if objects else f'{args.num_classes} classes'})")
    if labelled:
        print(f"next: diffseg project train {shlex.quote(str(folder))}")
    else:
        print("next: label a few images in napari (Project panel: open this folder; Annotate panel), then "
              f"diffseg project train {shlex.quote(str(folder))}")
    return EXIT_OK


def _cmd_project_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from napari_diffseg.core import device as devices
    from napari_diffseg.core.project import rounds

    project = _open_project(args.project)
    config = _train_config(args, project.num_classes, project.config.get(rounds.TRAIN_CONFIG_KEY))
    device = devices.select_device(config.runtime.device)  # an unavailable device fails before the round changes
    devices.configure_threads(config.runtime.threads)
    # --next-round is napari's 'Next round' button: a new round, trained warm-started. train_round starts it once
    # the project's training lock is held, and takes it back when the run is refused or fails before its first step
    round_ = project.current_round + (1 if args.next_round else 0)
    round_dir = project.checkpoints_dir(round_, create=False)
    _check_round_folder(round_dir, round_, args.resume)
    log.info("training round %d of %s: the %s on %s, %s", round_, project.folder, config.method.describe(), device,
             _limits(config))

    events = rounds.train_round(project, config, warm_start=True, resume=args.resume, next_round=args.next_round)
    outcome = _run_training(events, args.quiet, round_dir, _resume_command(argv, drop_flags=("--next-round",)))
    if outcome is None:
        return EXIT_INTERRUPTED
    if outcome.started is not None:  # the round train_round trained
        round_, round_dir = outcome.started.round, outcome.started.out_dir
    _print_trained(round_dir, outcome, config.method.labels_only, device, prefix=f"round {round_}: ")
    _print_review_next(project, round_, outcome, args.project)
    return EXIT_OK


def _check_round_folder(round_dir: Path, round_: int, resume: bool) -> None:
    """Nothing to resume is an error (a model about to be replaced is train_round's warning, once it holds the
    project: a refused run says nothing but why)."""
    from napari_diffseg.core.method.checkpoint import LAST

    if resume and not (round_dir / LAST).is_file():
        raise ModelError(f"{round_dir / LAST}: nothing to resume in round {round_}; start without --resume")


def _print_review_next(project, round_: int, outcome, project_arg: str) -> None:
    """How the round started, where its pseudo-labels are, and what to do next."""
    if outcome.started is not None:
        print(f"start:    {outcome.started.note}")
    queue = project.review_queue()
    print(f"pseudo-labels: {len(outcome.pseudo_names)} image(s) stored in {project.pseudo_dir(round_)}; review "
          f"queue: {len(queue)} image(s) (diffseg project status {shlex.quote(str(project_arg))})")
    print("next:     review in napari (Review panel), then "
          f"diffseg project train {shlex.quote(str(project_arg))} --next-round")


def _cmd_project_pretrain(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from napari_diffseg.core import device as devices
    from napari_diffseg.core.project import rounds
    from napari_diffseg.core.method.training import pretraining_info

    project = _open_project(args.project)
    for name in ("pretrain_fraction", "rounds", "rounds_every", "patch_size", "batch_size", "steps"):
        setattr(args, name, None)  # the settings of _train_config that pretraining does not offer
    args.labels_only = args.chained_rounds = False
    config = _train_config(args, project.num_classes, project.config.get(rounds.TRAIN_CONFIG_KEY))
    devices.configure_threads(config.runtime.threads)
    folder = rounds.pretrain_dir(project)
    before = pretraining_info(folder)
    log.info("pretraining the teacher of %s without labels for %s%s", project.folder, format_duration(args.budget),
             f" (continuing {format_duration(before['seconds'])} done before)" if before else "")
    # pretraining always continues what was done before: the same command (it has no --resume) resumes it
    outcome = _run_training(rounds.pretrain_project(project, config), args.quiet, folder, shlex.join([PROG, *argv]))
    if outcome is None:
        return EXIT_INTERRUPTED
    done = pretraining_info(folder) or {"seconds": 0.0, "steps": 0}
    if done["steps"] == (before["steps"] if before else 0):
        if before is None:  # the folder was made for a pretraining that learned nothing
            shutil.rmtree(folder, ignore_errors=True)
        raise UntrainedRunError(f"the time budget ({args.budget:g} s) ended before the first pretraining step: nothing was "
                         "learned; give a larger --budget")
    print(f"teacher pretrained for {format_duration(done['seconds'])} in total ({done['steps']} steps) -> {folder}")
    print(f"next:     diffseg project train {shlex.quote(str(args.project))} (round 1 co-trains from this teacher)")
    return EXIT_OK


def _cmd_project_status(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from napari_diffseg.core.project.store import ImageStatus

    project = _open_project(args.project)
    counts = project.status_counts()
    total = sum(counts.values())
    print(f"project:      {project.folder}")
    print(f"round:        {project.current_round}")
    model = project.latest_model_dir()
    print(f"latest model: {model if model is not None else 'none yet (diffseg project train)'}")
    print(f"images:       {total} ({project.num_classes} classes)")
    print(_text_table(["status", "images"], [[status.value, counts[status]] for status in ImageStatus]))
    missing = project.missing_files()
    if missing:
        log.warning("%d image(s) have lost their image or mask file (deleted or moved?): %s", len(missing),
                    ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    queue = project.review_queue()
    if not queue:
        print("review queue: empty")
        return EXIT_OK
    shown = queue[: args.top]
    print(f"review queue: {len(queue)} image(s), most uncertain first" +
          (f" (top {len(shown)})" if len(shown) < len(queue) else ""))
    rows = []
    for name in shown:
        record = project.record(name)
        uncertainty = "?" if record.uncertainty is None else f"{record.uncertainty:.4f}"
        rows.append([name, uncertainty, record.round])
    print(_text_table(["name", "uncertainty", "round"], rows))
    return EXIT_OK


def _cmd_project_export(args: argparse.Namespace, argv: Sequence[str]) -> int:
    project = _open_project(args.project)
    written, skipped = project.export_masks(Path(args.out), overwrite=args.overwrite)
    print(f"exported {sum(written.values())} mask(s) to {args.out}: "
          + ", ".join(f"{count} {source}" for source, count in written.items()))
    if skipped:
        print(f"skipped {sum(skipped.values())} image(s): "
              + ", ".join(f"{count} {source}" for source, count in skipped.items()))
    return EXIT_OK


