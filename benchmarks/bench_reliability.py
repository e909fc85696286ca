"""Reliability campaign: bad inputs to every command, kill -9 during accepts and during training; prints a
markdown table of counts (inputs tried, clear errors, tracebacks, silent wrong results, kills survived, work lost)
and writes benchmarks/reliability.md.

A bad input is handled clearly when the command exits with code 2 and one ``diffseg: error:`` line (argparse's
usage error counts: it names the option), or, for a case marked "warn", finishes and prints a ``warning``.
Run: ``.venv/bin/python benchmarks/bench_reliability.py [--accept-kills 40] [--training-kills 6]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path
import shutil
import sqlite3
import sys
import tempfile
import time

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine, versions  # noqa: E402
from _faults import kill_during_accepts, kill_during_training  # noqa: E402

from napari_diffseg import cli  # noqa: E402
from napari_diffseg.core.project import Project  # noqa: E402
from napari_diffseg.core.synthetic import make_blobs_dataset, write_dataset  # noqa: E402

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


def classify(expected: str, code: int, text: str) -> str:
    if "Traceback" in text or (code not in (0, 2)):
        return "traceback / unexpected"
    if expected == "error":
        if code == 2 and "error:" in text:
            return "clear error"
        return "silently accepted" if code == 0 else "unclear"
    return "clear warning" if code == 0 and "warning" in text.lower() else "no warning"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accept-kills", type=int, default=40)
    parser.add_argument("--training-kills", type=int, default=6)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "reliability.md")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    rows, outcomes = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fixtures = build_fixtures(root)
        for description, expected, case_argv in cases(root, fixtures):
            code, text = run_cli(case_argv)
            outcome = classify(expected, code, text)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            output = text.strip().splitlines()
            message = next((line for line in output if "error:" in line),
                           next((line for line in output if "warning" in line.lower()), output[-1] if output else ""))
            rows.append((description, code, outcome, message.strip()[:150]))

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

    bad = len(rows) - outcomes.get("clear error", 0) - outcomes.get("clear warning", 0)
    lines = [
        "# Reliability campaign", "",
        f"`python benchmarks/bench_reliability.py --accept-kills {args.accept_kills} --training-kills "
        f"{args.training_kills}` ({time.perf_counter() - began:.0f} s).", "",
        f"- Machine: {machine()}", f"- Versions: {versions()}", "",
        "## Counts", "",
        "| what | count |", "|---|---|",
        f"| bad inputs tried | {len(rows)} |",
        f"| clear errors (exit 2, one `diffseg: error:` line) | {outcomes.get('clear error', 0)} |",
        f"| clear warnings where the input is usable | {outcomes.get('clear warning', 0)} |",
        f"| tracebacks, unclear errors, silently accepted | {bad} |",
        f"| kill -9 during accepts | {accepts.kills} (accepts confirmed before the kills: "
        f"{accepts.confirmed_accepts}) |",
        f"| accepted masks lost / torn / temporary files left | {accepts.lost_accepts} / {accepts.torn_masks} / "
        f"{accepts.leftover_files} |",
        f"| kill -9 during training, 4-40 s after start (the next run resumes last.pt) | {training.kills} "
        f"(a loadable last.pt left after {training.checkpoints_left}, a best.pt after {training.models_left}: "
        "it is written when a run ends) |",
        f"| model folders left broken | {training.broken_models} |", "",
        "## Every bad input", "",
        "| input | exit | outcome | first error / warning line |", "|---|---|---|---|",
        *[f"| {d} | {c} | {o} | {m.replace('|', '/')} |" for d, c, o, m in rows],
    ]
    lines = [line.replace(str(root), "$TMP") for line in lines]
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.write_text(report)
    return 0 if bad == 0 and not (accepts.lost_accepts or accepts.torn_masks or training.broken_models) else 1


if __name__ == "__main__":
    sys.exit(main())
