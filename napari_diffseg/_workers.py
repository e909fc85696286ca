"""The bridge from the core's event generators to napari thread workers; it never touches layers.

- :func:`start_job` runs a core generator in a napari ``GeneratorWorker``; every event the generator yields
  reaches the GUI thread through the worker's ``yielded`` signal, and slots (on the GUI thread) update the state
  and the layers.
- Cancel = ``worker.quit()``: the worker stops at the next yield and then *closes* the generator in the worker
  thread (:class:`ClosingGeneratorWorker`; superqt's worker would leave it suspended, and it would then be
  finalised later on whichever thread drops it), so the core's cleanup (writing ``last.pt``) runs off the GUI
  thread and before ``finished`` is emitted.
- Errors become one-line messages (:func:`error_message`: ``DiffsegError`` verbatim, anything else "Type:
  message") shown as napari error notifications. Unexpected exceptions are re-raised as :class:`WorkerFailure`
  because superqt treats a ``RuntimeError`` escaping a generator as "worker deleted" and would swallow it
  (torch reports most failures as RuntimeError).
- :func:`start_pretraining` / :func:`stop_pretraining` run stage 1 of the open project in the background while the
  user labels (one thread, lowest priority), stopped by Start, a project change or the user.
- :func:`start_training` / :func:`stop_training` drive one training round of the project of a
  :class:`~napari_diffseg._state.DiffsegState` and keep its status in step: idle -> running -> (stopping) ->
  done / idle / failed; Start works again from done, idle and failed.

Torch is imported lazily (inside the worker, or when training starts), never at import of this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
import gc
import importlib
import logging
import os
import re
import sys
import threading
import time
from typing import Any
import weakref

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import notifications

from napari_diffseg._state import DiffsegState, Status, note_unfinished_run
from napari_diffseg.core.errors import DiffsegError
from napari_diffseg.core.method.events import Done, Progress, PseudoLabelsReady, RoundStarted

log = logging.getLogger(__name__)


class WorkerFailure(Exception):
    """An unexpected error inside a worker, carried to the GUI thread as a one-line message."""


class ClosingGeneratorWorker(GeneratorWorker):
    """A GeneratorWorker that closes its generator in the worker thread when it stops, also after ``quit()``."""

    def work(self):  # noqa: D102 - runs in the worker thread
        try:
            return super().work()
        finally:
            self._gen.close()

    def run(self):  # noqa: D102 - runs in the worker thread
        try:
            super().run()
        except RuntimeError as error:  # the viewer was closed first: its end of this worker's signals is gone
            log.debug("worker ended after its viewer closed: %s", error)  # (an exception here would abort Qt)


def error_message(error: BaseException) -> str:
    """One line for the user, the reason first and a path moved to the end (:func:`reason_first`; napari cuts long
    notifications at the end, so a message that starts with a long path would show only the path): DiffsegError /
    WorkerFailure messages as written, other errors as 'Type: message'."""
    if isinstance(error, (DiffsegError, WorkerFailure)):
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}"
    line = reason_first(" ".join(text.split()))
    return line or type(error).__name__


_LEADING_PATH = re.compile(r"^(?P<path>(?:[A-Za-z]:)?[\\/][^\s:]+):\s+(?P<reason>\S.*)$")
_PATH_TOKEN = re.compile(r"(?<![\w/\\.])(?:[A-Za-z]:)?[\\/][^\s:;,'\"()\[\]]+")


def reason_first(message: str) -> str:
    """The reason first and the path last, as napari shows a notification only up to its width:
    '/long/path/last.pt: nothing to resume' -> 'nothing to resume: /long/path/last.pt'; a path inside the message
    ('/data/a.tif has unsupported pixel type int64; save it as ...', 'cannot create a project in /long/proj: the
    folder is not empty') is named by its last part there and given in full at the end ('a.tif has unsupported
    pixel type int64; save it as ...: /data/a.tif'). Only a path that exists is moved (a path with spaces is cut at
    the first one by the pattern, and that part does not exist); anything else stays as it is."""
    match = _LEADING_PATH.match(message)
    if match is not None:
        return f"{match['reason'].rstrip('.')}: {match['path']}"
    for token in _PATH_TOKEN.finditer(message):
        path = token.group(0).rstrip(".")
        rest = message[token.start() + len(path):]
        if not rest.strip(" .'\"") or not _exists(path):
            continue  # already at the end, or not a path of this machine
        name = re.split(r"[\\/]", path.rstrip("\\/"))[-1] or path
        return f"{message[:token.start()]}{name}{rest}".rstrip(" .") + f": {path}"
    return message


def _exists(path: str) -> bool:
    try:
        return os.path.exists(path)
    except (OSError, ValueError):
        return False


def notify_error(message: str) -> None:
    """Show a one-line error in napari's notification area (and the log)."""
    log.error(message)
    notifications.show_error(message)


def notify_collapse(fit) -> None:
    """Warn that a finished run's masks of its own labelled images collapsed (``FitReport.collapse``)."""
    message = (f"The model's masks of its labelled images are {fit.collapse}: the run failed to learn. Train again "
               "with a longer budget, another seed or more labelled images.")
    log.warning(message)
    notifications.show_warning(message)


_TORCH_IMPORT_LOCK = threading.Lock()


def import_torch_once(optimisers: bool = True) -> None:
    """Import torch in the calling worker thread, one thread at a time: two threads importing it at once (the
    Train panel's version label and the background pretraining, say) left one with a half-initialised torch
    ("'_OpNamespace' 'prims' object has no attribute 'sum'"). ``optimisers``: also torch._dynamo, which the first
    optimiser imports lazily (as racy as torch itself; 0.7-1.3 s more, which a job that only asks torch for its
    version and devices need not spend while the user works in the viewer). When this process's first import of
    torch happens here, what each import brings is set aside from the garbage collector
    (:func:`_freeze_startup_objects`)."""
    global _freezing
    with _TORCH_IMPORT_LOCK:
        modules = [name for name in ("torch", "torch._dynamo")[: 2 if optimisers else 1] if name not in sys.modules]
        if not modules:
            return
        if modules[0] == "torch":
            _freezing = True
        collecting = _freezing and gc.isenabled()
        if collecting:
            gc.collect()  # what is garbage now must not be frozen (the first time about 0.15 s; later only what is
            # not frozen yet)
            gc.disable()  # torch's ~200,000 new objects would trigger full collections (0.2 s each) mid-import
        try:
            if "torch" in modules:
                _preload_torch_libraries()
            for name in modules:
                importlib.import_module(name)
            if _freezing:
                _freeze_startup_objects()  # before collections resume: the import's objects are all in the youngest
                # generation, and the first collection after it walked them all (a 190-200 ms stall)
        finally:
            if collecting:
                gc.enable()


_freezing = False  # whether this process's first torch import happened here (not in a script or a test's import)


TORCH_LIBRARIES = ("libc10.so", "libtorch_cpu.so", "libtorch.so", "libtorch_python.so")  # in dependency order


def _preload_torch_libraries() -> None:
    """Load torch's shared libraries with the GIL released, so that ``import torch`` finds them loaded.

    Python's import (and ``ctypes.CDLL``) calls ``dlopen`` with the GIL held, and loading libtorch_cpu (hundreds of
    MB of code to map and relocate) held it for 190-290 ms: the viewer froze that long when the Train panel first
    opened, although torch is imported in a worker thread. A foreign call through ctypes releases the GIL, so
    libc's ``dlopen`` is called directly (Linux only; the same flags as Python's import: RTLD_NOW, local symbols).
    Anything unexpected leaves the work to ``import torch``."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import importlib.util
        from pathlib import Path

        spec = importlib.util.find_spec("torch")
        if spec is None or spec.origin is None:
            return
        folder = Path(spec.origin).parent / "lib"
        dlopen = ctypes.CDLL(None).dlopen
        dlopen.restype, dlopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]
        for name in TORCH_LIBRARIES:
            if (folder / name).is_file() and not dlopen(str(folder / name).encode(), os.RTLD_NOW | os.RTLD_LOCAL):
                return  # import torch will load it and report what is wrong
    except Exception:
        log.debug("preloading torch's libraries failed", exc_info=True)


_layers_frozen: weakref.WeakSet = weakref.WeakSet()  # the viewers' layers when the startup objects were frozen
_viewers_watched: weakref.WeakSet = weakref.WeakSet()


def _freeze_startup_objects() -> None:
    """Move every object alive right after an import of torch (or torch._dynamo) into the collector's permanent
    generation.

    With napari and torch loaded the process tracks 440,000-470,000 objects (napari alone 230,000), and each of
    Python's full garbage collections walks them all with the GIL held: 200-290 ms on 2 cores, about once per
    training run, the only stall over 200 ms left in the GUI (benchmarks/gui_event_loop.md). Those objects are
    modules, classes and functions that live as long as the process; after the freeze a full collection walks
    only what was created since. Frozen objects are never collected, though, and a napari layer is freed by the
    collector (its events make cycles): so the layers that exist at this moment are remembered, and when one of
    them is removed from its viewer everything is unfrozen again (that image must not stay in memory; full
    collections cost what they did before). Layers added later are collected as usual."""
    try:
        from napari.viewer import Viewer

        viewers = list(Viewer._instances)
    except Exception:  # napari's private registry changed: do not freeze what cannot be watched
        log.debug("not freezing the startup objects", exc_info=True)
        return
    gc.freeze()
    for viewer in viewers:
        _layers_frozen.update(viewer.layers)
        if viewer not in _viewers_watched:
            _viewers_watched.add(viewer)
            viewer.layers.events.removed.connect(_unfreeze_if_frozen_layer)
    log.debug("froze the startup objects")  # (gc.get_freeze_count() would walk them all: 50 ms)


def _unfreeze_if_frozen_layer(event: Any) -> None:
    if event.value in _layers_frozen:
        _layers_frozen.clear()
        gc.unfreeze()
        log.debug("a layer from before the freeze was removed: startup objects unfrozen")


def torch_loaded() -> bool:
    """Whether torch is fully imported (it is in ``sys.modules`` as soon as an import starts)."""
    return "torch" in sys.modules and not _TORCH_IMPORT_LOCK.locked()


KEEP_THREADS = 0  # start_job(threads=KEEP_THREADS): a job that leaves torch's thread count as it is


def _guarded(make_events: Callable[[], Iterator[Any]], threads: int | None, needs_torch: bool) -> Iterator[Any]:
    """Run in the worker thread: import torch (if the job uses it) and set its threads, build the core generator,
    relay its events, translate errors."""
    try:
        if needs_torch:
            import_torch_once()
        if threads != KEEP_THREADS:
            from napari_diffseg.core.device import configure_threads

            configure_threads(threads)  # None: cores - 1, one core stays free for the GUI
        events = make_events()
        with contextlib.closing(events) if hasattr(events, "close") else contextlib.nullcontext():
            yield from events
    except DiffsegError:
        raise
    except Exception as error:
        log.exception("worker failed")
        raise WorkerFailure(error_message(error)) from error


def start_job(
    make_events: Callable[[], Iterator[Any]],
    on_yielded: Callable[[Any], None],
    on_errored: Callable[[BaseException], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    on_returned: Callable[[Any], None] | None = None,
    threads: int | None = None,
    needs_torch: bool = True,
) -> ClosingGeneratorWorker:
    """Start ``make_events()`` (called in the worker thread) in a napari worker; the callbacks run on the GUI thread.

    Without ``on_errored`` an error is shown as a notification. ``threads``: torch threads for the job (None: cores - 1; KEEP_THREADS: unchanged);
    ``needs_torch``: import torch first, under a lock shared by all workers.
    """
    worker = create_worker(_guarded, make_events, threads, needs_torch, _worker_class=ClosingGeneratorWorker,
                           _ignore_errors=True, _start_thread=False)
    worker.yielded.connect(on_yielded)
    worker.errored.connect(on_errored or (lambda error: notify_error(error_message(error))))
    if on_returned is not None:
        worker.returned.connect(on_returned)
    if on_finished is not None:
        worker.finished.connect(on_finished)
    worker.start()
    return worker


PRETRAIN_MAX_SECONDS = 8 * 3600.0  # background pretraining runs until it is stopped (Train, project change, untick)
PRETRAIN_STOP_TIMEOUT_S = 30.0  # Train waits this long at most for the pretraining to stop at its next step


def pretraining_wanted(state: DiffsegState) -> bool:
    """Background stage 1 helps only before round 1 has a model: later rounds warm-start from the last round."""
    project = state.project
    return (state.pretrain_enabled and project is not None and not state.busy and not state.read_only
            and project.current_round == 1
            and project.latest_model_dir() is None and bool(project.names()))


def start_pretraining(state: DiffsegState) -> ClosingGeneratorWorker | None:
    """Pretrain the teacher of the open project in the background (stage 1, no labels) while the user labels: one
    torch thread, the lowest thread priority, until stopped; round 1 then co-trains from it. None when not
    wanted (see :func:`pretraining_wanted`) or already running."""
    if state.pretrain_worker is not None or not pretraining_wanted(state):
        return None
    project = state.project
    config = state.config.replace(budget_seconds=PRETRAIN_MAX_SECONDS, max_steps=None, threads=1)

    def events():
        from qtpy.QtCore import QThread

        from napari_diffseg.core.project import rounds

        QThread.currentThread().setPriority(QThread.LowestPriority)
        yield from rounds.pretrain_project(project, config)

    def on_yielded(event: Any) -> None:
        if isinstance(event, Progress):  # its elapsed: the total pretraining seconds so far
            state.pretrain_seconds = float(event.elapsed)
            state.pretrain_changed.emit(state.pretrain_seconds)

    def on_errored(error: BaseException) -> None:  # never in the user's way: the log and the panel say it
        log.warning("background pretraining stopped: %s", error_message(error))
        state.pretrain_changed.emit(state.pretrain_seconds)

    def on_finished() -> None:
        state.pretrain_worker = None
        state.pretrain_changed.emit(state.pretrain_seconds)
        if state.project is not project:  # stopped because another project was opened: pretrain that one
            start_pretraining(state)

    state.pretrain_worker = start_job(events, on_yielded, on_errored, on_finished, threads=1)
    state.pretrain_changed.emit(state.pretrain_seconds)
    return state.pretrain_worker


def stop_pretraining(state: DiffsegState, wait: bool = False) -> None:
    """Stop the background pretraining at its next step (it saves its teacher first); ``wait``: until it has."""
    worker = state.pretrain_worker
    if worker is None:
        return
    worker.quit()
    if wait:
        from qtpy.QtWidgets import QApplication

        deadline = time.monotonic() + PRETRAIN_STOP_TIMEOUT_S
        while state.pretrain_worker is not None and time.monotonic() < deadline:
            QApplication.processEvents()
            time.sleep(0.01)


def start_training(state: DiffsegState, next_round: bool = False, resume: bool = False) -> ClosingGeneratorWorker | None:
    """Train the current round of the state's project (with ``next_round``: the next round, which the engine begins
    only once it holds the project's training lock and takes back when the run ends before its first step).

    Returns the worker, or None (with a notification) when training cannot start. A background pretraining is
    stopped first (its teacher saved), and round 1 co-trains from it.
    """
    if state.busy:
        notifications.show_warning("training is already running; stop it first")
        return None
    stop_pretraining(state, wait=True)
    project = state.project
    if project is None:
        notify_error("open or create a project first (Project panel)")
        return None
    if state.read_only:
        try:
            state.require_writable("train")
        except DiffsegError as error:
            notify_error(error_message(error))
        return None
    try:
        config = state.config
    except DiffsegError as error:
        notify_error(error_message(error))
        return None
    state.refresh_round()
    state.step = 0
    state.losses = []
    state.last_error = ""
    outcome = {"done": False}

    def on_yielded(event: Any) -> None:
        if isinstance(event, RoundStarted):  # the lock is held and (with next_round) the new round begun
            state.refresh_round()
        elif isinstance(event, Progress):
            state.step = event.step
            state.losses.append((event.step, event.stage, dict(event.losses)))
        elif isinstance(event, Done):
            outcome["done"] = True
        state.training_event.emit(event)
        if isinstance(event, PseudoLabelsReady):
            state.records_changed.emit()  # train_round stored them in the project before yielding

    def on_errored(error: BaseException) -> None:
        message = error_message(error)
        state.last_error = message
        state.set_status(Status.FAILED)
        notify_error(message)
        state.error.emit(message)

    def on_finished() -> None:
        state.worker = None
        state.refresh_round()  # a Next round refused, failed or stopped before its first step was taken back
        if state.status in (Status.RUNNING, Status.STOPPING):
            state.set_status(Status.DONE if outcome["done"] else Status.IDLE)
        state.records_changed.emit()

    def events() -> Iterator[Any]:
        from napari_diffseg.core.project import rounds  # torch is imported here, in the worker thread

        # next_round: the engine begins the round once it holds the project's training lock, and takes it back
        # when the run is refused, fails or stops before its first step (another process training this project
        # leaves the round as it was)
        return _noting_unfinished_run(project, rounds.train_round(project, config, warm_start=True, resume=resume,
                                                                  next_round=next_round))

    state.set_status(Status.RUNNING)
    state.worker = start_job(events, on_yielded, on_errored, on_finished, threads=config.runtime.threads)
    return state.worker


def _noting_unfinished_run(project: Any, events: Iterator[Any]) -> Iterator[Any]:
    """``train_round``'s events, with the run noted in the project (``_state.note_unfinished_run``) in the worker
    thread, before the GUI sees the event: from the first step until Done a stop, a close or a kill leaves a run to
    resume; a run refused or failed before its first step changed nothing, so the note stays as it was. (The
    project is not written from the GUI thread, where a write waiting for the worker's transaction would stall
    the window.)"""
    round_, noted = None, False
    try:
        for event in events:
            if isinstance(event, RoundStarted):
                round_ = event.round
            elif isinstance(event, Progress) and not noted and round_ is not None:
                note_unfinished_run(project, round_)
                noted = True
            elif isinstance(event, Done):
                note_unfinished_run(project, None)  # nothing to resume in this round any more
            yield event
    finally:
        if hasattr(events, "close"):
            events.close()  # in this (the worker) thread: the run's clean-up writes last.pt


def stop_training(state: DiffsegState) -> None:
    """Ask the running training to stop at its next step (it saves last.pt first); status -> stopping."""
    if state.worker is not None and state.status == Status.RUNNING:
        state.set_status(Status.STOPPING)
        state.worker.quit()
