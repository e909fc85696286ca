"""The training budget's clock: optimisation time (carried over on resume) and steps, with the time spent on
everything else (pseudo-labels, checkpoints) kept apart; and ``Every``, a wall-clock schedule on it."""

from __future__ import annotations

import contextlib
import time

from .config import BudgetClock, TrainConfig


class Clock:
    """Budget bookkeeping: optimisation time (carried over on resume), steps, and the time spent on everything
    else (pseudo-labels, checkpoints), which ``paused`` keeps out of the budget."""

    def __init__(self, config: TrainConfig, elapsed: float = 0.0, overhead: float = 0.0):
        self.config = config
        self.offset = elapsed
        self.overhead = overhead
        self.now = time.process_time if config.schedule.budget_clock == BudgetClock.CPU else time.perf_counter
        self.start = self.now()
        self._paused_since: float | None = None
        self._paused_total = 0.0

    @property
    def elapsed(self) -> float:
        """Seconds of optimisation (wall time minus paused time)."""
        now = self._paused_since if self._paused_since is not None else self.now()
        return self.offset + now - self.start - self._paused_total

    @contextlib.contextmanager
    def paused(self):
        """Time inside this block counts as overhead, not budget (re-entrant)."""
        if self._paused_since is not None:
            yield
            return
        self._paused_since = self.now()
        try:
            yield
        finally:
            spent = self.now() - self._paused_since
            self._paused_total += spent
            self.overhead += spent
            self._paused_since = None

    def fraction(self, step: int) -> float:
        parts = []
        if self.config.schedule.budget_seconds is not None:
            parts.append(self.elapsed / self.config.schedule.budget_seconds)
        if self.config.schedule.max_steps is not None:
            parts.append(step / self.config.schedule.max_steps)
        return min(1.0, max(parts))

    def remaining(self, step: int) -> float:
        fraction = self.fraction(step)
        return 0.0 if fraction <= 0 else self.elapsed * (1 - fraction) / fraction


class Every:
    """A wall-clock schedule on the training clock: due ``first_after`` seconds after ``start`` (default: one
    period), then one period after each ``done``. Not due before ``start`` or ``done`` is called."""

    def __init__(self, seconds: float, first_after: float | None = None):
        self.seconds = seconds
        self.first_after = seconds if first_after is None else first_after
        self.next: float | None = None

    @property
    def started(self) -> bool:
        return self.next is not None

    def start(self, now: float) -> None:
        self.next = now + self.first_after

    def done(self, now: float) -> None:
        self.next = now + self.seconds

    def due(self, now: float) -> bool:
        return self.next is not None and now >= self.next
