"""What the commands share: program name, exit codes, the log, the training settings from the options and the
stored project settings, and the checks of input and output folders."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import logging
import os
from pathlib import Path

from napari_diffseg.core.errors import InputError
from napari_diffseg.core.data.io import format_duration

PROG = "diffseg"
EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
PACKAGE_LOGGER = "napari_diffseg"

log = logging.getLogger("napari_diffseg.cli")


def _read_training_data(images_dir: Path, labels_dir: Path, num_classes: int):
    """TrainingData from a folder of images and a folder of labels matched by name stem."""
    from napari_diffseg.core.data.training_set import training_data_from_folders

    return training_data_from_folders(images_dir, labels_dir, num_classes)


# TrainConfig fields that the command line always decides (never taken from a project's stored settings)
_COMMAND_LINE_SETTINGS = frozenset({"budget_seconds", "max_steps", "labels_only", "chained_rounds", "seed",
                                    "num_classes", "device", "threads", "bf16"})


_OWN_OPTION = {"budget_seconds": "budget", "max_steps": "steps", "bf16": "no-bf16"}


def _train_config(args: argparse.Namespace, num_classes: int, stored: dict | None = None):
    """TrainConfig from the options of ``_add_training_options``.

    An option left out keeps its value from ``stored`` (a project's stored settings, except the
    ``_COMMAND_LINE_SETTINGS``), else TrainConfig's default (the one place the defaults are defined).
    """
    from napari_diffseg.core.method.config import TrainConfig, parse_setting

    if stored is not None and not isinstance(stored, dict):  # read from the project's manifest: never trusted
        log.warning("ignoring the project's stored training settings (a JSON %s, not an object; edited by hand?)",
                    type(stored).__name__)
        stored = None
    given = {
        "pretrain_fraction": args.pretrain_fraction, "rounds": args.rounds, "rounds_every": args.rounds_every,
        "base_channels": args.width, "patch_size": tuple(args.patch_size) if args.patch_size else None,
        "batch_size": args.batch_size, "layout": getattr(args, "layout", None),
    }
    given = {key: value for key, value in given.items() if value is not None}
    assigned = dict(parse_setting(text) for text in getattr(args, "settings", None) or [])
    own_option = sorted(set(assigned) & _COMMAND_LINE_SETTINGS)
    if own_option:
        raise InputError(f"--set {own_option[0]}: this setting has its own option (--"
                         f"{_OWN_OPTION.get(own_option[0], own_option[0]).replace('_', '-')}); use that")
    given = {**assigned, **given}
    if getattr(args, "preset", None):
        from napari_diffseg.core.method.config import PRESETS

        given = {**PRESETS[args.preset], **given}
    return TrainConfig.from_stored(
        stored, exclude=_COMMAND_LINE_SETTINGS, **given,
        budget_seconds=args.budget, max_steps=args.steps, labels_only=args.labels_only,
        chained_rounds=args.chained_rounds, num_classes=num_classes, seed=args.seed,
        device=args.device, threads=args.threads, bf16=False if args.no_bf16 else None,
    )


def _limits(config) -> str:
    limits = [f"{format_duration(config.schedule.budget_seconds)} budget"]
    if config.schedule.max_steps:
        limits.append(f"{config.schedule.max_steps} steps")
    return " / ".join(limits)


def _check_writable_folder(folder: Path) -> None:
    """Create ``folder`` if needed and check that files can be written into it; InputError otherwise."""
    probe = folder / f".diffseg-write-check-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise InputError(f"--out {folder} is not a writable folder ({error.strerror or error}); choose another "
                         "one") from None


def _open_project(folder: str):
    from napari_diffseg.core.project.store import Project

    return Project.open(Path(folder))


def _text_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns aligned: the first left-aligned, the others right-aligned."""
    cells = [[str(value) for value in row] for row in [header, *rows]]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    return "\n".join("  ".join([line[0].ljust(widths[0]), *(v.rjust(w) for v, w in zip(line[1:], widths[1:]))])
                     .rstrip() for line in cells)


