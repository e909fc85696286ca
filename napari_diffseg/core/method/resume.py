"""What a run keeps to go on from: ``last.pt`` (weights, optimisers, step, stage, clock, random streams) and its
step log ``losses.csv``, written and restored. A part of ``TrainingRun`` (``training.TrainingRun`` inherits it)."""

from __future__ import annotations

import csv
from dataclasses import asdict
import io as _stringio
import logging
from pathlib import Path

from .checkpoint import LAST, RunCheckpoint
from .clock import Clock
from .events import Stage
from ..errors import ModelError
from ..data.io import atomic_write

log = logging.getLogger(__name__)

LOSSES_FILE = "losses.csv"


class RunResume:
    """last.pt and losses.csv; uses the run's ``config``, ``network_config``, ``plan``, ``scale``, ``data``,
    ``out_dir``, the twins and their optimisers, ``step``, ``stage``, ``stage_start``, ``student_pending_copy``,
    the random streams (``rng_state``, ``generator``, ``sampler.rng``) and ``loss_rows``."""

    def save_last(self, clock: Clock) -> Path:
        path = self.out_dir / LAST
        RunCheckpoint(
            config=self.config.to_dict(), network=asdict(self.network_config), working_scale=self.scale,
            plan=self.plan.to_dict(),
            teacher=self.teacher.state_dict(), teacher_optimiser=self.teacher_optimiser.state_dict(), step=self.step,
            stage=str(self.stage), stage_start=self.stage_start, student_pending_copy=self.student_pending_copy,
            elapsed=clock.elapsed, overhead=clock.overhead, data=self.data.fingerprints(),
            rng={"torch": self.rng_state, "generator": self.generator.get_state(),
                 "numpy": self.sampler.rng.bit_generator.state},
            student=None if self.student is None else self.student.state_dict(),
            student_optimiser=None if self.student is None else self.student_optimiser.state_dict(),
        ).save(path)
        self._write_losses()
        return path

    def restore(self, saved: RunCheckpoint, full: bool) -> tuple[float, float]:
        """Load weights from a last.pt; ``full`` also restores optimisers, step, stage, clock and RNG.
        Returns the (optimisation, overhead) seconds already spent (zeros for a warm start)."""
        saved_network = saved.network or {}
        differences = [f"{key} {saved_network.get(key)} vs {value}"
                       for key, value in asdict(self.network_config).items() if saved_network.get(key) != value]
        if differences:
            raise ModelError("the checkpoint was trained with other network settings or another kind of image "
                             f"(checkpoint vs now: {', '.join(differences)})")
        if full and saved.data != self.data.fingerprints():
            # e.g. masks accepted while the run was stopped: go on with them, keeping the step and the schedule
            log.warning("the images or labels changed since the interrupted run; it continues with the current "
                        "ones (step, schedule and optimisers kept)")
        try:
            self.teacher.load_state_dict(saved.teacher)
            if self.student is not None and saved.student is not None:
                self.student.load_state_dict(saved.student)
            if not full:
                if saved.student is not None and not saved.student_pending_copy:
                    self.student_pending_copy = False  # a warm start from a trained round brings both twins
                # from a teacher pretrained without labels, or from a round stopped before its student was made,
                # the student still starts as warmup_twins says (with "copy": the teacher trains alone through the
                # warm-up, then the student becomes its copy)
                return 0.0, 0.0
            self.teacher_optimiser.load_state_dict(saved.teacher_optimiser)
            if self.student is not None:
                self.student_optimiser.load_state_dict(saved.student_optimiser)
            self.step = int(saved.step)
            self.stage = Stage(saved.stage)
            self.rng_state = saved.rng["torch"]
            self.generator.set_state(saved.rng["generator"])
            self.sampler.rng.bit_generator.state = saved.rng["numpy"]
        except (KeyError, RuntimeError, TypeError, ValueError) as error:
            raise ModelError(f"the checkpoint does not fit this run ({type(error).__name__}: {error})") from None
        self.stage_start = float(saved.stage_start)
        self.student_pending_copy = bool(saved.student_pending_copy)
        losses_path = self.out_dir / LOSSES_FILE
        if losses_path.exists():
            self.loss_rows = list(csv.DictReader(losses_path.open()))
        return float(saved.elapsed), float(saved.overhead)

    def _write_losses(self) -> None:
        if self.loss_rows:
            write_loss_rows(self.out_dir / LOSSES_FILE, self.loss_rows)


def write_loss_rows(path: Path, rows: list[dict]) -> None:
    """A step log (losses.csv): step, stage and elapsed first, then the other columns in name order."""
    leading = ["step", "stage", "elapsed"]
    columns = leading + sorted({key for row in rows for key in row} - set(leading))
    buffer = _stringio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue().encode()))
