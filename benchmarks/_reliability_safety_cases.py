"""Reliability cases of issue 25, part A, for bench_reliability.py: outputs that would replace or mix with the
user's files (class 1), names that must stay the user's (4), data that must not be trusted as a path or a type (5)
and large PNG / JPEG images (9).

``safety_cases(root, fixtures)`` returns (description, expected, argv, options) like ``bench_reliability.cases``:
expected is "error" (exit 2 and one line), "warn" (finishes and warns) or "ok" (finishes: a valid use such as
--overwrite); ``options`` may give "env" (extra environment variables) and "check" (a function returning None, or
what is wrong with the result: such a case is counted as a silent wrong result).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
import shutil
import sqlite3

import imageio.v3 as iio
import numpy as np
import tifffile
import torch

from napari_diffseg import cli
from napari_diffseg.core.prediction import openvino_backend
from napari_diffseg.core.project.store import Project
from napari_diffseg.core.data.synthetic import make_blobs_dataset

FAST = ["--steps", "3", "--width", "8", "--patch-size", "32", "32", "--threads", "1"]
LARGE_EDGE = 4200  # 17.6 megapixels: over core.prediction.large.LARGE_IMAGE_PIXELS, predicted block by block


def _quiet_cli(argv: list) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return cli.main(["-q", *map(str, argv)])


def _copy(path: Path, target: Path) -> Path:
    (shutil.copytree if path.is_dir() else shutil.copy)(path, target)
    return target


def _images(folder: Path, names: list[str], seed: int = 40) -> Path:
    folder.mkdir(parents=True)
    for index, name in enumerate(names):
        image, mask = make_blobs_dataset(1, shape=(48, 48), seed=seed + index)[0]
        (tifffile.imwrite if name.lower().endswith((".tif", ".tiff")) else iio.imwrite)(folder / name, image)
    return folder


def _labels_for(images: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for path in images.iterdir():
        mask = np.zeros((48, 48), np.uint8)
        mask[8:24, 8:24] = 1
        tifffile.imwrite(folder / f"{Path(path).stem}.tif", mask)
    return folder


def _edit_manifest(project: Path, sql: str, *values) -> Path:
    with sqlite3.connect(project / "project.sqlite") as db:
        db.execute(sql, values)
    return project


def _names_in(folder: Path, expected: list[str]):
    def check() -> str | None:
        found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        return None if found == sorted(expected) else f"{folder.name} holds {found}, expected {sorted(expected)}"
    return check


def _nothing_named(root: Path, pattern: str):
    def check() -> str | None:
        found = [str(p) for p in root.parent.rglob(pattern)]
        return f"written outside --out: {found}" if found else None
    return check


def _large_mask(out: Path, stem: str, shape: tuple[int, int]):
    def check() -> str | None:
        if not (out / f"{stem}.zarr").is_dir():
            return "not predicted block by block (no zarr copy)"
        mask = tifffile.imread(out / f"{stem}.tif")
        return None if mask.shape == shape else f"mask shape {mask.shape}, image {shape}"
    return check


def _replaced_by_masks(out: Path, names: list[str]):
    def check() -> str | None:
        for name in names:
            mask = tifffile.imread(out / name)
            if mask.dtype != np.uint8 or mask.max() > 1:
                return f"{name} is not a predicted mask after --overwrite"
        return None
    return check


def safety_cases(root: Path, fixtures: dict[str, Path]) -> list[tuple]:
    """The cases of classes 1, 4, 5 and 9 with their files (made here, under ``root / "safety_cases"``)."""
    root = Path(root) / "safety_cases"
    root.mkdir()
    im, lab, model = fixtures["images"], fixtures["labels"], fixtures["model"]
    out = lambda name: root / "out" / name  # noqa: E731
    image_names = sorted(p.name for p in im.iterdir())

    # ground truth saved by the user's own tool (no diffseg tag), and copies to destroy
    truth = root / "truth"
    truth.mkdir()
    for path in sorted(fixtures["masks"].iterdir()):
        tifffile.imwrite(truth / path.name, tifffile.imread(path))
    truth_to_replace = _copy(truth, root / "truth_to_replace")
    first = tifffile.imread(im / image_names[0])
    mixed = root / "mixed"
    mixed.mkdir()
    iio.imwrite(mixed / "a.png", first)
    (mixed / "a.tif").write_bytes(b"the user's own a.tif")
    lonely = root / "lonely"
    lonely.mkdir()
    iio.imwrite(lonely / "b.png", first)
    (lonely / "notes.txt").write_text("the user's notes")
    other_case = root / "other_case"
    other_case.mkdir()
    (other_case / "IMG_000.PNG").write_bytes(b"the user's IMG_000.PNG")
    earlier = out("earlier")
    assert _quiet_cli(["predict", model, im, "--out", earlier, "--threads", "1"]) == 0
    uncertainty_inputs = _copy(im, root / "inputs_with_uncertainty_name")
    shutil.copy(im / image_names[0], uncertainty_inputs / "img_001_uncertainty.tif")
    user_uncertainty = root / "user_uncertainty"
    user_uncertainty.mkdir()
    tifffile.imwrite(user_uncertainty / "img_000_uncertainty.tif", np.ones((48, 48), np.float32))
    user_zarr = root / "user_zarr"
    (user_zarr / "img_000.zarr").mkdir(parents=True)
    (user_zarr / "img_000.zarr" / "data.bin").write_bytes(b"the user's array")
    zarr_input = root / "zarr_input"
    zarr_input.mkdir()
    import zarr

    zarr.open_array(str(zarr_input / "scan.zarr"), mode="w", shape=first.shape, dtype=first.dtype)[:] = first
    precious = root / "precious.tif"
    tifffile.imwrite(precious, first)
    linked_out = root / "linked_out"
    linked_out.mkdir()
    (linked_out / "img_000.tif").symlink_to(precious)

    project = root / "project"
    Project.create_from_folders(project, im, lab)
    other_extension = root / "other_extension"
    other_extension.mkdir()
    (other_extension / "img_001.jpg").write_bytes(b"the user's img_001.jpg")  # img_001 is labelled: exported
    exported = out("exported")
    assert _quiet_cli(["project", "export", project, "--out", exported]) == 0
    table = root / "table.csv"
    table.write_text("the user's table")
    foreign_best = root / "foreign_best"
    foreign_best.mkdir()
    (foreign_best / "best.pt").write_bytes(b"weights of another tool")
    foreign_pseudo = root / "foreign_pseudo"
    (foreign_pseudo / "pseudo_labels").mkdir(parents=True)
    tifffile.imwrite(foreign_pseudo / "pseudo_labels" / "mine.tif", np.ones((48, 48), np.uint8))
    foreign_losses = root / "foreign_losses"
    foreign_losses.mkdir()
    (foreign_losses / "losses.csv").write_text("epoch,loss\n1,0.5\n")

    # 4: names
    spaced = _images(root / "names_spaced", ["a b.tif", "a_b.tif"])
    cased = _images(root / "names_cased", ["Cell.tif", "cell.tif"])
    punctuated = _images(root / "names_punctuated", ["cell(1).tif", "cell_1.tif"])
    cased_labels = _copy(lab, root / "labels_cased")
    shutil.copy(lab / image_names[0], cased_labels / image_names[0].upper())
    unicode_names = ["Zelle α.tif", "細胞 01.tif", "naïve.tif", "plain.tif"]
    unicode_images = _images(root / "names_unicode", unicode_names)
    unicode_labels = _labels_for(unicode_images, root / "names_unicode_labels")
    unicode_project = root / "unicode_project"
    Project.create_from_folders(unicode_project, unicode_images, unicode_labels)
    derived_names = ["x.tif", "x_uncertainty.tif", "CON.tif"]
    derived_images = _images(root / "names_derived", derived_names)
    derived_project = root / "derived_project"
    Project.create_from_folders(derived_project, derived_images, _labels_for(derived_images, root / "derived_labels"))

    # 5: data read from files is never a path or a type
    escaped = _edit_manifest(_copy(project, root / "project_escaped"),
                             "UPDATE images SET name = '../escaped' WHERE name = ?", "img_000")
    absolute = _edit_manifest(_copy(project, root / "project_absolute"),
                              "UPDATE images SET name = ? WHERE name = 'img_000'", str(root / "absolute_escape"))
    outside_file = _edit_manifest(_copy(project, root / "project_image_file"),
                                  "UPDATE images SET image_file = '../../outside.tif' WHERE name = ?", "img_000")
    slashed = _edit_manifest(_copy(project, root / "project_slashed"),
                             "UPDATE images SET name = 'a/b' WHERE name = ?", "img_001")
    original_path = _edit_manifest(_copy(project, root / "project_original"),
                                   "INSERT INTO meta(key, value) VALUES ('original_name:img_000', ?)",
                                   "../../escaped_original")
    classes_text = _edit_manifest(_copy(project, root / "project_classes_text"),
                                  "UPDATE meta SET value = ? WHERE key = 'config'", json.dumps({"num_classes": "abc"}))
    classes_fraction = _edit_manifest(_copy(project, root / "project_classes_fraction"),
                                      "UPDATE meta SET value = ? WHERE key = 'config'",
                                      json.dumps({"num_classes": 1.5}))
    settings_list = _edit_manifest(_copy(project, root / "project_settings_list"),
                                   "UPDATE meta SET value = ? WHERE key = 'config'",
                                   json.dumps({"num_classes": 2, "train": [1, 2, 3]}))
    cards = {}
    for key, text in {"data_ints": '{"data": [1, 2]}', "elapsed_text": '{"training": {"elapsed_seconds": "x"}}',
                      "elapsed_inf": '{"training": {"elapsed_seconds": 1e999}}', "empty": "",
                      "binary": "\x00\x01\x02garbage", "predict": "{oops"}.items():
        cards[key] = _copy(model, root / f"model_card_{key}")
        (cards[key] / "model_card.json").write_text(text)

    huge_networks = {}
    for key, value in {"base_channels": 10**6, "depth": 40, "num_classes": "2"}.items():
        huge_networks[key] = _copy(model, root / f"model_network_{key}")
        payload = torch.load(huge_networks[key] / "best.pt", weights_only=True)
        payload["network"][key] = value
        torch.save(payload, huge_networks[key] / "best.pt")

    # 9: large PNG / JPEG
    tiles = -(-LARGE_EDGE // first.shape[0])
    big = np.tile(first, (tiles, tiles))[:LARGE_EDGE, :LARGE_EDGE]
    large = root / "large"
    large.mkdir()
    iio.imwrite(large / "big.png", big)
    iio.imwrite(large / "big_photo.jpg", big, quality=95)
    iio.imwrite(large / "big_colour.png", np.stack([big] * 3, axis=-1))
    data = (large / "big.png").read_bytes()
    (large / "big_cut.png").write_bytes(data[: len(data) // 3])

    predict = ["predict", model]
    export = ["project", "export"]
    cases: list[tuple] = [
        # 1: nothing the user did not ask to replace is replaced
        ("predict --out a folder of ground-truth masks with the same names", "error",
         [*predict, im, "--out", truth]),
        ("predict --out onto ground truth with --overwrite (asked for)", "ok",
         [*predict, im, "--out", truth_to_replace, "--overwrite"],
         {"check": _replaced_by_masks(truth_to_replace, image_names)}),
        ("predict imgs/a.png --out imgs, an unrelated imgs/a.tif there", "error", [*predict, mixed / "a.png", "--out",
                                                                                   mixed]),
        ("predict imgs/b.png --out imgs (the folder of the input)", "error", [*predict, lonely / "b.png", "--out",
                                                                              lonely]),
        ("predict --out the parent of the input folder", "error", [*predict, im, "--out", im.parent]),
        ("predict --out holding IMG_000.PNG (other extension and case)", "error", [*predict, im, "--out",
                                                                                   other_case]),
        ("predict twice into one --out (masks of the earlier run)", "error", [*predict, im, "--out", earlier]),
        ("predict --out the input folder with --overwrite (inputs never replaced)", "error",
         [*predict, im, "--out", im, "--overwrite"]),
        ("predict --uncertainty: x_uncertainty.tif among the inputs", "error",
         [*predict, uncertainty_inputs, "--out", out("uncertainty_names"), "--uncertainty", "--draws", "1"]),
        ("predict --uncertainty: a user's <stem>_uncertainty.tif in --out", "error",
         [*predict, im, "--out", user_uncertainty, "--uncertainty", "--draws", "1"]),
        ("predict: a user's <stem>.zarr folder in --out", "error", [*predict, im, "--out", user_zarr]),
        ("predict scan.zarr --out its folder --overwrite (its zarr copy would be the input)", "error",
         [*predict, zarr_input / "scan.zarr", "--out", zarr_input, "--overwrite"]),
        ("predict --out holding a link named like a mask", "error", [*predict, im, "--out", linked_out]),
        ("project export --out the images folder it was created from", "error", [*export, project, "--out", im]),
        ("project export --out the labels folder it was created from", "error", [*export, project, "--out", lab]),
        ("project export --out the parent of its source folders", "error", [*export, project, "--out", im.parent]),
        ("project export --out holding img_001.jpg", "error", [*export, project, "--out", other_extension]),
        ("project export twice into one --out", "error", [*export, project, "--out", exported]),
        ("project export twice with --overwrite (asked for)", "ok", [*export, project, "--out", exported,
                                                                     "--overwrite"],
         {"check": _names_in(exported, image_names[:2])}),
        ("eval --csv onto a ground-truth mask, even with --overwrite", "error",
         ["eval", earlier, truth, "--csv", truth / image_names[0], "--overwrite"]),
        ("eval --csv onto an existing table", "error", ["eval", earlier, truth, "--csv", table]),
        ("eval --csv a folder", "error", ["eval", earlier, truth, "--csv", root]),
        ("train --out a folder with another tool's best.pt", "error", ["train", im, "--labels", lab, "--out",
                                                                       foreign_best, *FAST]),
        ("train --out a folder with the user's pseudo_labels/", "error", ["train", im, "--labels", lab, "--out",
                                                                          foreign_pseudo, *FAST]),
        ("train --out a folder with the user's losses.csv", "error", ["train", im, "--labels", lab, "--out",
                                                                      foreign_losses, *FAST]),
        # 4: names are the user's
        ("project create: 'a b' and 'a_b'", "error", ["project", "create", root / "p_spaced", "--images", spaced]),
        ("project create: 'Cell' and 'cell'", "error", ["project", "create", root / "p_cased", "--images", cased]),
        ("project create: 'cell(1)' and 'cell_1'", "error", ["project", "create", root / "p_punct", "--images",
                                                             punctuated]),
        ("predict: 'Cell.tif' and 'cell.tif' (one file on Windows / macOS)", "error",
         [*predict, cased, "--out", out("cased")]),
        ("train: 'Cell.tif' and 'cell.tif'", "error", ["train", cased, "--labels", lab, "--out", out("cased_model"),
                                                      *FAST]),
        ("train: labels 'img_000.tif' and 'IMG_000.TIF'", "error", ["train", im, "--labels", cased_labels,
                                                                    "--out", out("cased_labels"), *FAST]),
        ("project create with unicode and spaced names", "ok",
         ["project", "create", root / "p_unicode", "--images", unicode_images, "--labels", unicode_labels],
         {"check": lambda: None if "naïve" in Project.open(root / "p_unicode").names() else "unicode name lost"}),
        ("project export keeps unicode and spaced names", "ok", [*export, unicode_project, "--out",
                                                                 out("unicode")],
         {"check": _names_in(out("unicode"), unicode_names)}),
        ("project export keeps x, x_uncertainty and CON", "ok", [*export, derived_project, "--out",
                                                                 out("derived")],
         {"check": _names_in(out("derived"), derived_names)}),
        # 5: nothing read from data is a path or a type
        ("project export: manifest name edited to ../escaped", "error",
         [*export, escaped, "--out", out("escaped") / "deep"], {"check": _nothing_named(root, "escaped*")}),
        ("project export: manifest name edited to an absolute path", "error",
         [*export, absolute, "--out", out("absolute")], {"check": _nothing_named(root, "absolute_escape*")}),
        ("project status: image file edited to ../../outside.tif", "error", ["project", "status", outside_file]),
        ("project status: manifest name edited to a/b", "error", ["project", "status", slashed]),
        ("project export: recorded original name edited to a path", "error",
         [*export, original_path, "--out", out("original")], {"check": _nothing_named(root, "escaped_original*")}),
        ("project train: num_classes edited to text", "error", ["project", "train", classes_text, *FAST]),
        ("project status: num_classes edited to 1.5", "error", ["project", "status", classes_fraction]),
        ("project train: stored training settings edited to a list (ignored)", "warn",
         ["project", "train", settings_list, *FAST]),
        ("info: model card data entries are numbers", "error", ["info", cards["data_ints"]]),
        ("info: model card elapsed_seconds is text", "error", ["info", cards["elapsed_text"]]),
        ("info: model card elapsed_seconds is 1e999", "error", ["info", cards["elapsed_inf"]]),
        ("info: model card empty", "error", ["info", cards["empty"]]),
        ("info: model card binary garbage", "error", ["info", cards["binary"]]),
        ("predict: model card not JSON", "error", [*predict[:1], cards["predict"], im, "--out", out("card")]),
        ("predict: best.pt edited to a network width of 10**6", "error",
         [*predict[:1], huge_networks["base_channels"], im, "--out", out("huge_width")]),
        ("predict: best.pt edited to a network depth of 40", "error",
         [*predict[:1], huge_networks["depth"], im, "--out", out("huge_depth")]),
        ("info: best.pt edited to num_classes '2' (text)", "error", ["info", huge_networks["num_classes"]]),
        # 9: large inputs block by block whatever their format
        ("predict a 4200 x 4200 PNG (block by block)", "ok", [*predict, large / "big.png", "--out", out("big_png"),
                                                             "--threads", "1"],
         {"check": _large_mask(out("big_png"), "big", big.shape)}),
        ("predict a 4200 x 4200 JPEG (block by block)", "ok", [*predict, large / "big_photo.jpg", "--out",
                                                              out("big_jpg"), "--threads", "1"],
         {"check": _large_mask(out("big_jpg"), "big_photo", big.shape)}),
        ("predict a 4200 x 4200 RGB PNG with a grey model", "error", [*predict, large / "big_colour.png", "--out",
                                                                      out("big_colour"), "--threads", "1"]),
        ("predict a large PNG cut short", "error", [*predict, large / "big_cut.png", "--out", out("big_cut"),
                                                    "--threads", "1"]),
    ]
    if openvino_backend.available():
        blocked = root / "cache_is_a_file"
        blocked.write_text("a file where the cache folder would be")
        tampered, unrecorded = root / "cache_tampered", root / "cache_bad_record"
        ov_predict = [*predict, im, "--backend", "openvino", "--threads", "1"]
        for cache in (tampered, unrecorded):
            with contextlib.ExitStack() as stack:
                stack.callback(_restore_env, os.environ.get("XDG_CACHE_HOME"))
                os.environ["XDG_CACHE_HOME"] = str(cache)
                assert _quiet_cli([*ov_predict, "--out", out(f"warm_{cache.name}")]) == 0
        (weights,) = tampered.rglob("*.bin")
        weights.write_bytes(weights.read_bytes()[:-64] + bytes(64))
        (record,) = unrecorded.rglob("*.sha256")
        record.write_text("{oops")
        cases += [
            ("predict --backend openvino: the cache folder cannot be written", "warn",
             [*ov_predict, "--out", out("ov_blocked")], {"env": {"XDG_CACHE_HOME": str(blocked)}}),
            ("predict --backend openvino: cached weights changed (rebuilt)", "warn",
             [*ov_predict, "--out", out("ov_tampered")], {"env": {"XDG_CACHE_HOME": str(tampered)}}),
            ("predict --backend openvino: cache hash record not JSON (rebuilt)", "warn",
             [*ov_predict, "--out", out("ov_record")], {"env": {"XDG_CACHE_HOME": str(unrecorded)}}),
        ]
    return cases


def _restore_env(previous: str | None) -> None:
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous
