"""GUI responsiveness while training runs: how late a 10 ms QTimer fires on napari's GUI thread.

Starts a real napari window (vispy needs an X display: run under ``xvfb-run``; ``QT_QPA_PLATFORM=offscreen``
does not work), opens the bundled DSB2018 sample, docks the DiffSeg panels (scripts/open_napari.py), makes a
project from the sample (12 images, 3 labelled) and then measures the lateness of a 10 ms timer (actual interval
minus 10 ms) in three phases:

1. idle: 10 s with the project open and nothing running (the baseline);
2. training with the Train panel in front (stage, step, live loss plot), for the first half of the budget;
3. training with the Review panel in front (as a user who starts reviewing while training goes on: new
   pseudo-labels refresh the queue and the shown layers), until the run ends. The click that brings the Review
   tab to the front (the first time, napari builds the three review layers and their controls) and the next
   0.5 s are a row of their own: that is the cost of a user action, not of training.

Training uses the default settings of the Train panel except the time budget. Prints a markdown table (phase,
samples, median / p95 / p99 / max lateness in ms) and writes it with the machine, versions, date and load
(``uptime``) to ``--out``. ``--profile`` adds a sampler of the GUI thread's Python stack (every 2 ms) and lists
where the GUI thread was when the timer was more than ``--stall-ms`` late; use it to find stalls (it perturbs
the timings a little, so measure without it). Every report (also without ``--profile``) ends with each tick later
than 200 ms and what reached the GUI thread around it (training events, status changes, phase changes, full
garbage collections), so a stall can be traced to its event from a measuring run. The last phase goes on for 0.5 s
after the round ends: a finished round brings the Review panel back to the top of its queue.

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_gui_event_loop.py --budget 60 \\
        --out benchmarks/gui_event_loop.md
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field
import datetime
import logging
import os
from pathlib import Path
import platform
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from open_napari import open_or_create_project, open_viewer, raise_panel  # noqa: E402

log = logging.getLogger("bench_gui_event_loop")

TARGET_P99_MS = 50.0
SWITCH_PHASE = "switch to the Review tab (user action, not training)"


@dataclass
class Probe:
    """A QTimer on the GUI thread recording (time, lateness in ms, phase) at every tick."""

    interval_ms: int = 10
    phase: str = ""
    ticks: list[tuple[float, float, str]] = field(default_factory=list)
    _last: float | None = None

    def start(self) -> None:
        from qtpy.QtCore import Qt, QTimer

        self.timer = QTimer()
        self.timer.setTimerType(Qt.PreciseTimer)
        self.timer.setInterval(self.interval_ms)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self._last = None  # an interval spanning two phases belongs to neither

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None and self.phase:
            self.ticks.append((now, (now - self._last) * 1000.0 - self.interval_ms, self.phase))
        self._last = now

    def lateness(self, phase: str) -> np.ndarray:
        return np.array([late for _, late, p in self.ticks if p == phase], dtype=float)


class FullCollections:
    """Python's full (generation 2) garbage collections during the run, whatever thread triggers them: each holds
    the GIL, so the GUI thread waits for it too (napari, Qt and torch make ~500,000 objects to walk)."""

    def __init__(self) -> None:
        import gc

        self.durations_ms: list[float] = []
        self.spans: list[tuple[float, float]] = []  # (start, end) on the probe's clock (time.perf_counter)
        self._began = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._began = time.perf_counter()
        else:
            end = time.perf_counter()
            self.durations_ms.append((end - self._began) * 1000.0)
            self.spans.append((self._began, end))

    def summary(self, probe: Probe | None = None) -> str:
        """How many, the longest; with ``probe``, also each one's duration and the phase it fell in."""
        if not self.durations_ms:
            return "no full garbage collection"
        text = (f"{len(self.durations_ms)} full garbage collection(s) (any thread; each holds the GIL), longest "
                f"{max(self.durations_ms):.0f} ms")
        if probe is not None:
            text += " (" + "; ".join(f"{(end - start) * 1000:.0f} ms in '{self.phase_of(start, probe)}'"
                                     for start, end in self.spans) + ")"
        return text

    @staticmethod
    def phase_of(moment: float, probe: Probe) -> str:
        """The phase of the first tick after ``moment`` (a tick records the phase it ends in)."""
        return next((phase for at, _, phase in probe.ticks if at >= moment), "after the last tick")


class StackSampler(threading.Thread):
    """Samples the GUI thread's Python stack every ``period`` seconds (for --profile)."""

    def __init__(self, period: float = 0.002):
        super().__init__(daemon=True)
        self.period = period
        self.target = threading.main_thread().ident
        self.samples: list[tuple[float, tuple[str, ...]]] = []
        self.running = True

    def run(self) -> None:
        while self.running:
            frame = sys._current_frames().get(self.target)
            stack = []
            while frame is not None:
                code = frame.f_code
                stack.append(f"{_short(code.co_filename)}:{code.co_name}:{frame.f_lineno}")
                frame = frame.f_back
            self.samples.append((time.perf_counter(), tuple(reversed(stack))))
            time.sleep(self.period)


SLOTS = ("napari_diffseg._widgets.train:TrainPanel._on_event", "napari_diffseg._widgets.train:TrainPanel._on_status",
         "napari_diffseg._widgets._loss_plot:LossPlot.redraw",
         "matplotlib.backends.backend_qtagg:FigureCanvasQTAgg.paintEvent",
         "matplotlib.backends.backend_qtagg:FigureCanvasQTAgg.draw",
         "napari_diffseg._widgets.project:ProjectPanel.refresh",
         "napari_diffseg._widgets.annotate:AnnotatePanel.refresh",
         "napari_diffseg._widgets.review:ReviewPanel.refresh",
         "napari_diffseg._widgets.review:ReviewPanel.show_image",
         "napari_diffseg._widgets.predict:PredictPanel._on_project")


class SlotTimer:
    """Wraps GUI-thread slots (before the panels are built) and records how long each call takes (--profile)."""

    def __init__(self, targets: tuple[str, ...] = SLOTS):
        import functools
        import importlib

        self.calls: dict[str, list[float]] = {}
        for target in targets:
            module_name, qualname = target.split(":")
            owner_name, method_name = qualname.split(".")
            try:
                owner = getattr(importlib.import_module(module_name), owner_name)
                original = getattr(owner, method_name)
            except (ImportError, AttributeError):  # e.g. matplotlib not installed
                continue
            durations = self.calls.setdefault(qualname, [])

            def timed(*args: Any, _original: Any = original, _durations: list = durations, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    _durations.append((time.perf_counter() - start) * 1000.0)

            setattr(owner, method_name, functools.wraps(original)(timed))

    def report(self) -> str:
        lines = ["| slot | calls | median ms | p95 ms | max ms | total ms |", "|---|---:|---:|---:|---:|---:|"]
        for name, durations in sorted(self.calls.items(), key=lambda item: -sum(item[1])):
            if durations:
                d = np.array(durations)
                lines.append(f"| {name} | {d.size} | {np.median(d):.1f} | {np.percentile(d, 95):.1f} | "
                             f"{d.max():.1f} | {d.sum():.0f} |")
        return "\n".join(lines)


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/work/main/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return Path(filename).name


def stall_report(probe: Probe, sampler: StackSampler, stall_ms: float, top: int = 15) -> str:
    """Where the GUI thread was during the late ticks: the innermost frame of our code, napari, vispy,
    matplotlib or Qt bindings seen in each sample, counted over all stalls."""
    times = np.array([t for t, _ in sampler.samples])
    where: Counter[str] = Counter()
    slots: Counter[str] = Counter()
    stalls = [(t, late) for t, late, phase in probe.ticks if late > stall_ms and phase.startswith("training")]
    for end, late in stalls:
        start = end - (late + probe.interval_ms) / 1000.0
        lo, hi = np.searchsorted(times, start), np.searchsorted(times, end)
        for _, stack in sampler.samples[lo:hi]:
            ours = [f for f in stack if f.startswith("napari_diffseg/")]
            slots[ours[0] if ours else "(no napari_diffseg frame)"] += 1
            where[" <- ".join(reversed(stack[-3:]))] += 1
    lines = [f"{len(stalls)} tick(s) later than {stall_ms:.0f} ms during training; stack samples in them:", "",
             "outermost napari_diffseg frame (the slot that ran):"]
    lines += [f"  {count:5d}  {frame}" for frame, count in slots.most_common(top)]
    lines += ["", "innermost frames:"]
    lines += [f"  {count:5d}  {frame}" for frame, count in where.most_common(top)]
    return "\n".join(lines)


LONG_STALL_MS = 200.0  # the target: no tick later than this


def long_stalls(probe: Probe, timeline: list[tuple[float, str]], collections: FullCollections, origin: float,
                stall_ms: float = LONG_STALL_MS, before_s: float = 0.3) -> str:
    """Every tick later than ``stall_ms`` (any phase), with what happened from ``before_s`` before the late interval
    began to its end: training events and status changes reaching the GUI thread, phase changes, and full garbage
    collections (any thread). Times in seconds from ``origin`` (the start of the idle phase)."""
    stalls = [(end, late, phase) for end, late, phase in probe.ticks if late > stall_ms]
    if not stalls:
        return f"No tick later than {stall_ms:.0f} ms."
    lines = [f"Ticks later than {stall_ms:.0f} ms ({len(stalls)}), with what happened from {before_s:.1f} s before "
             "each late interval to its end:", ""]
    for end, late, phase in stalls:
        start = end - (late + probe.interval_ms) / 1000.0
        near = [f"{name} at {at - origin:.2f}" for at, name in timeline if start - before_s <= at <= end]
        near += [f"full collection {(gc_end - gc_start) * 1000:.0f} ms at {gc_start - origin:.2f}"
                 for gc_start, gc_end in collections.spans if gc_start <= end and gc_end >= start - before_s]
        lines.append(f"- {late:.0f} ms late, interval {start - origin:.2f}-{end - origin:.2f} s, {phase}: "
                     + ("; ".join(near) if near else "no event, status change or full collection"))
    return "\n".join(lines)


def run_loop(seconds: float | None = None, until: Any = None, poll_ms: int = 100) -> None:
    """Run the Qt event loop for ``seconds``, or until ``until()`` is true (checked every ``poll_ms``)."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    if seconds is not None:
        QTimer.singleShot(int(seconds * 1000), loop.quit)
    checker = None
    if until is not None:
        checker = QTimer()
        checker.setInterval(poll_ms)
        checker.timeout.connect(lambda: until() and loop.quit())
        checker.start()
    loop.exec_()
    if checker is not None:
        checker.stop()


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def machine() -> str:
    import napari
    from qtpy import API_NAME, QT_VERSION
    import torch
    import vispy

    from napari_diffseg.core.device import default_threads

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPU(s); {platform.platform()}; Python {platform.python_version()}; "
            f"torch {torch.__version__} (training on {default_threads()} thread(s): cores - 1); "
            f"napari {napari.__version__}, vispy {vispy.__version__}, {API_NAME} / Qt {QT_VERSION}; "
            f"display {os.environ.get('DISPLAY', '?')} (QT_QPA_PLATFORM={os.environ.get('QT_QPA_PLATFORM', '')})")


def training_lateness(probe: Probe) -> np.ndarray:
    return np.array([late for _, late, phase in probe.ticks if phase.startswith("training")], dtype=float)


def table(probe: Probe, phases: list[str]) -> str:
    rows = ["| phase | samples | median ms | p95 ms | p99 ms | max ms | ticks > 50 ms |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for phase, late in [(p, probe.lateness(p)) for p in phases] + [("training, all", training_lateness(probe))]:
        if late.size == 0:
            rows.append(f"| {phase} | 0 | - | - | - | - | - |")
            continue
        p50, p95, p99 = np.percentile(late, [50, 95, 99])
        rows.append(f"| {phase} | {late.size} | {p50:.1f} | {p95:.1f} | {p99:.1f} | {late.max():.1f} | "
                    f"{int(np.sum(late > 50))} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=60.0, help="training budget in seconds (default 60)")
    parser.add_argument("--idle", type=float, default=10.0, help="idle baseline in seconds (default 10)")
    parser.add_argument("--interval-ms", type=int, default=10)
    parser.add_argument("--out", type=Path, help="write the table (markdown) here")
    parser.add_argument("--note", default="", help="a line added to the report (e.g. what changed)")
    parser.add_argument("--title", default="GUI event loop during training (napari-diffseg)",
                        help="heading of the report")
    parser.add_argument("--append", action="store_true", help="append the report to --out instead of replacing it")
    parser.add_argument("--profile", action="store_true", help="sample the GUI thread's stack; report stalls")
    parser.add_argument("--stall-ms", type=float, default=30.0, help="a tick this late is a stall (--profile)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        parser.error("napari's OpenGL canvas needs a real X display: run under xvfb-run, not offscreen")

    from napari_diffseg._state import Status
    from napari_diffseg.core.method.events import PseudoLabelsReady  # not core.method.training: torch loads in the worker, as in a user session

    slot_timer = SlotTimer() if args.profile else None
    load_before = uptime()
    log.info("load before: %s", load_before)
    viewer, panels, docks = open_viewer(show=True)
    project_panel, train = panels["Project"], panels["Train"]
    state = train.state
    temp = tempfile.TemporaryDirectory(prefix="diffseg-bench-gui-")
    open_or_create_project(project_panel, Path(temp.name) / "project")
    run_loop(until=lambda: project_panel.import_worker is None)
    run_loop(until=lambda: raise_panel(docks["Train"]))
    viewer.reset_view()
    run_loop(1.0)
    log.info("project: %s", project_panel.counts_label.text())

    probe = Probe(args.interval_ms)
    probe.start()
    collections = FullCollections()
    sampler = None
    if args.profile:
        sampler = StackSampler()
        sampler.start()
    phases = ["idle (project open, Train panel in front)", "training, Train panel in front",
              SWITCH_PHASE, "training, Review panel in front"]
    timeline: list[tuple[float, str]] = []  # (time.perf_counter(), what) for the long-stall list

    def set_phase(phase: str) -> None:
        probe.set_phase(phase)
        timeline.append((time.perf_counter(), f"phase '{phase}'"))

    origin = time.perf_counter()
    set_phase(phases[0])
    run_loop(args.idle)

    events: Counter[str] = Counter()

    def on_event(event: Any) -> None:
        name = type(event).__name__
        events.update([name])
        if name != "Progress":  # one per step: too many to list
            timeline.append((time.perf_counter(), name))

    state.training_event.connect(on_event)
    state.status_changed.connect(lambda status: timeline.append((time.perf_counter(), f"status {status.value}")))
    train.budget.setValue(int(args.budget))
    set_phase(phases[1])
    started = time.monotonic()
    train.start_button.click()
    if state.status != Status.RUNNING:
        raise SystemExit(f"training did not start: {state.last_error}")
    run_loop(until=lambda: time.monotonic() - started >= args.budget / 2 or not state.busy)
    set_phase(phases[2])  # the user's click: the first time, it creates the three review layers
    switched = time.monotonic()
    run_loop(until=lambda: raise_panel(docks["Review"]) and (panels["Review"].current_name() is not None
                                                             or time.monotonic() - switched > 5), poll_ms=10)
    run_loop(0.5)
    set_phase(phases[3])
    run_loop(until=lambda: not state.busy and state.worker is None)
    run_loop(0.5)  # the turns that follow the end of the round (Review back at the top of its queue) count too
    wall = time.monotonic() - started
    probe.timer.stop()
    if sampler is not None:
        sampler.running = False
    load_after = uptime()
    if state.status != Status.DONE:
        raise SystemExit(f"training ended with status {state.status.value}: {state.last_error}")

    result = table(probe, phases)
    counts = (f"{events['Progress']} training steps, {events[PseudoLabelsReady.__name__]} pseudo-label "
              f"deliveries, {events['CheckpointSaved']} checkpoints, {train.plot.draws} loss-plot redraws; "
              f"training took {wall:.0f} s of wall time (budget {args.budget:.0f} s); {collections.summary(probe)} "
              "from the idle phase to the end")
    verdict = "meets" if np.percentile(training_lateness(probe), 99) < TARGET_P99_MS else "misses"
    report = "\n".join([
        f"## {args.title}" if args.append else f"# {args.title}",
        "",
        f"Lateness of a {args.interval_ms} ms QTimer on napari's GUI thread (actual interval minus "
        f"{args.interval_ms} ms), `benchmarks/bench_gui_event_loop.py --budget {args.budget:.0f}`, "
        "real napari window under Xvfb, DSB2018 sample project (12 images, 3 labelled), default training "
        "settings of the Train panel apart from the budget.",
        "",
        result,
        "",
        f"Target: p99 < {TARGET_P99_MS:.0f} ms during training: **{verdict}** it.",
        "",
        f"- {counts}",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {machine()}",
        f"- load before: `{load_before}`",
        f"- load after: `{load_after}`",
    ] + ([f"- note: {args.note}"] if args.note else []) + [
        "", long_stalls(probe, timeline, collections, origin), ""])
    print(report)
    if sampler is not None:
        print(stall_report(probe, sampler, args.stall_ms))
        print("\nGUI-thread slots (whole run):\n" + slot_timer.report())
    if args.out is not None:
        if args.append and args.out.exists():
            report = args.out.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + report
        args.out.write_text(report, encoding="utf-8")
        log.info("wrote %s", args.out)
    viewer.close()
    temp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
