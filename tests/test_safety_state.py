"""Issue 25, part B: a refused or failed command changes no state; SIGTERM and SIGHUP stop a run like Ctrl-C; inputs a
run cannot learn from are refused or named; one run per model folder; option values never kill the process; the
one-trainer lock works without fcntl and on any path.

Runs are tiny (48 x 48 images, 8-channel nets, 3 steps, one thread); the signal tests send real signals, in-process
at a chosen step and once to a `diffseg train` subprocess.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import signal
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_diffseg import cli
from napari_diffseg.core.project import locks
from napari_diffseg.core.errors import DiffsegError
from napari_diffseg.core.project.store import Project
from napari_diffseg.core.data.synthetic import make_blobs_dataset, write_dataset
from test_cli import assert_one_line_error, run_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _reliability_state_cases import stop_training_with_signal  # noqa: E402

FAST = ["--steps", "3", "--width", "8", "--patch-size", "32", "32", "--threads", "1"]
SHAPE = (48, 48)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("safety_state")
    images, labels = write_dataset(root / "data", make_blobs_dataset(6, shape=SHAPE, seed=3), n_labelled=2)
    return {"root": root, "images": images, "labels": labels}


@pytest.fixture
def project(data, tmp_path) -> Path:
    folder = tmp_path / "proj"
    code, out, err = run_cli(["-q", "project", "create", folder, "--images", data["images"], "--labels",
                              data["labels"]])
    assert code == 0, err
    return folder


def train_argv(data, out: Path, *extra) -> list:
    return ["train", data["images"], "--labels", data["labels"], "--out", out, *FAST, *extra]


def signal_at_step(monkeypatch, signum: int, step: int) -> None:
    """The training display sends this process ``signum`` once the run reaches ``step`` (a real signal, delivered
    to the CLI's handler like one from `timeout` or SLURM)."""
    original = cli._TrainDisplay.progress

    def progress(self, event):
        original(self, event)
        if event.step == step:
            signal.raise_signal(signum)

    monkeypatch.setattr(cli._TrainDisplay, "progress", progress)


def folder_state(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def manifest_state(folder: Path) -> list[str]:
    """The whole manifest as SQL (meta, images, losses; row order included)."""
    db = sqlite3.connect(f"file:{folder / 'project.sqlite'}?mode=ro", uri=True)
    try:
        return list(db.iterdump())
    finally:
        db.close()


# ------------------------------------------------------------------------------- portable one-trainer lock
def test_lock_refuses_a_second_trainer_without_fcntl(project, monkeypatch):
    """The lock no longer needs fcntl (absent on Windows): with it unimportable a second trainer is still refused."""
    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` now raises ImportError
    opened = Project.open(project)
    with opened.training_lock("training round 1 in napari"):
        with pytest.raises(DiffsegError, match="busy: training round 1 in napari .process"):
            with Project.open(project).training_lock("a second trainer"):
                pass
    with opened.training_lock("free again"):
        pass


@pytest.mark.parametrize("name", ["my project", "prøjekt ünïcode 名前", "a'quote & $dollar"])
def test_lock_on_paths_with_spaces_and_unicode(tmp_path, name):
    folder = tmp_path / name / "model folder"
    folder.mkdir(parents=True)
    with locks.model_folder_lock(folder):
        assert "training a model" in locks.current_holder(folder / locks.LOCK_NAME)
        with pytest.raises(DiffsegError, match="busy"):
            with locks.model_folder_lock(folder):
                pass
    with locks.model_folder_lock(folder):  # released
        pass
    assert not (folder / (locks.LOCK_NAME + locks.HOLDER_SUFFIX)).exists()


def test_lock_held_by_another_process_is_refused_and_freed_when_it_dies(tmp_path):
    folder = tmp_path / "модель model"
    folder.mkdir()
    script = ("import sys, time\nfrom pathlib import Path\nfrom napari_diffseg.core.project import locks\n"
              f"with locks.model_folder_lock(Path({str(folder)!r})):\n    print('held', flush=True)\n"
              "    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DiffsegError, match=f"process {holder.pid}"):
            with locks.model_folder_lock(folder):
                pass
    finally:
        holder.kill()  # killed, not released: the OS drops the lock
        holder.wait()
    with locks.model_folder_lock(folder):
        pass


# ------------------------------------------------------------------------------- SIGTERM / SIGHUP like Ctrl-C
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), pytest.param(
    getattr(signal, "SIGHUP", None), 129, marks=pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX"))])
def test_signal_during_train_saves_both_models_and_says_how_to_resume(data, tmp_path, monkeypatch, signum, code):
    model = tmp_path / "model"
    signal_at_step(monkeypatch, signum, 2)
    exit_code, out, err = run_cli(train_argv(data, model))
    assert exit_code == code, err
    name = signal.Signals(signum).name
    assert f"stopped by {name} at step 2" in err and "--resume" in err and "Traceback" not in err
    assert (model / "last.pt").is_file() and (model / "best.pt").is_file()
    assert signal.getsignal(signum) is signal.SIG_DFL  # the handler is put back
    monkeypatch.undo()
    exit_code, out, err = run_cli([*train_argv(data, model), "--resume"])
    assert exit_code == 0, err


def test_sigterm_during_project_train_keeps_the_round_resumable(project, monkeypatch):
    signal_at_step(monkeypatch, signal.SIGTERM, 2)
    code, out, err = run_cli(["project", "train", project, *FAST])
    assert code == 143, err
    assert "stopped by SIGTERM at step 2" in err and f"project train {project}" in err and "--resume" in err
    assert (project / "checkpoints" / "round_1" / "last.pt").is_file()
    assert not (project / "training.lock.holder").exists()  # the lock was released


def test_sigterm_during_predict_exits_143_with_one_line(data, tmp_path, monkeypatch):
    code, out, err = run_cli(train_argv(data, tmp_path / "model"))
    assert code == 0, err
    from napari_diffseg.cli import _folders

    monkeypatch.setattr(_folders, "_predict_file", lambda *args: signal.raise_signal(signal.SIGTERM))
    code, out, err = run_cli(["predict", tmp_path / "model", data["images"], "--out", tmp_path / "masks"])
    assert code == 143 and err.strip().splitlines()[-1] == "diffseg: stopped by SIGTERM", err
    assert "Traceback" not in err


def test_a_real_sigterm_to_a_training_subprocess(data, tmp_path):
    """What SLURM's time limit, `timeout` and `docker stop` do: the process saves, says so and exits 143."""
    stop = stop_training_with_signal(data["images"], data["labels"], tmp_path / "model", signal.SIGTERM)
    assert stop.ok, stop


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX: no hang-up signal on Windows")
def test_a_hang_up_ignored_by_nohup_stays_ignored():
    from napari_diffseg.cli._signals import signals_as_interrupt

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with signals_as_interrupt():
            signal.raise_signal(signal.SIGHUP)  # nothing raised: nohup's choice holds
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


# ------------------------------------------------------------------------------- a refused command changes nothing
def test_refused_next_round_leaves_the_round_and_the_manifest(project):
    assert run_cli(["-q", "project", "train", project, *FAST])[0] == 0
    before, models = manifest_state(project), folder_state(project / "checkpoints")
    with Project.open(project).training_lock("training round 1 in napari"):
        for extra in (["--next-round"], ["--next-round"], []):
            code, out, err = run_cli(["-q", "project", "train", project, *extra, *FAST])
            assert_one_line_error(code, err, "busy")
            assert len(err.strip().splitlines()) == 1  # no "will be replaced" warning from a run that never starts
    assert manifest_state(project) == before and folder_state(project / "checkpoints") == models
    assert Project.open(project).current_round == 1
    assert not (project / "checkpoints" / "round_2").exists()


@pytest.mark.parametrize("failure", ["no step", "no labels"])
def test_failed_next_round_takes_the_round_back(data, tmp_path, failure):
    folder = tmp_path / "proj"
    labels = ["--labels", data["labels"]] if failure == "no step" else []
    assert run_cli(["-q", "project", "create", folder, "--images", data["images"], *labels])[0] == 0
    if failure == "no step":
        assert run_cli(["-q", "project", "train", folder, *FAST])[0] == 0
    before = manifest_state(folder)
    options = ["--budget", "1e-9", "--width", "8", "--threads", "1"] if failure == "no step" else FAST
    code, out, err = run_cli(["project", "train", folder, "--next-round", *options])
    assert_one_line_error(code, err, "before the first training step" if failure == "no step" else "no labelled")
    assert manifest_state(folder) == before  # round, settings and image rows as they were
    assert not (folder / "checkpoints" / "round_2").exists() and not (folder / "pseudo" / "round_2").exists()


def test_sigterm_during_pretrain_saves_the_teacher(project, monkeypatch):
    from napari_diffseg.core.method import training

    real_pretrain = training.pretrain

    def pretrain_then_signal(*args, **kwargs):
        for event in real_pretrain(*args, **kwargs):
            yield event
            if getattr(event, "step", 0) == 2:
                signal.raise_signal(signal.SIGTERM)

    from napari_diffseg.core.project import rounds

    monkeypatch.setattr(rounds, "pretrain", pretrain_then_signal)
    code, out, err = run_cli(["project", "pretrain", project, "--budget", "60", "--width", "8", "--threads", "1"])
    assert code == 143, err
    assert "stopped by SIGTERM at step 2" in err
    resume = err.strip().splitlines()[-1].split()
    assert resume[:3] == ["diffseg", "project", "pretrain"] and "--resume" not in resume  # it has no --resume
    assert cli.build_parser().parse_args(resume[1:])  # a command that runs
    assert training.pretraining_info(project / "checkpoints" / "pretrain")["steps"] >= 2


def test_next_round_stopped_before_its_first_step_is_taken_back(project, monkeypatch):
    from napari_diffseg.core.project import rounds

    assert run_cli(["-q", "project", "train", project, *FAST])[0] == 0
    before = manifest_state(project)
    real = rounds.project_training_data

    def read_then_signal(*args, **kwargs):  # the round has started; the data are being read
        data = real(*args, **kwargs)
        signal.raise_signal(signal.SIGTERM)
        return data

    monkeypatch.setattr(rounds, "project_training_data", read_then_signal)
    code, out, err = run_cli(["project", "train", project, "--next-round", *FAST])
    assert code == 143 and "stopped by SIGTERM before the first step; nothing saved" in err, err
    assert manifest_state(project) == before
    assert not (project / "checkpoints" / "round_2").exists()


def test_failed_project_create_can_be_retried(data, tmp_path, monkeypatch):
    from napari_diffseg.core.project import store as project_module

    folder = tmp_path / "new"
    real_connect = project_module.sqlite3.connect
    monkeypatch.setattr(project_module.sqlite3, "connect",
                        lambda *args, **kwargs: (_ for _ in ()).throw(sqlite3.OperationalError("disk I/O error")))
    code, out, err = run_cli(["project", "create", folder, "--images", data["images"]])
    assert_one_line_error(code, err, "disk I/O error")
    assert not folder.exists()  # nothing left that would make the retry say "not empty"
    monkeypatch.setattr(project_module.sqlite3, "connect", real_connect)
    code, out, err = run_cli(["project", "create", folder, "--images", data["images"], "--labels", data["labels"]])
    assert code == 0, err


def test_create_interrupted_leaves_nothing(data, tmp_path, monkeypatch):
    folder = tmp_path / "new"
    monkeypatch.setattr(Project, "add_image", lambda *args, **kwargs: signal.raise_signal(signal.SIGTERM))
    code, out, err = run_cli(["project", "create", folder, "--images", data["images"]])
    assert code == 143 and not folder.exists(), err


def test_failed_train_leaves_no_model_folder_and_no_settings(data, tmp_path, project):
    out = tmp_path / "never"
    code, out_text, err = run_cli(["train", data["images"], "--labels", tmp_path / "missing", "--out", out, *FAST])
    assert_one_line_error(code, err, "not found")
    assert not out.exists()
    stored = Project.open(project).config
    code, out_text, err = run_cli(["project", "train", project, "--budget", "1e-9", "--width", "8", "--threads", "1"])
    assert_one_line_error(code, err, "before the first training step")
    assert Project.open(project).config == stored  # the settings of a run that learned nothing are not stored


# ------------------------------------------------------------------------------- one run per model folder
def test_second_trainer_on_one_model_folder_is_refused(data, tmp_path):
    model = tmp_path / "model"
    assert run_cli(train_argv(data, model))[0] == 0
    before = {path.name: path.read_bytes() for path in model.iterdir() if path.is_file()}
    with locks.model_folder_lock(model):  # the first `diffseg train --out model`, still running
        for extra in ([], ["--resume"]):
            code, out, err = run_cli([*train_argv(data, model), *extra])
            assert_one_line_error(code, err, "is busy")
            assert "warning" not in err  # refused before it says anything about replacing the model
    after = {path.name: path.read_bytes() for path in model.iterdir() if path.is_file()}
    assert after == before  # best.pt, last.pt, card: untouched


def test_two_training_processes_on_one_model_folder(data, tmp_path):
    """Two real `diffseg train --out SAME`: the second is refused while the first runs, the first finishes."""
    model = tmp_path / "model"
    command = [sys.executable, "-m", "napari_diffseg.cli", "train", str(data["images"]), "--labels",
               str(data["labels"]), "--out", str(model), "--budget", "20", "--width", "8", "--patch-size", "32",
               "32", "--threads", "1"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stderr:
            if "training the" in line:  # logged once the lock is held and the data read
                break
        second = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "is busy" in second.stderr, second.stderr
        first.send_signal(signal.SIGTERM)
        first.stderr.read()
        assert first.wait(timeout=120) == 143
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert (model / "best.pt").is_file()


# ------------------------------------------------------------------------------- inputs a run cannot learn from
def test_every_labelled_image_constant_is_refused(data, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for path in data["images"].iterdir():
        tifffile.imwrite(images / path.name, np.full(SHAPE, 9, np.uint16))
    code, out, err = run_cli(["train", images, "--labels", data["labels"], "--out", tmp_path / "m", *FAST])
    assert_one_line_error(code, err, "constant")


def test_a_constant_unlabelled_image_is_named(data, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for path in data["images"].iterdir():
        images.joinpath(path.name).write_bytes(path.read_bytes())
    tifffile.imwrite(images / "img_005.tif", np.zeros(SHAPE, np.uint8))
    code, out, err = run_cli(["train", images, "--labels", data["labels"], "--out", tmp_path / "m", *FAST])
    assert code == 0, err
    assert "warning" in err and "constant" in err and "img_005" in err


def test_values_that_overflow_float32_are_refused(data, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for path in data["images"].iterdir():
        images.joinpath(path.name).write_bytes(path.read_bytes())
    tifffile.imwrite(images / "img_000.tif", np.linspace(0, 1e300, SHAPE[0] * SHAPE[1]).reshape(SHAPE))
    code, out, err = run_cli(["train", images, "--labels", data["labels"], "--out", tmp_path / "m", *FAST])
    assert_one_line_error(code, err, "beyond the 32-bit floats")
    assert "RuntimeWarning" not in err


def test_a_budget_that_allows_no_step_is_an_error_and_changes_nothing(data, tmp_path, project):
    no_step = ["--budget", "1e-9", "--width", "8", "--threads", "1"]
    code, out, err = run_cli(["train", data["images"], "--labels", data["labels"], "--out", tmp_path / "m", *no_step])
    assert_one_line_error(code, err, "before the first training step")
    assert not (tmp_path / "m").exists()  # no untrained model left to pass for a trained one
    assert run_cli(train_argv(data, tmp_path / "m"))[0] == 0
    best = (tmp_path / "m" / "best.pt").read_bytes()
    before = folder_state(tmp_path / "m")
    code, out, err = run_cli(["train", data["images"], "--labels", data["labels"], "--out", tmp_path / "m", *no_step])
    assert_one_line_error(code, err, "before the first training step")
    assert folder_state(tmp_path / "m") == before  # best.pt, last.pt, losses.csv, pseudo-labels: as they were
    round_1 = project / "checkpoints" / "round_1"
    assert run_cli(["-q", "project", "train", project, *FAST])[0] == 0
    before = folder_state(round_1)
    code, out, err = run_cli(["project", "train", project, *no_step])  # the same round again, learning nothing
    assert_one_line_error(code, err, "before the first training step")
    assert folder_state(round_1) == before
    code, out, err = run_cli(["project", "pretrain", project, *no_step])
    assert_one_line_error(code, err, "before the first pretraining step")
    assert not (project / "checkpoints" / "pretrain").exists()


@pytest.mark.parametrize("folder", ["images", "labels"])
def test_a_link_to_nowhere_is_not_silently_dropped(data, tmp_path, folder):
    copies = {}
    for key in ("images", "labels"):
        copies[key] = tmp_path / key
        copies[key].mkdir()
        for path in data[key].iterdir():
            copies[key].joinpath(path.name).write_bytes(path.read_bytes())
    (copies[folder] / "img_005.tif").unlink(missing_ok=True)
    (copies[folder] / "img_005.tif").symlink_to(tmp_path / "moved away.tif")  # unlabelled by accident otherwise
    code, out, err = run_cli(["train", copies["images"], "--labels", copies["labels"], "--out", tmp_path / "m",
                              *FAST])
    assert_one_line_error(code, err, "img_005.tif")


def test_a_label_of_a_type_not_read_is_named(data, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    for path in data["labels"].iterdir():
        labels.joinpath(path.name).write_bytes(path.read_bytes())
    (labels / "img_003.bmp").write_bytes(b"BM a bitmap label")  # img_003 would train as unlabelled without a word
    code, out, err = run_cli(["train", data["images"], "--labels", labels, "--out", tmp_path / "m", *FAST])
    assert code == 0, err
    assert "warning" in err and "img_003.bmp" in err and "unlabelled" in err


# ------------------------------------------------------------------------------- option values never kill
def test_a_huge_thread_count_is_clamped_not_fatal(data, tmp_path):
    command = [sys.executable, "-m", "napari_diffseg.cli", *map(str, train_argv(data, tmp_path / "m")),
               "--threads", "100000"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr  # a negative code: killed by a signal
    assert f"100000 threads asked for, but this machine has {os.cpu_count()} CPU core(s)" in result.stderr
    card = json.loads((tmp_path / "m" / "model_card.json").read_text())
    assert card["training"]["steps"] == 3


@pytest.mark.parametrize("option", [["--uncertainty", "--draws", "100000"], ["--sampling-steps", "100000"]])
def test_pass_counts_beyond_their_limit_are_usage_errors(data, tmp_path, option):
    """100000 draws or sampling steps per tile: a prediction that never ends, refused before the model loads."""
    code, out, err = run_cli(["predict", tmp_path, data["images"], "--out", tmp_path / "o", *option])
    assert_one_line_error(code, err, option[-2])
