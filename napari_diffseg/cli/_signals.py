"""SIGTERM and SIGHUP stop a command the way Ctrl-C does.

SIGTERM is what SLURM's time limit, ``timeout`` and ``docker stop`` send; SIGHUP comes when the terminal or the ssh
session closes. Python's default for both is to die at once: no last.pt, no best.pt, no message. While a command
runs, :func:`signals_as_interrupt` makes them raise :class:`Terminated`, a ``KeyboardInterrupt``, so every path that
handles Ctrl-C (training saves last.pt and best.pt and prints the resume command; a project that was being created
is removed again) handles them too. The command then exits with 128 + the signal number (143 for SIGTERM, 129 for
SIGHUP), the shell's convention for "stopped by this signal", so a batch script can tell a stop from a failure and
from Ctrl-C (130). A repeated signal while the run saves is ignored, so ``timeout``'s or SLURM's follow-up cannot
tear the checkpoint apart; only SIGKILL can. A signal the parent set to be ignored (``nohup`` ignores SIGHUP) stays
ignored. The handlers are installed in the main thread only and restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
from dataclasses import dataclass
import signal
import threading

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Terminated(KeyboardInterrupt):
    """A stop signal, raised where the program was, like Ctrl-C's KeyboardInterrupt."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class StopSignal:
    """The stop signal received while the block ran, if any."""

    signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "Ctrl-C"

    def exit_code(self, default: int) -> int:
        """128 + the signal number once a stop signal was received, else ``default``."""
        return 128 + self.signum if self.signum is not None else default


def stop_description(interrupt: BaseException) -> str:
    """How the user stopped the run, for the message: "interrupted" (Ctrl-C) or "stopped by SIGTERM"."""
    return f"stopped by {interrupt}" if isinstance(interrupt, Terminated) else "interrupted"


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[StopSignal]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` (once; repeats are ignored)."""
    received = StopSignal()
    if threading.current_thread() is not threading.main_thread():
        yield received  # signal handlers can only be set from the main thread
        return

    def handle(signum, frame) -> None:
        if received.signum is not None:
            return  # already stopping: let the checkpoint be written
        received.signum = signum
        raise Terminated(signum)

    previous = {}
    try:
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:  # nohup: a hang-up is to be ignored, and stays so
                previous[signum] = signal.signal(signum, handle)
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
