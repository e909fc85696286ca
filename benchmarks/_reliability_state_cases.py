"""Reliability cases of issue 25, part B, for bench_reliability.py: refused and failed commands that must change no
state, one run per project and per model folder, inputs a run cannot learn from, option values that must not kill
the process; and a stop of `diffseg train` by SIGTERM / SIGHUP in a subprocess.

``state_cases(root, fixtures)`` has the format of ``bench_reliability.cases``: (description, "error" | "warn",
argv), run in order (a retry follows the failure it retries). Locks that another trainer would hold are held by this
process for the rest of the campaign (a second lock on the same file refuses, even in one process).
"""

from __future__ import annotations

from dataclasses import dataclass
import contextlib
import os
from pathlib import Path
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import tifffile

from napari_diffseg import cli
from napari_diffseg.core.project import locks
from napari_diffseg.core.method.checkpoint import LAST, load_checkpoint
from napari_diffseg.core.prediction.model import SegmentationModel
from napari_diffseg.core.project.store import Project
from napari_diffseg.core.data.synthetic import make_blobs_dataset, write_dataset

FAST = ["--steps", "3", "--width", "8", "--patch-size", "32", "32", "--threads", "1"]
HUGE_THREADS = "100000"
NO_STEP_BUDGET = "1e-9"

_held = contextlib.ExitStack()  # the locks "another trainer" holds while the campaign runs


def _copy(path: Path, target: Path) -> Path:
    (shutil.copytree if path.is_dir() else shutil.copy)(path, target)
    return target


def _project(root: Path, name: str, images: Path, labels: Path | None) -> Path:
    folder = root / name
    Project.create_from_folders(folder, images, labels)
    return folder


def _dangling_link(folder: Path, name: str) -> None:
    (folder / name).symlink_to(folder / "gone" / name)


def state_cases(root: Path, fixtures: dict[str, Path]) -> list[tuple[str, str, list]]:
    """(description, expected "error" or "warn", argv) for the classes 2, 6, 7 and 8 of issue 25."""
    root = Path(root) / "state_cases"
    root.mkdir()
    im, lab, model = fixtures["images"], fixtures["labels"], fixtures["model"]
    out = lambda name: root / "out" / name  # noqa: E731

    busy_project = _project(root, "busy_project", im, lab)
    _held.enter_context(Project.open(busy_project).training_lock("training round 1 in napari (held by the campaign)"))
    busy_model = _copy(model, root / "busy_model")
    _held.enter_context(locks.model_folder_lock(busy_model))
    project = _project(root, "project", im, lab)
    unlabelled_project = _project(root, "unlabelled_project", im, None)
    trained_project = _project(root, "trained_project", im, lab)
    assert cli.main(["-q", "project", "train", str(trained_project), *FAST]) == 0
    rerun_model = _copy(model, root / "rerun_model")  # an earlier model that a run learning nothing must not touch

    wide = _copy(im, root / "float64_images")  # a float64 image beyond float32: inf once cast
    tifffile.imwrite(wide / "img_000.tif", np.full((48, 48), 1e300) * np.linspace(0.5, 1, 48))
    constant_labelled = _copy(im, root / "constant_labelled_images")
    for path in lab.iterdir():
        tifffile.imwrite(constant_labelled / path.name, np.full((48, 48), 7, np.uint16))
    constant_one = _copy(im, root / "constant_unlabelled_image")
    unlabelled = sorted(set(p.name for p in im.iterdir()) - set(p.name for p in lab.iterdir()))
    tifffile.imwrite(constant_one / unlabelled[0], np.zeros((48, 48), np.uint8))
    linked_images = _copy(im, root / "dangling_image_link")
    _dangling_link(linked_images, "img_099.tif")
    linked_labels = _copy(lab, root / "dangling_label_link")
    (linked_labels / unlabelled[0]).symlink_to(root / "gone" / unlabelled[0])  # an image's label, lost
    bad_shape_labels = _copy(lab, root / "bad_shape_labels")
    tifffile.imwrite(next(iter(sorted(bad_shape_labels.iterdir()))), np.ones((20, 20), np.uint8))
    extra_labels = _copy(lab, root / "labels_plus_one_stray")  # the retry: the good labels and one stray file
    tifffile.imwrite(extra_labels / "stray.tif", np.ones((48, 48), np.uint8))
    bitmap_label = _copy(lab, root / "labels_with_a_bitmap")  # a label saved as .bmp: its image would be unlabelled
    (bitmap_label / f"{Path(unlabelled[0]).stem}.bmp").write_bytes(b"BM a bitmap label")
    a_file = root / "a_file.txt"
    a_file.write_text("x")

    create = ["project", "create"]
    return [
        # 7 and 2: one run per project and per model folder; the refused run changes nothing
        ("project train --next-round while another trainer holds the project (round unchanged)", "error",
         ["project", "train", busy_project, "--next-round", *FAST]),
        ("project train while another trainer holds the project", "error", ["project", "train", busy_project,
                                                                             *FAST]),
        ("project train --resume on a busy project with nothing to resume", "error",
         ["project", "train", busy_project, "--resume", *FAST]),
        ("project pretrain while another trainer holds the project", "error",
         ["project", "pretrain", busy_project, "--budget", "1", "--width", "8", "--threads", "1"]),
        ("train --out a model folder another run is writing", "error", ["train", im, "--labels", lab, "--out",
                                                                        busy_model, *FAST]),
        ("train --resume in a model folder another run is writing", "error",
         ["train", im, "--labels", lab, "--out", busy_model, *FAST, "--resume"]),
        ("train --warm-start into a model folder another run is writing", "error",
         ["train", im, "--labels", lab, "--out", busy_model, *FAST, "--warm-start", model]),
        # 2: failed commands change no state, and a failed create can be retried
        ("project train --next-round, budget allows no step (round taken back)", "error",
         ["project", "train", project, "--next-round", "--budget", NO_STEP_BUDGET, "--width", "8", "--threads",
          "1"]),
        ("project train --next-round on a project without labels (round unchanged)", "error",
         ["project", "train", unlabelled_project, "--next-round", *FAST]),
        ("train --out an earlier model's folder, budget allows no step (folder unchanged)", "error",
         ["train", im, "--labels", lab, "--out", rerun_model, "--budget", NO_STEP_BUDGET, "--width", "8",
          "--threads", "1"]),
        ("project train the same round again, budget allows no step (round folder unchanged)", "error",
         ["project", "train", trained_project, "--budget", NO_STEP_BUDGET, "--width", "8", "--threads", "1"]),
        ("project train --resume with nothing to resume", "error", ["project", "train", project, "--resume",
                                                                    *FAST]),
        ("project create with a label of the wrong shape (nothing left behind)", "error",
         [*create, root / "retried", "--images", im, "--labels", bad_shape_labels]),
        ("project create retried in the same folder after the failure (a stray label warned)", "warn",
         [*create, root / "retried", "--images", im, "--labels", extra_labels]),
        ("project create below a file", "error", [*create, a_file / "proj", "--images", im]),
        ("train with a labels folder that is missing (no model folder left)", "error",
         ["train", im, "--labels", root / "nope", "--out", out("never_made"), *FAST]),
        # 6: inputs a run cannot learn from
        ("train: a float64 image with values beyond float32", "error", ["train", wide, "--labels", lab, "--out",
                                                                        out("wide"), *FAST]),
        ("train: every labelled image constant", "error", ["train", constant_labelled, "--labels", lab, "--out",
                                                           out("constant"), *FAST]),
        ("train: one unlabelled image constant (named)", "warn", ["train", constant_one, "--labels", lab, "--out",
                                                                  out("constant_one"), *FAST]),
        ("train: a budget that allows no step", "error", ["train", im, "--labels", lab, "--out", out("no_step"),
                                                          "--budget", NO_STEP_BUDGET, "--width", "8", "--threads",
                                                          "1"]),
        ("project pretrain: a budget that allows no step", "error",
         ["project", "pretrain", project, "--budget", NO_STEP_BUDGET, "--width", "8", "--threads", "1"]),
        ("train: a link among the images points nowhere", "error", ["train", linked_images, "--labels", lab,
                                                                    "--out", out("link_image"), *FAST]),
        ("train: an image's label is a link to nowhere", "error", ["train", im, "--labels", linked_labels, "--out",
                                                                   out("link_label"), *FAST]),
        ("train: an image's label saved as .bmp (named, not silently unlabelled)", "warn",
         ["train", im, "--labels", bitmap_label, "--out", out("bitmap_label"), *FAST]),
        ("project create: an image's label saved as .bmp (named)", "warn",
         [*create, root / "bitmap_project", "--images", im, "--labels", bitmap_label]),
        ("project create: a link among the images points nowhere", "error",
         [*create, root / "linked_project", "--images", linked_images]),
        ("predict: a link among the inputs points nowhere", "error", ["predict", model, linked_images, "--out",
                                                                      out("link_predict")]),
        ("predict: a float64 image beyond float32", "error", ["predict", model, wide, "--out", out("wide_predict")]),
        # 8: option values that must not kill the process
        ("train: --threads 100000 (clamped to the cores)", "warn", ["train", im, "--labels", lab, "--out",
                                                                    out("threads"), *FAST, "--threads",
                                                                    HUGE_THREADS]),
        ("predict: --threads 100000 (clamped to the cores)", "warn", ["predict", model, im, "--out",
                                                                      out("threads_predict"), "--threads",
                                                                      HUGE_THREADS]),
        ("project train: --threads 100000 (clamped to the cores)", "warn",
         ["project", "train", project, *FAST, "--threads", HUGE_THREADS]),
        ("predict: --draws 100000 with --uncertainty", "error", ["predict", model, im, "--out", out("draws"),
                                                                 "--uncertainty", "--draws", "100000"]),
        ("predict: --sampling-steps 100000 (a run that never ends)", "error",
         ["predict", model, im, "--out", out("sampling"), "--sampling-steps", "100000"]),
    ]


@dataclass
class SignalStop:
    """What ``stop_training_with_signal`` saw: the exit code, what was left on disk, what was said."""

    signal_name: str
    exit_code: int | None
    expected_exit_code: int
    last_loads: bool  # last.pt is there and loads
    best_loads: bool  # best.pt is there and loads as a model to predict with
    says_how_to_resume: bool  # "stopped by SIG... at step N; .../last.pt is saved. Resume with: ... --resume"
    seconds_to_exit: float  # from the signal to the process's end
    stderr: str

    @property
    def ok(self) -> bool:
        return (self.exit_code == self.expected_exit_code and self.last_loads and self.best_loads
                and self.says_how_to_resume and "Traceback" not in self.stderr)


def stop_training_with_signal(images: Path, labels: Path, model_dir: Path, signum: int = signal.SIGTERM,
                              budget: float = 30.0, timeout: float = 180.0) -> SignalStop:
    """Run `diffseg train` in a subprocess on a time budget, send ``signum`` once it has logged its first progress
    line (10 % of the budget: a few steps in), and check the exit code (128 + signum), last.pt, best.pt and the
    resume message."""
    command = [sys.executable, "-m", "napari_diffseg.cli", "train", str(images), "--labels", str(labels), "--out",
               str(model_dir), "--budget", str(budget), "--width", "8", "--patch-size", "32", "32", "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    lines = []
    try:
        for line in process.stderr:  # a log line every 10 % of the budget (stderr is not a terminal)
            lines.append(line)
            if re.match(r"\s*\d+% .* step \d+", line):
                break
        sent = time.perf_counter()
        process.send_signal(signum)
        lines.extend(process.stderr)
        code = process.wait()
        seconds = time.perf_counter() - sent
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = "".join(lines)
    name = signal.Signals(signum).name
    return SignalStop(
        signal_name=name, exit_code=code, expected_exit_code=128 + signum,
        last_loads=_loads(lambda: load_checkpoint(model_dir / LAST)),
        best_loads=_loads(lambda: SegmentationModel.load(model_dir, device="cpu")),
        says_how_to_resume=(f"stopped by {name} at step" in stderr and f"{model_dir / LAST} is saved" in stderr
                            and "--resume" in stderr),
        seconds_to_exit=seconds, stderr=stderr)


def _loads(load) -> bool:
    try:
        load()
    except Exception:
        return False
    return True


def signal_stops(root: Path, fixtures: dict[str, Path]) -> list[SignalStop]:
    """SIGTERM and SIGHUP (where the platform has it) during `diffseg train`, each on a fresh model folder."""
    names = [name for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    return [stop_training_with_signal(fixtures["images"], fixtures["labels"], Path(root) / f"stopped_{name}",
                                      getattr(signal, name)) for name in names]


if __name__ == "__main__":  # a quick look: the two signal stops on a small synthetic dataset
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        images, labels = write_dataset(Path(tmp) / "data", make_blobs_dataset(6, shape=(48, 48), seed=3), 2)
        for stop in signal_stops(Path(tmp), {"images": images, "labels": labels}):
            print(f"{stop.signal_name}: exit {stop.exit_code} (expected {stop.expected_exit_code}), last.pt "
                  f"{stop.last_loads}, best.pt {stop.best_loads}, resume message {stop.says_how_to_resume}, "
                  f"{stop.seconds_to_exit:.2f} s to exit -> {'ok' if stop.ok else 'FAILED'}")
