"""Reliability campaign: bad and unusual inputs to every command, each run as a subprocess (``python -m
napari_diffseg.cli``, so that a death by signal is seen), kill -9 during accepts and during training; prints a
markdown report of counts and writes benchmarks/reliability.md.

Cases: the original ones (``cases`` below), those of issue 25 part A (outputs that would destroy the user's files,
names, data not trusted as paths or types, large PNGs: ``_reliability_safety_cases.py``) and, where the module is
there, part B (state left by refused commands, unlearnable inputs, locks, signals: ``_reliability_state_cases.py``).

Each case's outcome is one of: handled (expected "error": exit 2 and exactly one ``diffseg: error:`` line;
"warn": exit 0 and a warning, or a clear exit-2 refusal; "ok": exit 0), data lost (a file that existed before the
case changed or vanished, and the case did not ask for it: every file of the fixture tree is hashed before and after
each case; a project manifest by its content, lock files not at all), silent wrong (exit 0 where an error was
expected, or a result that a case's check finds wrong), exit 1, signal death, traceback, or unclear (any other exit,
a refusal of a valid use, a timeout).
Run: ``.venv/bin/python benchmarks/bench_reliability.py [--accept-kills 40] [--training-kills 6]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import hashlib
import json
import os
from pathlib import Path
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine, versions  # noqa: E402
from _faults import kill_during_accepts, kill_during_training  # noqa: E402
from _reliability_safety_cases import safety_cases  # noqa: E402

try:  # part B of issue 25, written alongside: counted when it is there
    import _reliability_state_cases as _state  # noqa: E402
except ImportError:
    _state = None

from napari_diffseg import cli  # noqa: E402
from napari_diffseg.core.project.store import Project  # noqa: E402
from napari_diffseg.core.data.synthetic import make_blobs_dataset, write_dataset  # noqa: E402

FAST = ["--steps", "3", "--width", "8", "--patch-size", "32", "32", "--threads", "1"]


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``cli.main`` in-process; (exit code, stdout + stderr). argparse's SystemExit is an exit code too."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 2
    return code, buffer.getvalue()


def build_fixtures(root: Path) -> dict[str, Path]:
    """A small dataset, a trained model and a project; broken copies are made by each case."""
    pairs = make_blobs_dataset(6, shape=(48, 48), seed=3)
    images, labels = write_dataset(root / "data", pairs, n_labelled=2)
    model = root / "model"
    code, text = run_cli(["-q", "train", images, "--labels", labels, "--out", model, *FAST])
    assert code == 0, text
    rgb, _ = make_blobs_dataset(1, shape=(48, 48), rgb=True, seed=4)[0]
    (root / "rgb").mkdir()
    tifffile.imwrite(root / "rgb" / "colour.tif", rgb)
    volume, _ = make_blobs_dataset(1, shape=(8, 32, 32), ndim=3, seed=5)[0]
    (root / "vol").mkdir()
    tifffile.imwrite(root / "vol" / "volume.tif", volume)
    return {"images": images, "labels": labels, "model": model, "masks": root / "data" / "masks"}


def copy_of(path: Path, root: Path, name: str) -> Path:
    target = root / name
    (shutil.copytree if path.is_dir() else shutil.copy)(path, target)
    return target


def cases(root: Path, f: dict[str, Path]) -> list[tuple[str, str, list]]:
    """(description, expected "error" or "warn", argv) for every bad input; files are prepared here."""
    im, lab, model = f["images"], f["labels"], f["model"]
    out = lambda name: root / "out" / name  # noqa: E731
    empty = root / "empty"
    empty.mkdir()
    garbage = copy_of(im, root, "garbage_images")
    (garbage / "img_000.tif").write_bytes(b"not a tiff at all")
    zero = copy_of(im, root, "zero_images")
    (zero / "img_001.tif").write_bytes(b"")
    bad_shape_labels = copy_of(lab, root, "bad_shape_labels")
    tifffile.imwrite(bad_shape_labels / "img_000.tif", np.ones((20, 20), np.uint8))
    background_labels = copy_of(lab, root, "background_labels")
    for path in background_labels.iterdir():
        tifffile.imwrite(path, np.zeros((48, 48), np.uint8))
    foreign_labels = root / "foreign_labels"
    foreign_labels.mkdir()
    tifffile.imwrite(foreign_labels / "other.tif", np.ones((48, 48), np.uint8))
    mixed = copy_of(im, root, "mixed_images")
    shutil.copy(root / "rgb" / "colour.tif", mixed / "colour.tif")
    no_best = copy_of(model, root, "model_no_best")
    (no_best / "best.pt").unlink()
    corrupt = copy_of(model, root, "model_corrupt")
    (corrupt / "best.pt").write_bytes(b"\x80\x04garbage")
    truncated = copy_of(model, root, "model_truncated")
    data = (truncated / "best.pt").read_bytes()
    (truncated / "best.pt").write_bytes(data[: len(data) // 2])
    bad_card = copy_of(model, root, "model_bad_card")
    (bad_card / "model_card.json").write_text(json.dumps([1, 2, 3]))
    broken_card = copy_of(model, root, "model_broken_card")
    (broken_card / "model_card.json").write_text("{oops")
    corrupt_last = copy_of(model, root, "model_corrupt_last")
    (corrupt_last / "last.pt").write_bytes(b"\x80\x04garbage")
    a_file = root / "a_file.txt"
    a_file.write_text("x")
    multi = copy_of(im, root, "multi_page_images")
    with tifffile.TiffWriter(multi / "img_000.tif") as writer:
        writer.write(np.zeros((48, 48), np.uint8))
        writer.write(np.zeros((32, 32), np.uint8))
    half_bad = copy_of(im, root, "half_bad_images")
    (half_bad / "img_003.tif").write_bytes(b"broken")
    wrong_masks = root / "wrong_masks"
    wrong_masks.mkdir()
    tifffile.imwrite(wrong_masks / "img_000.tif", np.ones((10, 10), np.uint8))

    project = root / "project"
    code, text = run_cli(["-q", "project", "create", project, "--images", im, "--labels", lab])
    assert code == 0, text
    weird = copy_of(project, root, "project_weird")
    with sqlite3.connect(weird / "project.sqlite") as db:
        db.execute("UPDATE images SET status = 'weird' WHERE rowid = 1")
    deleted = copy_of(project, root, "project_deleted_image")
    next(iter(sorted((deleted / "images").iterdir()))).unlink()

    train = ["train"]
    return [
        ("train: images folder missing", "error", [*train, root / "nope", "--labels", lab, "--out", out("a"), *FAST]),
        ("train: images folder empty", "error", [*train, empty, "--labels", lab, "--out", out("b"), *FAST]),
        ("train: labels folder missing", "error", [*train, im, "--labels", root / "nope", "--out", out("c"), *FAST]),
        ("train: no label matches an image", "error", [*train, im, "--labels", foreign_labels, "--out", out("d"),
                                                       *FAST]),
        ("train: label shape differs from its image", "error", [*train, im, "--labels", bad_shape_labels, "--out",
                                                                out("e"), *FAST]),
        ("train: an image is not a TIFF", "error", [*train, garbage, "--labels", lab, "--out", out("f"), *FAST]),
        ("train: an image file is empty", "error", [*train, zero, "--labels", lab, "--out", out("g"), *FAST]),
        ("train: labels all background", "error", [*train, im, "--labels", background_labels, "--out", out("h"),
                                                   *FAST]),
        ("train: grey and RGB images mixed", "error", [*train, mixed, "--labels", lab, "--out", out("i"), *FAST]),
        ("train: budget 0", "error", [*train, im, "--labels", lab, "--out", out("j"), "--budget", "0"]),
        ("train: budget negative", "error", [*train, im, "--labels", lab, "--out", out("k"), "--budget", "-5"]),
        ("train: budget not a number", "error", [*train, im, "--labels", lab, "--out", out("l"), "--budget", "abc"]),
        ("train: steps 0", "error", [*train, im, "--labels", lab, "--out", out("m"), "--steps", "0"]),
        ("train: width 0", "error", [*train, im, "--labels", lab, "--out", out("n"), *FAST, "--width", "0"]),
        ("train: patch size of 3 numbers for 2D", "error", [*train, im, "--labels", lab, "--out", out("o"), *FAST,
                                                            "--patch-size", "16", "32", "32"]),
        ("train: patch size not a multiple of 8 (rounded down)", "warn", [*train, im, "--labels", lab, "--out", out("p"), *FAST,
                                                            "--patch-size", "30", "30"]),
        ("train: batch size 0", "error", [*train, im, "--labels", lab, "--out", out("q"), *FAST, "--batch-size",
                                          "0"]),
        ("train: unknown device", "error", [*train, im, "--labels", lab, "--out", out("r"), *FAST, "--device",
                                            "tpu"]),
        ("train: cuda on a machine without one", "error", [*train, im, "--labels", lab, "--out", out("s"), *FAST,
                                                           "--device", "cuda"]),
        ("train: threads 0", "error", [*train, im, "--labels", lab, "--out", out("t"), *FAST, "--threads", "0"]),
        ("train: one class", "error", [*train, im, "--labels", lab, "--out", out("u"), *FAST, "--num-classes",
                                       "1"]),
        ("train: --out is the images folder", "error", [*train, im, "--labels", lab, "--out", im, *FAST]),
        ("train: --out below a file", "error", [*train, im, "--labels", lab, "--out", a_file / "sub", *FAST]),
        ("train: --resume without last.pt", "error", [*train, im, "--labels", lab, "--out", out("v"), *FAST,
                                                      "--resume"]),
        ("train: --warm-start from a missing folder", "error", [*train, im, "--labels", lab, "--out", out("w"),
                                                               *FAST, "--warm-start", root / "nope"]),
        ("train: multi-page TIFF with pages of two sizes", "error", [*train, multi, "--labels", lab, "--out",
                                                                     out("x"), *FAST]),
        ("predict: model folder missing", "error", ["predict", root / "nope", im, "--out", out("p1")]),
        ("predict: model folder without best.pt", "error", ["predict", no_best, im, "--out", out("p2")]),
        ("predict: best.pt is garbage", "error", ["predict", corrupt, im, "--out", out("p3")]),
        ("predict: best.pt cut in half", "error", ["predict", truncated, im, "--out", out("p4")]),
        ("predict: RGB image for a grey model", "error", ["predict", model, root / "rgb", "--out", out("p5")]),
        ("predict: 3D volume for a 2D model", "error", ["predict", model, root / "vol", "--out", out("p6")]),
        ("predict: input missing", "error", ["predict", model, root / "nope", "--out", out("p7")]),
        ("predict: --out is a file", "error", ["predict", model, im, "--out", a_file]),
        ("predict: --out is the input folder", "error", ["predict", model, im, "--out", im]),
        ("predict: tile 0", "error", ["predict", model, im, "--out", out("p8"), "--tile", "0", "0"]),
        ("predict: draws 0 with --uncertainty", "error", ["predict", model, im, "--out", out("p9"),
                                                          "--uncertainty", "--draws", "0"]),
        ("predict: one bad file in a folder (others written, listed)", "error", ["predict", model, half_bad, "--out",
                                                                                  out("p10")]),
        ("info: model folder missing", "error", ["info", root / "nope"]),
        ("info: model card of the wrong shape", "error", ["info", bad_card]),
        ("info: model card not JSON", "error", ["info", broken_card]),
        ("eval: predictions folder missing", "error", ["eval", root / "nope", f["masks"]]),
        ("eval: no names in common", "error", ["eval", foreign_labels, f["masks"]]),
        ("eval: mask shapes differ", "error", ["eval", wrong_masks, f["masks"]]),
        ("project create: folder not empty", "error", ["project", "create", im, "--images", im]),
        ("project create: images folder missing", "error", ["project", "create", root / "p_new", "--images",
                                                            root / "nope"]),
        ("project train: not a project", "error", ["project", "train", empty]),
        ("project status: not a project", "error", ["project", "status", root / "nope"]),
        ("project status: manifest edited by hand", "error", ["project", "status", weird]),
        ("project status: an image file deleted", "warn", ["project", "status", deleted]),
        ("project export: --out below a file", "error", ["project", "export", project, "--out", a_file / "x"]),
        ("project pretrain: budget negative", "error", ["project", "pretrain", project, "--budget", "-1"]),
        ("train: --warm-start from a garbage last.pt", "error", [*train, im, "--labels", lab, "--out", out("y"),
                                                                 *FAST, "--warm-start", corrupt_last]),
    ]


OUTCOMES = ("handled", "data lost", "silent wrong", "exit 1", "signal death", "traceback", "unclear")
BAD_OUTCOMES = OUTCOMES[1:]
CASE_TIMEOUT_S = 600
_NOT_DATA = (".lock", ".sqlite-wal", ".sqlite-shm", ".sqlite-journal")  # coordination files, not the user's data


def run_subprocess(argv: list, env: dict[str, str], cwd: Path) -> tuple[int | None, str]:
    """``python -m napari_diffseg.cli ARGV`` in a child process: (exit code, negative for a signal, None for a
    timeout; stdout + stderr)."""
    command = [sys.executable, "-m", "napari_diffseg.cli", *map(str, argv)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CASE_TIMEOUT_S, cwd=cwd,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
    except subprocess.TimeoutExpired as timeout:
        return None, f"timed out after {CASE_TIMEOUT_S} s: {timeout.stderr or ''}"
    return done.returncode, done.stdout + done.stderr


class TreeHashes:
    """Content hashes of every file under a folder, rehashed only where size, time or inode changed; a SQLite
    manifest is hashed by its content (a write that changes nothing leaves the same hash), a link by its target."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._known: dict[str, tuple[tuple, str]] = {}

    def snapshot(self) -> dict[str, str]:
        hashes = {}
        for folder, dirs, files in os.walk(self.root):
            for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
                path = os.path.join(folder, name)
                if name.endswith(_NOT_DATA):
                    continue
                try:
                    stat = os.lstat(path)
                except FileNotFoundError:
                    continue
                key = (stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_mode)
                known = self._known.get(path)
                if known is None or known[0] != key:
                    known = (key, self._digest(Path(path)))
                    self._known[path] = known
                hashes[path] = known[1]
        return hashes

    @staticmethod
    def _digest(path: Path) -> str:
        if path.is_symlink():
            return "link:" + os.readlink(path)
        if path.suffix == ".sqlite":
            try:
                with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                    return hashlib.sha256("\n".join(sorted(db.iterdump())).encode()).hexdigest()  # rows as a set
            except sqlite3.Error:
                pass  # not a database (any more): its bytes
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()


def _option_value(argv: list, option: str) -> Path | None:
    argv = [str(a) for a in argv]
    return Path(argv[argv.index(option) + 1]) if option in argv[:-1] else None


def asked_to_change(argv: list, code: int | None) -> list[Path]:
    """What a case may change: with --overwrite its --out / --csv; once it succeeded, its --out and, for
    ``project train | pretrain``, the project."""
    argv = [str(a) for a in argv]
    allowed = []
    if "--overwrite" in argv:
        allowed += [_option_value(argv, "--out"), _option_value(argv, "--csv")]
    if code == 0:
        allowed.append(_option_value(argv, "--out"))
        if argv[:2] in (["project", "train"], ["project", "pretrain"]) and len(argv) > 2:
            allowed.append(Path(argv[2]))
    return [Path(os.path.abspath(p)) for p in allowed if p is not None]


def lost_files(before: dict[str, str], after: dict[str, str], allowed: list[Path]) -> list[str]:
    lost = []
    for path, digest in before.items():
        if after.get(path) == digest:
            continue
        if any(Path(path) == a or Path(path).is_relative_to(a) for a in allowed):
            continue
        lost.append(path)
    return lost


def classify(expected: str, code: int | None, text: str, lost: list[str], wrong: str | None) -> str:
    errors = [line for line in text.splitlines() if line.startswith("diffseg: error:")]
    warned = "warning" in text.lower()
    if "Traceback" in text:
        return "traceback"
    if code is not None and code < 0:
        return "signal death"
    if lost:
        return "data lost"
    if code == 1:
        return "exit 1"
    if wrong:
        return "silent wrong"
    clear_refusal = code == 2 and len(errors) == 1
    if expected == "error":
        return "handled" if clear_refusal else "silent wrong" if code == 0 else "unclear"
    if expected == "warn":
        return "handled" if (code == 0 and warned) or clear_refusal else "silent wrong" if code == 0 else "unclear"
    return "handled" if code == 0 else "unclear"  # "ok": a valid use must work


def _first_line(text: str) -> str:
    output = text.strip().splitlines()
    return next((line for line in output if "error:" in line),
                next((line for line in output if "warning" in line.lower()), output[-1] if output else ""))


def run_cases(groups: dict[str, list[tuple]], root: Path) -> tuple[list[tuple], dict[str, dict[str, int]]]:
    """Every case in a subprocess, the fixture tree hashed around it; rows (group, description, exit, outcome,
    line) and counts per group."""
    hashes = TreeHashes(root)
    rows, counts = [], {}
    env = {"XDG_CACHE_HOME": str(root / "cache")}
    for group, group_cases in groups.items():
        counts[group] = {outcome: 0 for outcome in OUTCOMES}
        for case in group_cases:
            description, expected, argv = case[:3]
            options = case[3] if len(case) > 3 else {}
            before = hashes.snapshot()
            started = time.perf_counter()
            case_env = {**env, **options.get("env", {})}
            code, text = run_subprocess(argv, case_env, root)
            seconds = time.perf_counter() - started
            own_cache = [Path(case_env["XDG_CACHE_HOME"])]  # the converted-model cache is the program's own
            lost = lost_files(before, hashes.snapshot(), asked_to_change(argv, code) + own_cache)
            check = options.get("check")
            wrong = check() if check is not None else None
            outcome = classify(expected, code, text, lost, wrong)
            counts[group][outcome] += 1
            detail = (f"changed: {', '.join(lost[:3])}" if lost else wrong) if outcome in ("data lost",
                                                                                            "silent wrong") else ""
            line = detail or _first_line(text).strip()
            rows.append((group, description, code, outcome, line[:160], seconds))
            print(f"[{outcome}] {group}: {description} (exit {code}, {seconds:.1f} s) {line[:120]}", flush=True)
    return rows, counts


def signal_rows(root: Path, fixtures: dict[str, Path]) -> list[tuple]:
    """Part B's stops of `diffseg train` by SIGTERM / SIGHUP, as rows (handled when exit code, last.pt, best.pt and
    the resume message are all right)."""
    if _state is None or not hasattr(_state, "signal_stops"):
        return []
    rows = []
    for stop in _state.signal_stops(root, fixtures):
        outcome = ("handled" if stop.ok else "traceback" if "Traceback" in stop.stderr
                   else "signal death" if stop.exit_code is not None and stop.exit_code < 0 else "unclear")
        line = (f"exit {stop.exit_code} (expected {stop.expected_exit_code}), last.pt {stop.last_loads}, best.pt "
                f"{stop.best_loads}, resume message {stop.says_how_to_resume}, {stop.seconds_to_exit:.1f} s to exit")
        rows.append(("part B", f"train stopped by {stop.signal_name}", stop.exit_code, outcome, line,
                     stop.seconds_to_exit))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accept-kills", type=int, default=40)
    parser.add_argument("--training-kills", type=int, default=6)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "reliability.md")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fixtures = build_fixtures(root)
        groups = {"original": cases(root, fixtures), "part A": safety_cases(root, fixtures)}
        if _state is not None:
            groups["part B"] = _state.state_cases(root, fixtures)
        rows, counts = run_cases(groups, root)
        for row in signal_rows(root, fixtures):
            rows.append(row)
            counts.setdefault(row[0], {outcome: 0 for outcome in OUTCOMES})[row[3]] += 1

        project = Project.create(root / "kill_project")
        for index, (image, _) in enumerate(make_blobs_dataset(6, shape=(48, 48), seed=2)):
            project.add_image(image, name=f"img{index}")
        first, second = np.zeros((48, 48), np.uint8), np.zeros((48, 48), np.uint8)
        first[4:20, 4:20], second[24:44, 10:40] = 1, 1
        accepts = kill_during_accepts(project.folder, [first, second], args.accept_kills, seed=0)
        command = [sys.executable, "-m", "napari_diffseg.cli", "train", str(fixtures["images"]), "--labels",
                   str(fixtures["labels"]), "--out", str(root / "killed_model"), "--budget", "600", "--width", "8",
                   "--patch-size", "32", "32", "--threads", "1"]
        training = kill_during_training(command, root / "killed_model", args.training_kills, seed=1,
                                        delay=(4.0, 40.0))
        report = _report(args, rows, counts, accepts, training, time.perf_counter() - began, root)
    print(report)
    args.out.write_text(report)
    bad = sum(counts[group][outcome] for group in counts for outcome in BAD_OUTCOMES)
    return 0 if bad == 0 and not (accepts.lost_accepts or accepts.torn_masks or training.broken_models) else 1


def _report(args, rows, counts, accepts, training, seconds: float, root: Path) -> str:
    groups = list(counts)
    total = {outcome: sum(counts[g][outcome] for g in groups) for outcome in OUTCOMES}
    new = sum(sum(counts[g].values()) for g in groups if g != "original")
    lines = [
        "# Reliability campaign", "",
        f"`python benchmarks/bench_reliability.py --accept-kills {args.accept_kills} --training-kills "
        f"{args.training_kills}` ({seconds:.0f} s).", "",
        f"- Machine: {machine()}", f"- Versions: {versions()}", "",
        "Every case runs as a subprocess; every file of the fixture tree is hashed before and after it. Outcomes: "
        "handled (exit 2 and one `diffseg: error:` line, a warning where one is expected, exit 0 for a valid use), "
        "data lost (a file that was there changed or vanished and the case did not ask for it), silent wrong "
        "(exit 0 where an error was expected, or a check of the result failed), exit 1, signal death, traceback, "
        "unclear (another exit, a refused valid use, a timeout).", "",
        "## Counts", "",
        "| outcome | " + " | ".join(groups) + " | all |", "|---" * (len(groups) + 2) + "|",
        *[f"| {outcome} | " + " | ".join(str(counts[g][outcome]) for g in groups) + f" | {total[outcome]} |"
          for outcome in OUTCOMES],
        "| cases | " + " | ".join(str(sum(counts[g].values())) for g in groups) + f" | {sum(total.values())} |",
        "",
        f"New cases of issue 25 (part A: outputs, names, data as paths or types, large PNGs; part B: state, "
        f"unlearnable inputs, locks, signals, option values): {new}.", "",
        "| kills | count |", "|---|---|",
        f"| kill -9 during accepts | {accepts.kills} (accepts confirmed before the kills: "
        f"{accepts.confirmed_accepts}) |",
        f"| accepted masks lost / torn / temporary files left | {accepts.lost_accepts} / {accepts.torn_masks} / "
        f"{accepts.leftover_files} |",
        f"| kill -9 during training, 4-40 s after start (the next run resumes last.pt) | {training.kills} "
        f"(a loadable last.pt left after {training.checkpoints_left}, a best.pt after {training.models_left}: "
        "it is written when a run ends) |",
        f"| model folders left broken | {training.broken_models} |", "",
        "## Every case", "",
        "| group | input | exit | outcome | first error / warning line (or what was wrong) |", "|---|---|---|---|---|",
        *[f"| {g} | {d} | {c} | {o} | {m.replace('|', '/')} |" for g, d, c, o, m, _ in rows],
    ]
    lines = [line.replace(str(root), "$TMP") for line in lines]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
