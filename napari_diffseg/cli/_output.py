"""What the commands show: log lines on stderr, progress bars, the training display and its summary."""

from __future__ import annotations

from collections.abc import Sequence
import contextlib
from dataclasses import dataclass, field
import logging
import math
from pathlib import Path
import shlex
import sys

from napari_diffseg.core.method.events import FitReport
from napari_diffseg.core.data.io import format_duration

from napari_diffseg.cli._common import PACKAGE_LOGGER, PROG, log
from napari_diffseg.cli._signals import stop_description


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
    """Drive a training generator (``core.method.training.train`` or ``core.project.rounds.train_round``) with the progress
    display and log lines; None when Ctrl-C, SIGTERM or SIGHUP stopped it (the message with ``resume_command`` is
    printed)."""
    from napari_diffseg.core.method import training
    from napari_diffseg.core.method.checkpoint import LAST
    from napari_diffseg.core.project.rounds import RoundStarted

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
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM / SIGHUP (cli._signals)
        # the generator is closed (by contextlib.closing or by the exception passing through it): last.pt is saved
        display.close()
        how = stop_description(interrupt)
        if out is not None and (out / LAST).is_file():
            print(f"{PROG}: {how} at step {display.step}; {out / LAST} is saved. Resume with:\n"
                  f"  {resume_command}", file=sys.stderr)
        else:
            print(f"{PROG}: {how} before the first step; nothing saved", file=sys.stderr)
        return None
    finally:
        display.close()
    outcome.step = display.step
    return outcome


def _print_trained(out: Path, outcome: _TrainOutcome, labels_only: bool, device, prefix: str = "") -> bool:
    """The summary lines shared by ``train`` and ``project train``: steps and time, selected twin, model. Returns
    whether the model's masks collapsed (then said on stderr, as a warning: the model is kept, its card says so)."""
    from napari_diffseg.core.method.checkpoint import BEST, read_model_card

    card = read_model_card(out)
    trained = card.get("training", {})
    fit = outcome.done.fit if outcome.done is not None else FitReport.from_dict(card.get("metrics", {}))
    print(f"{prefix}trained {trained.get('steps', outcome.step)} steps in "
          f"{format_duration(trained.get('elapsed_seconds', 0))} "
          f"({'labels only' if labels_only else 'teacher + student'}, {device})")
    print(f"kept:     {fit.describe() if fit is not None else 'no model yet'} (a fit, not a validation)")
    print(f"model:    {out / BEST}   -> diffseg predict {shlex.quote(str(out))} IMAGES --out MASKS")
    if fit is not None and fit.collapse:
        print(f"{PROG}: warning: the model's masks of its own labelled images are {fit.collapse} (predicted "
              f"foreground {fit.foreground[fit.kept_twin]:.1%}, labelled {fit.true_foreground:.1%}): the run failed "
              "to learn; train again with another --seed, a longer --budget or more labelled images", file=sys.stderr)
        return True
    return False


