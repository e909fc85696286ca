"""Tests for the ``diffseg`` command line: train -> predict -> eval end to end (2D, 3D, labels-only, uncertainty,
interrupt + resume), model info, the installed console script, and one-line errors with exit code 2 for user
mistakes (never a traceback).

Everything runs in-process through ``cli.main`` on tiny synthetic data (48 x 48 images, 8-channel nets, 6 steps).
"""

from __future__ import annotations

import contextlib
import csv
import io as _io
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_diffseg import cli
from napari_diffseg.core.data.io import write_mask, write_tiff_atomic
from napari_diffseg.core.data.synthetic import make_blobs_dataset, write_dataset

FAST = ["--steps", "6", "--width", "8", "--patch-size", "32", "32"]
SHAPE_2D = (48, 48)
N_IMAGES, N_LABELLED = 6, 2


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Call ``cli.main`` in-process; returns (exit code, stdout, stderr)."""
    out, err = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, err: str, fragment: str) -> None:
    assert code == 2, f"exit code {code}, stderr: {err!r}"
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(error_lines) == 1, err
    assert error_lines[0].startswith("diffseg: error: "), err
    assert err.strip().splitlines()[-1] == error_lines[0]
    assert fragment.lower() in error_lines[0].lower(), f"{fragment!r} not in {error_lines[0]!r}"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("blobs2d")
    write_dataset(folder, make_blobs_dataset(N_IMAGES, SHAPE_2D, seed=1), N_LABELLED)
    return folder


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> dict:
    """One 2D semi-supervised training run through the CLI, shared by the tests that need a model."""
    model = tmp_path_factory.mktemp("model2d") / "model"
    code, out, err = run_cli(["train", dataset / "images", "--labels", dataset / "labels", "--out", model,
                              "--budget", "120", "--seed", "3", *FAST])
    return {"code": code, "out": out, "err": err, "model": model, "data": dataset}


# ------------------------------------------------------------------------------------------------ end to end
def test_train_predict_eval_end_to_end(trained, tmp_path):
    assert trained["code"] == 0, trained["err"]
    model, data = trained["model"], trained["data"]
    for name in ("best.pt", "last.pt", "model_card.json", "losses.csv"):
        assert (model / name).is_file(), name
    unlabelled = [f"img_{i:03d}" for i in range(N_LABELLED, N_IMAGES)]
    pseudo = model / "pseudo_labels"
    assert sorted(p.stem for p in pseudo.glob("img_???.tif")) == unlabelled
    assert sorted(p.stem for p in pseudo.glob("*_uncertainty.tif")) == [f"{n}_uncertainty" for n in unlabelled]
    card = json.loads((model / "model_card.json").read_text())
    assert card["training"]["steps"] == 6
    assert card["config"]["seed"] == 3 and card["config"]["base_channels"] == 8
    # summary on stdout, one log line per best checkpoint / pseudo-label event on stderr
    assert "trained 6 steps" in trained["out"]
    fit = card['metrics']['validation'][card['selected_twin']]['dice']
    assert f"Dice on the labelled training images {fit:.4f}" in trained["out"]
    assert str(model / "best.pt") in trained["out"]
    assert "model written" in trained["err"] and "pseudo-labels of 4 unlabelled image(s)" in trained["err"]
    assert "Traceback" not in trained["err"]

    pred = tmp_path / "pred"
    code, out, err = run_cli(["predict", model, data / "images", "--out", pred])
    assert code == 0, err
    assert "predicted 6 image(s)" in out
    written = sorted(p.name for p in pred.iterdir())
    assert written == [f"img_{i:03d}.tif" for i in range(N_IMAGES)]
    for path in pred.iterdir():
        mask = tifffile.imread(path)
        assert mask.dtype == np.uint8 and mask.shape == SHAPE_2D
        assert set(np.unique(mask)) <= {0, 1}

    code, out, err = run_cli(["eval", pred, data / "masks", "--csv", tmp_path / "scores.csv"])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split("|")[1].strip() == "name" and "hd95" in lines[0]
    assert len(lines) == 2 + N_IMAGES + 1
    pooled = [line for line in lines if "pooled/mean" in line]
    assert len(pooled) == 1
    dice = float(pooled[0].split("|")[2])
    assert 0.0 <= dice <= 1.0
    assert (tmp_path / "scores.csv").read_text().count("\n") == N_IMAGES + 2


def test_predict_goes_on_past_a_bad_file_and_lists_it(trained, tmp_path):
    folder = tmp_path / "new"
    folder.mkdir()
    for name in ("img_004", "img_005"):
        shutil.copy(trained["data"] / "images" / f"{name}.tif", folder / f"{name}.tif")
    (folder / "broken.tif").write_bytes(b"not a tiff at all")
    code, out, err = run_cli(["predict", trained["model"], folder, "--out", tmp_path / "pred"])
    assert code == 2
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["img_004.tif", "img_005.tif"]
    assert "predicted 2 image(s)" in out
    assert "error: 1 of 3 image(s) failed: broken.tif (cannot read" in err and "Traceback" not in err


def test_predict_single_file_with_uncertainty(trained, tmp_path):
    image = trained["data"] / "images" / "img_004.tif"
    code, out, err = run_cli(["predict", trained["model"], image, "--out", tmp_path / "pred", "--uncertainty",
                              "--draws", "2", "--tile", "32", "32", "--device", "cpu", "--threads", "1"])
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["img_004.tif", "img_004_uncertainty.tif"]
    mask = tifffile.imread(tmp_path / "pred" / "img_004.tif")
    uncertainty = tifffile.imread(tmp_path / "pred" / "img_004_uncertainty.tif")
    assert mask.dtype == np.uint8 and mask.shape == SHAPE_2D
    assert uncertainty.dtype == np.float32 and uncertainty.shape == SHAPE_2D
    assert np.isfinite(uncertainty).all() and uncertainty.min() >= 0.0 and uncertainty.max() <= 1.0
    assert uncertainty.max() > 0.0  # stochastic draws of an 8-step net disagree somewhere


def test_predict_mirror_reaches_every_tile_pass(trained, tmp_path, monkeypatch):
    from napari_diffseg.core.prediction import predict as predicting

    original, seen = predicting.tiled_probabilities, []

    def recording(*args, **options):
        seen.append(options.get("mirror"))
        return (yield from original(*args, **options))

    monkeypatch.setattr(predicting, "tiled_probabilities", recording)
    image = trained["data"] / "images" / "img_004.tif"
    for options, expected in (([], False), (["--mirror"], True)):
        seen.clear()
        code, _, err = run_cli(["predict", trained["model"], image, "--out", tmp_path / f"pred{len(options)}",
                                "--device", "cpu", "--threads", "1", *options])
        assert code == 0, err
        assert seen and set(seen) == {expected}


def test_predict_large_tiff_and_zarr_block_by_block(trained, tmp_path, monkeypatch):
    """An image over the in-memory limit (lowered here) and a zarr array are predicted block by block into a
    complete zarr mask and a tiled TIFF of the same content."""
    import zarr
    from napari_diffseg.core.prediction import large

    monkeypatch.setattr(large, "LARGE_IMAGE_PIXELS", 1000)
    image = tifffile.imread(trained["data"] / "images" / "img_004.tif")
    folder = tmp_path / "large"
    folder.mkdir()
    tifffile.imwrite(folder / "big.tif", image, tile=(32, 32), compression="zlib")
    zarr.open_array(str(tmp_path / "array.zarr"), mode="w", shape=image.shape, chunks=(20, 20),
                    dtype=image.dtype)[:] = image
    for source, stem in ((folder, "big"), (tmp_path / "array.zarr", "array")):
        code, out, err = run_cli(["predict", trained["model"], source, "--out", tmp_path / "pred", "--uncertainty"])
        assert code == 0, err
        assert large.is_complete(tmp_path / "pred" / f"{stem}.zarr")
        mask = tifffile.imread(tmp_path / "pred" / f"{stem}.tif")
        level0 = large.output_zarr(tmp_path / "pred" / f"{stem}.tif")  # in the OME-Zarr labels <stem>.zarr
        np.testing.assert_array_equal(mask, np.asarray(zarr.open_array(str(level0))))
        assert mask.shape == image.shape and mask.dtype == np.uint8
        assert "without an uncertainty map" in err and "Traceback" not in err


def test_labels_only_baseline(dataset, tmp_path):
    model = tmp_path / "baseline"
    code, out, err = run_cli(["train", dataset / "images", "--labels", dataset / "labels", "--out", model,
                              "--labels-only", *FAST])
    assert code == 0, err
    assert (model / "best.pt").is_file() and (model / "last.pt").is_file()
    card = json.loads((model / "model_card.json").read_text())
    assert card["method"] == "labels-only baseline" and card["selected_twin"] == "teacher"
    with (model / "losses.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and {row["stage"] for row in rows} == {"supervised"}  # no pretraining / co-training
    assert "labels only" in out and "not trained on" in err


def test_3d_volumes_train_and_predict(tmp_path):
    write_dataset(tmp_path / "vol", make_blobs_dataset(3, (16, 32, 32), seed=2), 1)
    model, pred = tmp_path / "model3d", tmp_path / "pred3d"
    code, out, err = run_cli(["train", tmp_path / "vol" / "images", "--labels", tmp_path / "vol" / "labels",
                              "--out", model, "--steps", "4", "--width", "8", "--patch-size", "16", "32", "32",
                              "--batch-size", "1"])
    assert code == 0, err
    assert "3D grey" in err
    code, out, err = run_cli(["predict", model, tmp_path / "vol" / "images", "--out", pred])
    assert code == 0, err
    for i in range(3):
        mask = tifffile.imread(pred / f"img_{i:03d}.tif")
        assert mask.dtype == np.uint8 and mask.shape == (16, 32, 32)
    code, out, err = run_cli(["eval", pred, tmp_path / "vol" / "masks"])
    assert code == 0 and "pooled/mean" in out


def interrupt_training_at_step(monkeypatch, step: int):
    """Make the CLI's progress display raise KeyboardInterrupt (Ctrl-C) after ``step``; returns the undo."""
    original = cli._TrainDisplay.progress

    def interrupt(self, event):
        original(self, event)
        if event.step == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli._TrainDisplay, "progress", interrupt)
    return lambda: monkeypatch.setattr(cli._TrainDisplay, "progress", original)


def test_ctrl_c_saves_last_and_resume_finishes(dataset, tmp_path, monkeypatch):
    model = tmp_path / "interrupted"
    argv = ["train", str(dataset / "images"), "--labels", str(dataset / "labels"), "--out", str(model), *FAST]
    restore = interrupt_training_at_step(monkeypatch, 3)
    code, out, err = run_cli(argv)
    assert code == 130
    assert (model / "last.pt").is_file()
    assert "interrupted at step 3" in err and "--resume" in err and "Traceback" not in err
    restore()

    code, out, err = run_cli([*argv, "--resume"])
    assert code == 0, err
    card = json.loads((model / "model_card.json").read_text())
    assert card["training"]["steps"] == 6  # 3 before the interrupt + 3 after resuming, not 6 more
    assert (model / "best.pt").is_file()


def test_info_prints_model_card(trained):
    code, out, err = run_cli(["info", trained["model"]])
    assert code == 0, err
    assert "2D grey images, 2 classes, width 8" in out
    assert "6 image(s), 2 labelled" in out and "Dice on the labelled training images" in out


def test_unexpected_error_one_line_and_debug_reraises(trained, tmp_path, monkeypatch):
    from napari_diffseg.core.data import metrics

    def boom(pred_dir, mask_dir):
        raise RuntimeError("boom")

    monkeypatch.setattr(metrics, "evaluate_folders", boom)
    code, out, err = run_cli(["eval", tmp_path, tmp_path])
    assert code == 1
    assert err.strip() == "diffseg: error: unexpected RuntimeError: boom; run with --debug for the traceback"
    with pytest.raises(RuntimeError, match="boom"):
        run_cli(["--debug", "eval", tmp_path, tmp_path])
    with pytest.raises(RuntimeError, match="boom"):
        run_cli(["eval", tmp_path, tmp_path, "--debug"])


# ------------------------------------------------------------------------------------------------ user mistakes
def _copy_model(trained, tmp_path) -> Path:
    copy = tmp_path / "model_copy"
    shutil.copytree(trained["model"], copy)
    return copy


def _train_args(images, labels, out, *extra):
    return ["train", images, "--labels", labels, "--out", out, *FAST, *extra]


def case_missing_images(trained, tmp):
    return _train_args(tmp / "nope", trained["data"] / "labels", tmp / "m"), "folder not found"


def case_labels_without_matching_stem(trained, tmp):
    (tmp / "labels").mkdir()
    write_mask(tmp / "labels" / "other.tif", np.ones(SHAPE_2D, np.uint8))
    return _train_args(trained["data"] / "images", tmp / "labels", tmp / "m"), "no labelled image"


def case_unreadable_image(trained, tmp):
    shutil.copytree(trained["data"] / "images", tmp / "images")
    (tmp / "images" / "broken.tif").write_text("this is not a TIFF file\n")
    return _train_args(tmp / "images", trained["data"] / "labels", tmp / "m"), "cannot read"


def case_label_shape_mismatch(trained, tmp):
    (tmp / "labels").mkdir()
    write_mask(tmp / "labels" / "img_000.tif", np.ones((40, 48), np.uint8))
    return _train_args(trained["data"] / "images", tmp / "labels", tmp / "m"), "shape mismatch"


def case_labels_folder_is_images_folder(trained, tmp):
    images = trained["data"] / "images"
    return _train_args(images, images, tmp / "m"), "own folder"


def case_budget_zero(trained, tmp):
    return _train_args(trained["data"] / "images", trained["data"] / "labels", tmp / "m", "--budget", "0"), "budget"


def case_budget_negative(trained, tmp):
    return _train_args(trained["data"] / "images", trained["data"] / "labels", tmp / "m", "--budget", "-5"), "budget"


def case_device_cuda_unavailable(trained, tmp):
    return (_train_args(trained["data"] / "images", trained["data"] / "labels", tmp / "m", "--device", "cuda"),
            "CUDA is not available")


def case_unknown_device(trained, tmp):
    return ["predict", trained["model"], trained["data"] / "images", "--out", tmp / "p", "--device", "tpu"], \
        "unknown device"


def case_resume_without_checkpoint(trained, tmp):
    return (_train_args(trained["data"] / "images", trained["data"] / "labels", tmp / "m", "--resume"),
            "nothing to resume")


def case_missing_required_option(trained, tmp):
    return ["train", trained["data"] / "images", "--out", tmp / "m"], "required: --labels"


def case_corrupt_best(trained, tmp):
    model = _copy_model(trained, tmp)
    (model / "best.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    return ["predict", model, trained["data"] / "images", "--out", tmp / "p"], "corrupt"


def case_foreign_checkpoint(trained, tmp):
    import torch

    model = _copy_model(trained, tmp)
    torch.save({"a": 1}, model / "best.pt")
    return ["predict", model, trained["data"] / "images", "--out", tmp / "p"], "not a napari-diffseg checkpoint"


def case_model_folder_missing(trained, tmp):
    return ["predict", tmp / "no_model", trained["data"] / "images", "--out", tmp / "p"], "model folder not found"


def case_rgb_image_into_grey_model(trained, tmp):
    (rgb, _), = make_blobs_dataset(1, SHAPE_2D, rgb=True)
    write_tiff_atomic(tmp / "colour.tif", rgb)
    return ["predict", trained["model"], tmp / "colour.tif", "--out", tmp / "p"], "2D RGB"


def case_predict_input_missing(trained, tmp):
    return ["predict", trained["model"], tmp / "nothing_here", "--out", tmp / "p"], "input not found"


def case_predict_would_overwrite_inputs(trained, tmp):
    shutil.copytree(trained["data"] / "images", tmp / "images")
    return ["predict", trained["model"], tmp / "images", "--out", tmp / "images"], "overwrite an input image"


def case_tile_dims_mismatch(trained, tmp):
    return (["predict", trained["model"], trained["data"] / "images", "--out", tmp / "p", "--tile", "16", "32", "32"],
            "--tile needs 2 numbers")


def case_eval_masks_folder_missing(trained, tmp):
    return ["eval", trained["data"] / "masks", tmp / "no_masks"], "folder not found"


def case_eval_no_matching_stems(trained, tmp):
    (tmp / "other").mkdir()
    write_mask(tmp / "other" / "unrelated.tif", np.ones(SHAPE_2D, np.uint8))
    return ["eval", tmp / "other", trained["data"] / "masks"], "name stem"


def case_train_out_is_the_images_folder(trained, tmp):
    shutil.copytree(trained["data"] / "images", tmp / "images")
    return _train_args(tmp / "images", trained["data"] / "labels", tmp / "images"), "is the images folder"


MISTAKES = {name[len("case_"):]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_user_mistake_exits_2_with_one_line(case, trained, tmp_path):
    argv, fragment = MISTAKES[case](trained, tmp_path)
    code, out, err = run_cli(argv)
    assert_one_line_error(code, err, fragment)


def test_a_patch_size_off_the_network_multiple_is_rounded_with_a_warning(dataset, tmp_path):
    code, _, err = run_cli(_train_args(dataset / "images", dataset / "labels", tmp_path / "m", "--patch-size", "30",
                                       "30", "--steps", "1"))
    assert code == 0
    assert "patch size 30x30 is not a multiple of 8: training on 24x24" in err
    assert json.loads((tmp_path / "m" / "model_card.json").read_text())["patch_size"] == [24, 24]


def test_no_subcommand_is_a_one_line_usage_error():
    code, out, err = run_cli([])
    assert_one_line_error(code, err, "required")


# ------------------------------------------------------------------------------------------------ real processes
def test_installed_console_script_and_module_entry(tmp_path):
    script = Path(sys.executable).parent / "diffseg"
    assert script.is_file(), "the diffseg console script is missing: pip install -e ."
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in ("train", "predict", "eval", "info"):
        assert command in result.stdout
    result = subprocess.run([str(script), "train", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--budget" in result.stdout and "--labels-only" in result.stdout

    # a user mistake in a real process: exit 2 and one line, through `python -m napari_diffseg.cli`
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-m", "napari_diffseg.cli", "eval", str(tmp_path / "a"),
                             str(tmp_path / "b")], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2
    expected = f"diffseg: error: folder not found: {tmp_path / 'a'}; check the path"
    assert result.stderr.strip().splitlines() == [expected]


def test_help_does_not_import_torch():
    code = "import sys; from napari_diffseg import cli; cli.build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_an_unwritable_out_fails_before_training(dataset, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, out, err = run_cli(["train", dataset / "images", "--labels", dataset / "labels", "--out",
                              blocker / "model", *FAST])
    assert_one_line_error(code, err, "is not a writable folder")
    assert "step" not in out


@pytest.mark.parametrize(("card", "message"), [("[1, 2, 3]", "is a JSON list, not an object"),
                                                ('{"training": 5}', "'training' is a JSON int")])
def test_info_on_a_model_card_of_the_wrong_shape(trained, tmp_path, card, message):
    model = tmp_path / "model"
    shutil.copytree(trained["model"], model)
    (model / "model_card.json").write_text(card)
    code, _, err = run_cli(["info", model])
    assert_one_line_error(code, err, message)


def test_quiet_prints_only_warnings_and_errors_but_answers_questions(dataset, tmp_path):
    model = tmp_path / "model"
    code, out, err = run_cli(["train", dataset / "images", "--labels", dataset / "labels", "--out", model, "-q",
                              *FAST])
    assert code == 0, err
    # a FAST run is too short to learn the blobs: its collapse warning is the one thing quiet still prints
    assert out == "" and all(line.startswith("diffseg: warning: ") for line in err.splitlines())
    code, out, err = run_cli(["predict", model, dataset / "images", "--out", tmp_path / "pred", "-q"])
    assert code == 0 and out == "" and err == ""
    code, out, _ = run_cli(["info", model, "-q"])  # a question: it still answers
    assert code == 0 and "model folder:" in out
