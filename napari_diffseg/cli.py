"""The ``diffseg`` console command: ``train``, ``predict``, ``eval`` and ``info`` on folders of images, and
``project create | train | status | export`` on the project store that the napari plugin shares.

A thin argparse front end over ``napari_diffseg.core``: it parses options, reads files through ``core.io``,
drives the engine's generators (training events, project rounds, prediction tile progress) with tqdm progress
bars and logs, and maps errors to exit codes. A user mistake (``DiffsegError``, a bad option, an unusable path)
ends with one line ``diffseg: error: <message>`` on stderr and exit code 2; an unexpected failure prints one line
plus a hint to rerun with ``--debug`` (which shows the traceback) and exits 1; Ctrl-C exits 130 (training saves
``last.pt`` first and says how to resume). Torch is imported lazily so ``diffseg --help`` is instant.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import contextlib
import csv
from io import StringIO
from dataclasses import dataclass, field
import logging
import math
import os
from pathlib import Path
import shlex
import sys
import time

from napari_diffseg import __version__
from napari_diffseg.core.errors import DiffsegError, InputError, ModelError
from napari_diffseg.core.config import LIMITS
from napari_diffseg.core.events import FitReport
from napari_diffseg.core.io import UNCERTAINTY_SUFFIX, describe_kind, format_duration, one_line

PROG = "diffseg"
EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
PACKAGE_LOGGER = "napari_diffseg"

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------- argparse
class _UsageError(Exception):
    """A command-line usage mistake found by argparse (unknown option, missing argument, bad number)."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors become one line (``diffseg: error: ...``) instead of usage + message."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def _int_at_least(minimum: int, why: str = ""):
    """argparse type: a whole number >= ``minimum`` (``why`` explains the bound in the error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}{why}, got {text}")
        return value
    return parse


def _setting(name: str, why: str = ""):
    """argparse type of a whole-number training setting, within its ``core.config.LIMITS`` (one source of truth
    for the CLI, the Train panel and TrainConfig.validate)."""
    bounds = LIMITS[name]

    def parse(text: str) -> int:
        value = _int_at_least(int(bounds.minimum), why)(text)
        if bounds.maximum is not None and value > bounds.maximum:
            raise argparse.ArgumentTypeError(f"must be at most {bounds.maximum:g}{why}, got {text}")
        return value
    return parse


_positive_int = _int_at_least(1)
_class_count = _setting("num_classes", " classes (background + one)")


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"the time budget must be a positive number of seconds, got {text}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


def _common_options(for_subcommand: bool) -> argparse.ArgumentParser:
    """-q / -v / --debug, accepted before and after the subcommand (subcommand copies do not reset them)."""
    parent = argparse.ArgumentParser(add_help=False)
    suppress = argparse.SUPPRESS
    group = parent.add_argument_group("output")
    group.add_argument("-q", "--quiet", action="store_true", default=suppress if for_subcommand else False,
                       help="only warnings and errors, no progress bars")
    group.add_argument("-v", "--verbose", action="count", default=suppress if for_subcommand else 0,
                       help="more detail (debug log)")
    group.add_argument("--debug", action="store_true", default=suppress if for_subcommand else False,
                       help="show the full traceback of unexpected errors")
    return parent


def _add_device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", metavar="DEVICE",
                        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--threads", type=_setting("threads"), default=None, metavar="N",
                        help="CPU threads for torch (default: number of cores - 1, or $DIFFSEG_THREADS)")
    parser.add_argument("--no-bf16", action="store_true",
                        help="compute in float32 even where bfloat16 would be used (default: bf16 only where native)")


def _add_num_classes_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-classes", type=_class_count, default=2, metavar="K",
                        help="classes including background (default 2: any label > 0 is foreground)")


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    """The training options of ``train`` and ``project train``: budget, method, network, device."""
    parser.add_argument("--budget", type=_budget, default=300.0, metavar="SECONDS",
                        help="wall-time budget of the whole training (pretraining + co-training), default 300")
    parser.add_argument("--labels-only", action="store_true",
                        help="baseline: train the same network on the labelled images alone (same budget)")
    parser.add_argument("--seed", type=_setting("seed"), default=0, metavar="N", help="random seed (default 0)")
    parser.add_argument("--steps", type=_setting("max_steps"), default=None, metavar="N",
                        help="also stop after N optimisation steps (reproducible runs)")
    parser.add_argument("--rounds", type=_setting("rounds"), default=None, metavar="K",
                        help="pseudo-label rounds K of a co-training step that has rounds (default 1)")
    parser.add_argument("--rounds-every", type=_setting("rounds_every"), default=None, metavar="N",
                        help="compute the pseudo-label rounds on every N-th co-training step (default 4; "
                             "1 = every step as in the paper, slower on a CPU)")
    parser.add_argument("--chained-rounds", action="store_true",
                        help="condition each round on the previous round's mask instead of the teacher's")
    parser.add_argument("--pretrain-fraction", type=_fraction, default=None, metavar="F",
                        help="share of the budget for unsupervised teacher pretraining (default 0: it cost more than it "
                             "gave within minutes; 'diffseg project pretrain' runs it outside the budget)")
    parser.add_argument("--width", type=_setting("base_channels"), default=None, metavar="C",
                        help="base channels of the U-Nets (default 16; smaller is faster)")
    parser.add_argument("--patch-size", type=_setting("patch_edge"), nargs="+", default=None, metavar="PX",
                        help="training patch size, 2 numbers (Y X) or 3 (Z Y X) (default 128 128 / 32 64 64)")
    parser.add_argument("--batch-size", type=_setting("batch_size"), default=None, metavar="N",
                        help="patches per step (default 8 in 2D, 2 in 3D)")
    _add_device_options(parser)


def build_parser() -> argparse.ArgumentParser:
    common = _common_options(for_subcommand=True)
    parser = _Parser(
        prog=PROG,
        parents=[_common_options(for_subcommand=False)],
        description="Segment a whole image collection after labelling a few images: a diffusion teacher and a "
                    "co-trained student (arXiv 2504.01547).",
        epilog="Typical use: diffseg train images --labels labels --out model; "
               "diffseg predict model new_images --out masks; diffseg eval masks ground_truth. "
               "Rounds with review in napari: diffseg project --help",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train", parents=[common], help="train a model on a folder of images, a few of them labelled",
        description="Train on all images of IMAGES. An image is labelled when LABELS holds a file with the same "
                    "name stem (img_001.tif labels img_001.png); all other images are unlabelled and feed the "
                    "semi-supervised stages. MODEL_DIR receives best.pt (for predict), last.pt (for --resume), "
                    "model_card.json, losses.csv and pseudo_labels/.",
    )
    train.add_argument("images", metavar="IMAGES", help="folder of images (.tif, .tiff, .png, .jpg; 2D, RGB or 3D)")
    train.add_argument("--labels", required=True, metavar="LABELS",
                       help="folder of label images (0 = background, >0 = object), named like their images")
    train.add_argument("--out", required=True, metavar="MODEL_DIR", help="model folder to write")
    _add_training_options(train)
    _add_num_classes_option(train)
    start = train.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue the interrupted or finished run in MODEL_DIR (from MODEL_DIR/last.pt); "
                            "give the same data and options, the budget counts the time already spent")
    start.add_argument("--warm-start", metavar="OTHER_MODEL_DIR", default=None,
                       help="initialise the networks from OTHER_MODEL_DIR/last.pt and skip pretraining")
    train.set_defaults(handler=_cmd_train)

    predict = commands.add_parser(
        "predict", parents=[common], help="segment images with a trained model",
        description="Segment INPUT (an image file or a folder of images) with the model in MODEL_DIR. OUTPUT "
                    "receives <stem>.tif, a uint8 mask (0 = background, class ids otherwise), and with "
                    "--uncertainty <stem>_uncertainty.tif (float32 in [0, 1]).",
    )
    predict.add_argument("model", metavar="MODEL_DIR", help="model folder written by 'diffseg train'")
    predict.add_argument("input", metavar="INPUT", help="image file or folder of images")
    predict.add_argument("--out", required=True, metavar="OUTPUT", help="folder for the masks")
    predict.add_argument("--uncertainty", action="store_true",
                         help="also write per-pixel uncertainty maps (normalised entropy of stochastic draws)")
    predict.add_argument("--draws", type=_positive_int, default=4, metavar="N",
                         help="stochastic draws for the uncertainty (default 4)")
    predict.add_argument("--sampling-steps", type=_positive_int, default=1, metavar="N",
                         help="diffusion sampling steps per tile (default 1: one deterministic step)")
    predict.add_argument("--tile", type=_positive_int, nargs="+", default=None, metavar="PX",
                         help="tile size, 2 numbers (Y X) or 3 (Z Y X) (default 512 512 / 64 128 128)")
    _add_device_options(predict)
    predict.set_defaults(handler=_cmd_predict)

    evaluate = commands.add_parser(
        "eval", parents=[common], help="score predicted masks against ground truth (Dice, Jaccard, HD95)",
        description="Compare the masks in PRED with those in MASKS, matched by name stem (foreground = value > 0). "
                    "Prints one row per image and a pooled/mean row (Dice and Jaccard pooled over all pixels, "
                    "HD95 averaged).",
    )
    evaluate.add_argument("pred", metavar="PRED", help="folder of predicted masks")
    evaluate.add_argument("masks", metavar="MASKS", help="folder of ground-truth masks")
    evaluate.add_argument("--csv", metavar="FILE", default=None, help="also write the table as CSV")
    evaluate.set_defaults(handler=_cmd_eval)

    info = commands.add_parser("info", parents=[common], help="show what a model folder holds",
                               description="Print the model card summary of MODEL_DIR.")
    info.add_argument("model", metavar="MODEL_DIR", help="model folder written by 'diffseg train'")
    info.set_defaults(handler=_cmd_info)
    _add_project_commands(commands, common)
    return parser


def _add_project_commands(commands, common: argparse.ArgumentParser) -> None:
    """``diffseg project create | train | status | export``: the project store that the napari panels also use."""
    project = commands.add_parser(
        "project", parents=[common], help="work on a project folder (the store the napari plugin uses)",
        description="A project folder holds the images, their labels, each round's pseudo-labels and models, and a "
                    "manifest of every image's status. The napari panels open the same folders, so labelling and "
                    "review can happen in napari and training here, or the other way round.",
        epilog="Typical use: diffseg project create proj --images images --labels labels; diffseg project train "
               "proj; review in napari; diffseg project train proj --next-round; diffseg project export proj "
               "--out masks",
    )
    actions = project.add_subparsers(dest="project_command", metavar="ACTION", required=True)

    create = actions.add_parser(
        "create", parents=[common], help="make a project from a folder of images (and some labels)",
        description="Create a project in DIR (a new or empty folder) and copy in every image of IMAGES; a file of "
                    "LABELS with an image's name stem becomes that image's ground truth.",
    )
    create.add_argument("project", metavar="DIR", help="new or empty folder for the project")
    create.add_argument("--images", required=True, metavar="IMAGES",
                        help="folder of images (.tif, .tiff, .png, .jpg; 2D, RGB or 3D)")
    create.add_argument("--labels", default=None, metavar="LABELS",
                        help="folder of label images (0 = background, >0 = object), named like their images")
    _add_num_classes_option(create)
    create.set_defaults(handler=_cmd_project_create)

    train = actions.add_parser(
        "train", parents=[common], help="train the project's current round",
        description="Train the current round on all images of the project: labelled and accepted images are the "
                    "ground truth, all others are unlabelled. The round's models go to "
                    "DIR/checkpoints/round_<k> and its pseudo-labels into the project (status 'pseudo', ready for "
                    "review). Training warm-starts from the latest earlier round with the same network settings. "
                    "Like napari's Start button this (re)trains the current round; --next-round is napari's "
                    "'Next round' button. Options not given keep the project's stored settings (those of its last "
                    "training, from here or from napari) except --budget, --steps, --seed, --labels-only, "
                    "--chained-rounds and the device options, which always come from this command line.",
    )
    train.add_argument("project", metavar="DIR", help="project folder")
    _add_training_options(train)
    start = train.add_mutually_exclusive_group()
    start.add_argument("--next-round", action="store_true",
                       help="start the next round first (accepted corrections become ground truth), warm-started "
                            "from this one")
    start.add_argument("--resume", action="store_true",
                       help="continue the stopped run of the current round (from its last.pt)")
    train.set_defaults(handler=_cmd_project_train)

    pretrain = actions.add_parser(
        "pretrain", parents=[common], help="pretrain the teacher without labels (stage 1), e.g. while labelling",
        description="Stage 1 of the method on every image of the project: the teacher learns by cycle consistency "
                    "(noise-corrupted image reconstruction), no label needed. Each run continues the pretraining "
                    "already done (checkpoints/pretrain); 'diffseg project train' then co-trains round 1 from this "
                    "teacher instead of pretraining inside its own budget. napari's Train panel runs the same in "
                    "the background while you label.",
    )
    pretrain.add_argument("project", metavar="DIR", help="project folder")
    pretrain.add_argument("--budget", type=_budget, default=300.0, metavar="SECONDS",
                          help="pretraining time of this run, default 300 (added to what was done before)")
    pretrain.add_argument("--seed", type=_setting("seed"), default=0, metavar="N", help="random seed (default 0)")
    pretrain.add_argument("--width", type=_setting("base_channels"), default=None, metavar="C",
                          help="base channels of the U-Nets (default 16; must match the later training)")
    _add_device_options(pretrain)
    pretrain.set_defaults(handler=_cmd_project_pretrain)

    status = actions.add_parser(
        "status", parents=[common], help="image counts per status, round, latest model and review queue",
        description="Print how many images are unlabelled, labelled, pseudo-labelled, accepted and rejected, the "
                    "current round, the latest model folder and the most uncertain pseudo-labels awaiting review.",
    )
    status.add_argument("project", metavar="DIR", help="project folder")
    status.add_argument("--top", type=_positive_int, default=10, metavar="N",
                        help="review-queue entries to show (default 10)")
    status.set_defaults(handler=_cmd_project_status)

    export = actions.add_parser(
        "export", parents=[common], help="write the current best mask of every image",
        description="Write <name>.tif (uint8) to FOLDER for every image that has a mask: the ground truth of "
                    "labelled and accepted images, the latest pseudo-label of the others. Rejected images and "
                    "images without any mask yet are skipped (and counted).",
    )
    export.add_argument("project", metavar="DIR", help="project folder")
    export.add_argument("--out", required=True, metavar="FOLDER", help="folder for the masks")
    export.set_defaults(handler=_cmd_project_export)


# ---------------------------------------------------------------------------------------------------- output
class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{PROG}: {record.levelname.lower()}: {message}"
        if record.levelno < logging.INFO:
            return f"{PROG}: debug: {record.name}: {message}"
        return message


@contextlib.contextmanager
def _logging(quiet: bool, verbose: int):
    """Send the package's log records to the current stderr for the duration of one command."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    previous = logger.level, logger.propagate
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous[0])
        logger.propagate = previous[1]


def _bar(quiet: bool, **options):
    from tqdm import tqdm

    # disable=None: bars only on a terminal, so logs and pipes stay clean
    return tqdm(disable=True if quiet else None, file=sys.stderr, dynamic_ncols=True, **options)


def _bar_logging(bar):
    """Route log lines around an active progress bar so they do not garble it."""
    if bar.disable:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm(loggers=[logging.getLogger(PACKAGE_LOGGER)])


# ---------------------------------------------------------------------------------------------------- train
def _check_labels_folder(images_dir: Path, labels_dir: Path) -> None:
    if labels_dir.resolve() == images_dir.resolve():
        raise InputError(f"--labels {labels_dir} is the images folder; keep the label images in their own folder")


def _read_training_data(images_dir: Path, labels_dir: Path, num_classes: int):
    """TrainingData from a folder of images and a folder of labels matched by name stem."""
    from napari_diffseg.core.data import training_data_from_folders

    _check_labels_folder(images_dir, labels_dir)
    return training_data_from_folders(images_dir, labels_dir, num_classes)


# TrainConfig fields that the command line always decides (never taken from a project's stored settings)
_COMMAND_LINE_SETTINGS = frozenset({"budget_seconds", "max_steps", "labels_only", "chained_rounds", "seed",
                                    "num_classes", "device", "threads", "bf16"})


def _train_config(args: argparse.Namespace, num_classes: int, stored: dict | None = None):
    """TrainConfig from the options of ``_add_training_options``.

    An option left out keeps its value from ``stored`` (a project's stored settings, except the
    ``_COMMAND_LINE_SETTINGS``), else TrainConfig's default (the one place the defaults are defined).
    """
    from dataclasses import fields

    from napari_diffseg.core.config import TrainConfig

    kept: dict = {}
    if stored:
        names = {f.name for f in fields(TrainConfig)} - _COMMAND_LINE_SETTINGS
        kept = {key: value for key, value in stored.items() if key in names}
        try:
            TrainConfig(**kept)
        except (DiffsegError, TypeError, ValueError) as error:  # written by another version, or edited by hand
            log.warning("ignoring the project's stored training settings (%s)", one_line(error))
            kept = {}
    given = {
        "pretrain_fraction": args.pretrain_fraction, "rounds": args.rounds, "rounds_every": args.rounds_every,
        "base_channels": args.width, "patch_size": tuple(args.patch_size) if args.patch_size else None,
        "batch_size": args.batch_size,
    }
    given = {key: value for key, value in given.items() if value is not None}
    inherited = {key: value for key, value in kept.items()
                 if key not in given and value != getattr(TrainConfig, key, value)}
    if inherited:
        log.info("kept from the project's stored settings: %s",
                 ", ".join(f"{key} {value}" for key, value in sorted(inherited.items())))
    return TrainConfig(**{
        **kept, **given,
        "budget_seconds": args.budget, "max_steps": args.steps, "labels_only": args.labels_only,
        "chained_rounds": args.chained_rounds, "num_classes": num_classes, "seed": args.seed,
        "device": args.device, "threads": args.threads, "bf16": False if args.no_bf16 else None,
    })


def _limits(config) -> str:
    limits = [f"{format_duration(config.budget_seconds)} budget"]
    if config.max_steps:
        limits.append(f"{config.max_steps} steps")
    return " / ".join(limits)


class _TrainDisplay:
    """Progress bar (percent of the budget) on a terminal; a log line every 10 % elsewhere."""

    LOSS_KEYS = ("total", "supervised", "reconstruction")

    def __init__(self, quiet: bool):
        self.bar = _bar(quiet, total=100.0, desc="starting", bar_format="{desc} |{bar}| {percentage:3.0f}%")
        self.quiet = quiet
        self.next_log = 0.1
        self.step = 0

    def progress(self, event) -> None:
        self.step = event.step
        if not self.bar.disable:
            loss = next((event.losses[k] for k in self.LOSS_KEYS if k in event.losses), None)
            loss_text = "" if loss is None else f"loss {loss:7.4f} "
            self.bar.set_description_str(
                f"{event.stage:<10} step {event.step:>6} {loss_text}{format_duration(event.remaining):>6} left",
                refresh=False)
            self.bar.update(round(event.fraction * 100, 2) - self.bar.n)
        elif not self.quiet and event.fraction >= self.next_log:
            self.next_log = math.floor(event.fraction * 10 + 1e-9) / 10 + 0.1
            losses = ", ".join(f"{k} {v:.4f}" for k, v in event.losses.items())
            log.info("%3.0f%% %s step %d (%s), %s left", event.fraction * 100, event.stage, event.step, losses,
                     format_duration(event.remaining))

    def close(self) -> None:
        self.bar.close()


def _resume_command(argv: Sequence[str], drop_options: Sequence[str] = (), drop_flags: Sequence[str] = ()) -> str:
    """The command line that continues an interrupted run: the same words without ``drop_options`` (and their
    values) and ``drop_flags``, with --resume added."""
    words, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word in drop_options:
            skip = True
        elif word not in drop_flags and not any(word.startswith(f"{option}=") for option in drop_options):
            words.append(word)
    if "--resume" not in words:
        words.append("--resume")
    return shlex.join([PROG, *words])


@dataclass
class _TrainOutcome:
    """What a finished training run reported: its Done event, last step, RoundStarted (project rounds) and the
    names of the images that received pseudo-labels."""

    done: object | None = None
    step: int = 0
    started: object | None = None
    pseudo_names: set[str] = field(default_factory=set)


def _run_training(events, quiet: bool, out: Path | None, resume_command: str) -> _TrainOutcome | None:
    """Drive a training generator (``core.training.train`` or ``core.rounds.train_round``) with the progress
    display and log lines; None when Ctrl-C stopped it (the message with ``resume_command`` is printed)."""
    from napari_diffseg.core import training
    from napari_diffseg.core.checkpoint import LAST
    from napari_diffseg.core.rounds import RoundStarted

    display = _TrainDisplay(quiet)
    outcome = _TrainOutcome()
    try:
        with contextlib.closing(events), _bar_logging(display.bar):
            for event in events:
                if isinstance(event, training.Progress):
                    display.progress(event)
                elif isinstance(event, RoundStarted):  # train_round logs what it starts from
                    outcome.started, out = event, event.out_dir
                elif isinstance(event, training.CheckpointSaved):
                    if event.kind == training.CheckpointKind.BEST and event.fit is not None:
                        log.info("step %d: model written (%s) -> %s", event.fit.step, event.fit.describe(),
                                 event.path)
                    else:
                        log.debug("step %d: saved %s", display.step, event.path)
                elif isinstance(event, training.PseudoLabelsReady):
                    outcome.pseudo_names.update(event.names)
                    mean = (sum(event.mean_uncertainty.values()) / len(event.mean_uncertainty)
                            if event.mean_uncertainty else float("nan"))
                    log.info("step %d: pseudo-labels of %d unlabelled image(s) -> %s (mean uncertainty %.3f)",
                             event.step, len(event.names), event.directory, mean)
                elif isinstance(event, training.Done):
                    outcome.done = event
    except KeyboardInterrupt:
        # the generator is closed (by contextlib.closing or by the exception passing through it): last.pt is saved
        display.close()
        if out is not None and (out / LAST).is_file():
            print(f"{PROG}: interrupted at step {display.step}; {out / LAST} is saved. Resume with:\n"
                  f"  {resume_command}", file=sys.stderr)
        else:
            print(f"{PROG}: interrupted before the first step; nothing saved", file=sys.stderr)
        return None
    finally:
        display.close()
    outcome.step = display.step
    return outcome


def _print_trained(out: Path, outcome: _TrainOutcome, labels_only: bool, device, prefix: str = "") -> None:
    """The summary lines shared by ``train`` and ``project train``: steps and time, selected twin, model."""
    from napari_diffseg.core.checkpoint import BEST, read_model_card

    card = read_model_card(out)
    trained = card.get("training", {})
    fit = outcome.done.fit if outcome.done is not None else FitReport.from_dict(card.get("metrics", {}))
    print(f"{prefix}trained {trained.get('steps', outcome.step)} steps in "
          f"{format_duration(trained.get('elapsed_seconds', 0))} "
          f"({'labels only' if labels_only else 'teacher + student'}, {device})")
    print(f"kept:     {fit.describe() if fit is not None else 'no model yet'} (a fit, not a validation)")
    print(f"model:    {out / BEST}   -> diffseg predict {shlex.quote(str(out))} IMAGES --out MASKS")


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


def _cmd_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from napari_diffseg.core import device as devices, training
    from napari_diffseg.core.checkpoint import CARD, LAST

    config = _train_config(args, args.num_classes)
    device = devices.select_device(config.device)  # an unavailable device fails before any image is read
    devices.configure_threads(config.threads)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for the model")
    for given, folder in (("images", args.images), ("labels", args.labels)):
        if out.resolve() == Path(folder).resolve():
            raise InputError(f"--out {out} is the {given} folder; give the model its own folder")
    _check_writable_folder(out)  # before minutes of training, not after
    if args.resume and not (out / LAST).is_file():
        raise ModelError(f"{out / LAST}: nothing to resume (no last.pt); start without --resume")
    if not args.resume and (out / LAST).exists():
        log.warning("%s already holds a model; it will be replaced (use --resume to continue it instead)", out)
    data = _read_training_data(Path(args.images), Path(args.labels), config.num_classes)
    n_unlabelled = len(data.unlabelled_indices)
    kind = describe_kind(data.spatial_dims, data.channels)
    log.info("%d %s image(s): %d labelled, %d unlabelled%s", len(data.images), kind, len(data.labelled_indices),
             n_unlabelled, " (not trained on: --labels-only)" if config.labels_only and n_unlabelled else "")
    if not config.labels_only and not data.unlabelled_indices:
        log.warning("every image is labelled: the semi-supervised stages have no unlabelled image to learn from")
    method = "labels-only baseline" if config.labels_only else "diffusion teacher + co-trained student"
    log.info("training the %s on %s, %s, into %s", method, device, _limits(config), out)

    events = training.train(data, config, out, resume=args.resume,
                            warm_start=Path(args.warm_start) if args.warm_start else None)
    outcome = _run_training(events, args.quiet, out, _resume_command(argv, drop_options=("--warm-start",)))
    if outcome is None:
        return EXIT_INTERRUPTED
    _print_trained(out, outcome, config.labels_only, device)
    print(f"resume:   {out / LAST};  card: {out / CARD};  losses: {out / training.LOSSES_FILE}")
    if n_unlabelled:
        print(f"pseudo-labels of the {n_unlabelled} unlabelled image(s): {out / training.PSEUDO_LABEL_DIR}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------- predict
def _prediction_inputs(source: Path) -> list[Path]:
    from napari_diffseg.core import io

    if not source.exists():
        raise InputError(f"input not found: {source}; give an image file or a folder of images")
    if source.is_dir():
        images, _ = io.pair_images_with_labels(source, None)  # also refuses two images with one name stem
        return images
    if source.suffix.lower() not in io.IMAGE_SUFFIXES:
        raise InputError(f"{source}: unsupported file type '{source.suffix}'; give a .tif, .tiff, .png, .jpg or "
                         ".jpeg image or a folder of them")
    return [source]


def _cmd_predict(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from napari_diffseg.core import device as devices, io
    from napari_diffseg.core.model import SegmentationModel

    device = devices.select_device(args.device)
    threads = devices.configure_threads(args.threads)
    inputs = _prediction_inputs(Path(args.input))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for the masks")
    targets = {path: out / f"{io.name_stem(path)}.tif" for path in inputs}
    sources = {path.resolve() for path in inputs}
    for target in targets.values():
        for candidate in (target, target.with_name(f"{target.stem}{UNCERTAINTY_SUFFIX}.tif")):
            if candidate.resolve() in sources:
                raise InputError(f"writing {candidate} would overwrite an input image; choose another --out folder")
    bf16 = False if args.no_bf16 else devices.bf16_supported(device)
    model = SegmentationModel.load(Path(args.model), device=device, bf16=bf16)
    config = model.config
    if args.tile is not None and len(args.tile) != config.spatial_dims:
        raise InputError(f"--tile needs {config.spatial_dims} numbers for this {config.spatial_dims}D model, "
                         f"got {len(args.tile)}")
    kind = describe_kind(config.spatial_dims, config.image_channels)
    log.info("predicting %d image(s) with the %s model in %s (threshold %.2f) on %s, %d thread(s)",
             len(inputs), kind, args.model, model.threshold, device, threads)

    started = time.perf_counter()
    failed: list[tuple[str, str]] = []
    images_bar = _bar(args.quiet, total=len(inputs), unit="image", desc="predict")
    try:
        with _bar_logging(images_bar):
            for path in inputs:
                images_bar.set_postfix_str(path.name)
                try:
                    image = io.read_image(path)
                    run = model.iter_predict(image, uncertainty=args.uncertainty, draws=args.draws,
                                             sampling_steps=args.sampling_steps,
                                             tile=tuple(args.tile) if args.tile else None, name=path.name)
                    tiles_bar = None  # only for images of several tile batches
                    try:
                        while True:
                            try:
                                progress = next(run)
                            except StopIteration as stop:
                                prediction = stop.value
                                break
                            if tiles_bar is None and progress.done < progress.total:
                                tiles_bar = _bar(args.quiet, total=progress.total, unit="tile", desc="  tiles",
                                                 leave=False)
                            if tiles_bar is not None:
                                tiles_bar.update(progress.done - tiles_bar.n)
                    finally:
                        if tiles_bar is not None:
                            tiles_bar.close()
                        run.close()
                    io.write_mask(targets[path], prediction.mask)
                    if args.uncertainty:
                        uncertainty_path = targets[path].with_name(f"{targets[path].stem}{UNCERTAINTY_SUFFIX}.tif")
                        io.write_tiff_atomic(uncertainty_path, prediction.uncertainty.astype("float32"))
                    foreground = float((prediction.mask > 0).mean())
                    log.debug("%s: %s, foreground %.1f%%", path.name, prediction.mask.shape, 100 * foreground)
                except DiffsegError as error:  # one bad file: go on with the others, list it at the end
                    failed.append((path.name, one_line(error)))
                    message = one_line(error)  # it usually names the file already
                    log.warning("%s", message if path.name in message else f"{path.name}: {message}")
                images_bar.update(1)
    finally:
        images_bar.close()
    extra = f" and <stem>{UNCERTAINTY_SUFFIX}.tif uncertainty maps" if args.uncertainty else ""
    print(f"predicted {len(inputs) - len(failed)} image(s) in {format_duration(time.perf_counter() - started)}: "
          f"masks <stem>.tif{extra} in {out}")
    if failed:
        print(f"{PROG}: error: {len(failed)} of {len(inputs)} image(s) failed: "
              + "; ".join(f"{name} ({reason})" for name, reason in failed), file=sys.stderr)
        return EXIT_USER_ERROR
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------- eval, info
def _cmd_eval(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from napari_diffseg.core import metrics

    rows = metrics.evaluate_folders(Path(args.pred), Path(args.masks))
    print(metrics.format_table(rows))
    if args.csv:
        path = Path(args.csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["name", "dice", "jaccard", "hd95"])
            writer.writeheader()
            writer.writerows(rows)
        log.info("table written to %s", path)
    return EXIT_OK


def _cmd_info(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from napari_diffseg.core.checkpoint import CARD
    from napari_diffseg.core.model import SegmentationModel

    model_dir = Path(args.model)
    model = SegmentationModel.load(model_dir)  # validates best.pt
    card = model.card
    config = model.config
    kind = describe_kind(config.spatial_dims, config.image_channels)
    print(f"model folder: {model_dir}")
    print(f"method:       {card.get('method', 'unknown (no ' + CARD + ')')}")
    print(f"network:      {kind} images, {config.num_classes} classes, width {config.base_channels}, "
          f"depth {config.depth}")
    if card:
        data = card.get("data", [])
        labelled = sum(1 for entry in data if entry.get("label_sha256"))
        training_info = card.get("training", {})
        print(f"data:         {len(data)} image(s), {labelled} labelled")
        print(f"training:     {training_info.get('steps', '?')} steps, "
              f"{format_duration(training_info.get('elapsed_seconds', 0))}, patch {card.get('patch_size')}, "
              f"batch {card.get('batch_size')}, working scale {card.get('working_scale', 1.0)}")
        fit = FitReport.from_dict(card.get("metrics", {}))
        print(f"kept:         {fit.describe() if fit is not None else 'no model yet'}")
        environment = card.get("environment", {})
        if environment:
            print(f"trained with: torch {environment.get('torch')}, {environment.get('device')}, "
                  f"{environment.get('threads')} thread(s), bf16 {environment.get('bf16')}")
    else:
        print(f"threshold:    {model.threshold:.2f} ({CARD} missing)")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------- project
def _open_project(folder: str):
    from napari_diffseg.core.project import Project

    return Project.open(Path(folder))


def _text_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns aligned: the first left-aligned, the others right-aligned."""
    cells = [[str(value) for value in row] for row in [header, *rows]]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    return "\n".join("  ".join([line[0].ljust(widths[0]), *(v.rjust(w) for v, w in zip(line[1:], widths[1:]))])
                     .rstrip() for line in cells)


def _cmd_project_create(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from napari_diffseg.core import io
    from napari_diffseg.core.project import Project

    images_dir = Path(args.images)
    bar = _bar(args.quiet, total=len(io.list_images(images_dir)), unit="image", desc="add")
    try:
        with _bar_logging(bar):
            project = Project.create_from_folders(Path(args.project), images_dir, args.labels and Path(args.labels),
                                                  args.num_classes, on_image=lambda path: bar.update(1))
    finally:
        bar.close()
    labelled, image_count = len(project.labelled_names()), len(project.names())
    folder = project.folder
    print(f"created project {folder}: {image_count} image(s), {labelled} labelled, "
          f"{image_count - labelled} unlabelled ({args.num_classes} classes)")
    if labelled:
        print(f"next: diffseg project train {shlex.quote(str(folder))}")
    else:
        print("next: label a few images in napari (Project panel: open this folder; Annotate panel), then "
              f"diffseg project train {shlex.quote(str(folder))}")
    return EXIT_OK


def _cmd_project_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from napari_diffseg.core import device as devices, rounds
    from napari_diffseg.core.checkpoint import LAST

    project = _open_project(args.project)
    config = _train_config(args, project.num_classes, project.config.get(rounds.TRAIN_CONFIG_KEY))
    device = devices.select_device(config.device)  # an unavailable device fails before the round changes
    devices.configure_threads(config.threads)
    if args.next_round:  # what napari's 'Next round' button does: a new round, then train it warm-started
        project.next_round()
    round_ = project.current_round
    round_dir = project.checkpoints_dir(round_)
    if args.resume and not (round_dir / LAST).is_file():
        raise ModelError(f"{round_dir / LAST}: nothing to resume in round {round_}; start without --resume")
    if not args.resume and (round_dir / LAST).exists():
        log.warning("round %d already has a model in %s; it will be replaced (--next-round starts round %d "
                    "from it instead, --resume continues it)", round_, round_dir, round_ + 1)
    method = "labels-only baseline" if config.labels_only else "diffusion teacher + co-trained student"
    log.info("training round %d of %s: the %s on %s, %s", round_, project.folder, method, device, _limits(config))

    events = rounds.train_round(project, config, warm_start=True, resume=args.resume)
    outcome = _run_training(events, args.quiet, round_dir, _resume_command(argv, drop_flags=("--next-round",)))
    if outcome is None:
        return EXIT_INTERRUPTED
    started = outcome.started
    _print_trained(round_dir, outcome, config.labels_only, device, prefix=f"round {round_}: ")
    if started is not None:
        print(f"start:    {started.note}")
    where = project.pseudo_dir(round_)
    queue = project.review_queue()
    print(f"pseudo-labels: {len(outcome.pseudo_names)} image(s) stored in {where}; review queue: {len(queue)} "
          f"image(s) (diffseg project status {shlex.quote(str(args.project))})")
    print("next:     review in napari (Review panel), then "
          f"diffseg project train {shlex.quote(str(args.project))} --next-round")
    return EXIT_OK


def _cmd_project_pretrain(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from napari_diffseg.core import device as devices, rounds
    from napari_diffseg.core.training import pretraining_info

    project = _open_project(args.project)
    for name in ("pretrain_fraction", "rounds", "rounds_every", "patch_size", "batch_size", "steps"):
        setattr(args, name, None)  # the settings of _train_config that pretraining does not offer
    args.labels_only = args.chained_rounds = False
    config = _train_config(args, project.num_classes, project.config.get(rounds.TRAIN_CONFIG_KEY))
    devices.configure_threads(config.threads)
    folder = rounds.pretrain_dir(project)
    before = pretraining_info(folder)
    log.info("pretraining the teacher of %s without labels for %s%s", project.folder, format_duration(args.budget),
             f" (continuing {format_duration(before['seconds'])} done before)" if before else "")
    outcome = _run_training(rounds.pretrain_project(project, config), args.quiet, folder, _resume_command(argv))
    if outcome is None:
        return EXIT_INTERRUPTED
    done = pretraining_info(folder) or {"seconds": 0.0, "steps": 0}
    print(f"teacher pretrained for {format_duration(done['seconds'])} in total ({done['steps']} steps) -> {folder}")
    print(f"next:     diffseg project train {shlex.quote(str(args.project))} (round 1 co-trains from this teacher)")
    return EXIT_OK


def _cmd_project_status(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from napari_diffseg.core.project import ImageStatus

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
    written, skipped = project.export_masks(Path(args.out))
    print(f"exported {sum(written.values())} mask(s) to {args.out}: "
          + ", ".join(f"{count} {source}" for source, count in written.items()))
    if skipped:
        print(f"skipped {sum(skipped.values())} image(s): "
              + ", ".join(f"{count} {source}" for source, count in skipped.items()))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------- main
def _error(message: str) -> None:
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr)


_ANSWERING_COMMANDS = frozenset({"_cmd_eval", "_cmd_info", "_cmd_project_status"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 unexpected failure, 2 user mistake, 130 Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as error:
        _error(str(error))
        return EXIT_USER_ERROR
    except SystemExit as exit_:  # --help, --version
        return int(exit_.code or 0)
    # -q: nothing but warnings and errors from the commands that work; those that answer a question (eval, info,
    # project status) still print their answer
    silent = args.quiet and args.handler.__name__ not in _ANSWERING_COMMANDS
    with _logging(args.quiet, args.verbose), contextlib.redirect_stdout(StringIO()) if silent \
            else contextlib.nullcontext():
        try:
            return args.handler(args, argv)
        except DiffsegError as error:
            _error(str(error))
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except OSError as error:  # permissions, full disk, ...: fixable by the user
            if args.debug:
                raise
            where = f"{error.filename}: " if getattr(error, "filename", None) else ""
            _error(f"{where}{error.strerror or error}")
            return EXIT_USER_ERROR
        except Exception as error:
            if args.debug:
                raise
            hint = ""
            if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
                hint = " (out of memory: try a smaller --patch-size / --batch-size / --tile, or --device cpu)"
            _error(f"unexpected {type(error).__name__}: {error}{hint}; run with --debug for the traceback")
            return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
