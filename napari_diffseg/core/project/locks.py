"""One writer at a time: an OS file lock on a folder's ``training.lock``, the same on Linux, macOS and Windows.

The lock is the ``filelock`` library's (``flock`` on POSIX, ``msvcrt.locking`` on Windows, an existence lock on file
systems without either). The OS drops a native lock when its process dies, so a crash leaves no stale lock. Who holds
it (activity, process, user, host, since when) is written beside it in ``training.lock.holder`` for the refusal
message; that note is a courtesy, the lock file alone decides.

Used for the one trainer of a project (``Project.training_lock``) and the one run writing a model folder
(``diffseg train --out``). Two locks on one path refuse each other even inside one process (each holds its own file
descriptor), so a second trainer started from the same napari session is refused too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
import getpass
import os
from pathlib import Path
import shutil
import socket

from filelock import FileLock, Timeout

from ..errors import DiffsegError, InputError, UntrainedRunError

LOCK_NAME = "training.lock"
HOLDER_SUFFIX = ".holder"


def _holder_note(activity: str) -> str:
    try:
        user = getpass.getuser() or "unknown"
    except Exception:  # no user name to be found (containers): OSError, KeyError, ImportError
        user = "unknown"
    since = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"{activity} (process {os.getpid()} of {user} on {socket.gethostname()}, since {since})"


def _holder_path(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + HOLDER_SUFFIX)


def current_holder(lock_path: Path) -> str:
    """What the holder of ``lock_path`` wrote about itself, or "another process"."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return _holder_path(Path(lock_path)).read_text(encoding="utf-8").strip() or "another process"
    return "another process"


@contextlib.contextmanager
def exclusive(lock_path: Path, activity: str, busy_message: Callable[[str], str]) -> Iterator[None]:
    """Hold the lock ``lock_path`` (its folder must exist) while the block runs, or refuse at once:
    DiffsegError(``busy_message(holder)``) when another run holds it; InputError when it cannot be created."""
    lock_path = Path(lock_path)
    lock = FileLock(lock_path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise DiffsegError(busy_message(current_holder(lock_path))) from None
    except OSError as exc:
        raise InputError(f"cannot lock {lock_path}: {exc.strerror or exc}; check that the folder is writable") from exc
    holder = _holder_path(lock_path)
    try:
        with contextlib.suppress(OSError):
            holder.write_text(_holder_note(activity), encoding="utf-8")
        yield
    finally:
        with contextlib.suppress(OSError):
            holder.unlink(missing_ok=True)
        lock.release()


@contextlib.contextmanager
def model_folder_lock(folder: Path, created: bool = False) -> Iterator[None]:
    """One run writing the model folder ``folder`` (it must exist) at a time: DiffsegError when another run holds
    it. ``created``: the caller made the folder for this run; when the run fails before writing anything into it,
    or ends without learning anything (UntrainedRunError), the folder is removed again, so a failed command leaves
    no folder behind (a stopped run keeps its last.pt to resume)."""
    folder = Path(folder)

    def busy(holder: str) -> str:
        return (f"model folder {folder} is busy: {holder}; wait for it to finish or stop it, or train into another "
                "folder (one training per model folder)")

    try:
        with exclusive(folder / LOCK_NAME, f"training a model into {folder}", busy):
            yield
    except UntrainedRunError:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    except BaseException:
        if created:
            _remove_if_unused(folder)
        raise


def _remove_if_unused(folder: Path) -> None:
    """Remove ``folder`` when nothing but its lock file is in it."""
    with contextlib.suppress(OSError):
        if {path.name for path in folder.iterdir()} <= {LOCK_NAME}:
            (folder / LOCK_NAME).unlink(missing_ok=True)
            folder.rmdir()
