"""The on-disk project store shared by the CLI and the GUI: pixel data as TIFF files plus a SQLite manifest.

A project is a folder::

    images/<name>.tif                       the user's images, copied in (original dtype and layout)
    labels/<name>.tif                       ground truth: painted labels and accepted corrections (uint8)
    pseudo/round_<k>/<name>.tif             the teacher's pseudo-label of round k (uint8)
    pseudo/round_<k>/<name>_uncertainty.tif its per-pixel uncertainty (float32)
    checkpoints/round_<k>/                  model folders of round k (written by core.method.training / core.method.checkpoint)
    project.sqlite                          manifest: tables images, losses, meta (config JSON, current_round, schema)

Durability: every pixel file is written atomically (temp file + ``os.replace``, see ``core.data.io``) *before* its
manifest row changes, and every manifest change is its own committed transaction. Killing the process at any moment
therefore leaves either the old state or the new state of each image, never a row pointing at half a file, and an
accepted correction is on disk the moment :meth:`Project.accept` returns.

Thread safety: every call opens its own short-lived SQLite connection, and writes are serialised by a per-project
lock (plus SQLite's own file lock and a busy timeout across processes), so the GUI thread may read and accept while
a worker thread writes pseudo-labels.

Rounds are numbered from 1; ``current_round`` is the round being trained / reviewed. Image names are sanitised from
file stems and made unique case-insensitively (``cell``, ``cell_2``, ``cell_3`` ...).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from napari_diffseg.core.project import locks
from napari_diffseg.core.errors import DiffsegError, DuplicateImageError, InputError
from napari_diffseg.core.data.io import (
    BEST,
    UNCERTAINTY_SUFFIX,
    checked_spacing,
    image_layout,
    name_stem,
    pair_images_with_labels,
    read_image,
    read_mask,
    read_spacing,
    write_tiff_atomic,
)
from napari_diffseg.core.data.safety import is_plain_name, refuse_name_collisions
from napari_diffseg.core.objects.files import read_instances
from napari_diffseg.core.project.export import ProjectExport
from napari_diffseg.core.project.masks import NEW_SUFFIX, PREVIOUS_SUFFIX, ProjectMasks
from napari_diffseg.core.project.records import (GROUND_TRUTH_STATUSES, ImageRecord, ImageStatus,  # noqa: F401
                                                 LossEntry, now, user)
from napari_diffseg.core.project.layout import (CHECKPOINTS_DIR, DB_NAME, IMAGES_DIR, LABELS_DIR, ORIGINAL_NAME_KEY,
                                                PSEUDO_DIR, SPACING_KEY, is_path_like)

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TRAINING_LOCK = locks.LOCK_NAME  # held (an OS file lock) by the one process training or pretraining the project
APP_ID = "napari-diffseg"
FIRST_ROUND = 1
_BUSY_TIMEOUT_S = 30.0
_MAX_NAME_LEN = 100
_MAX_ROUND = 100_000  # a round number beyond this was not counted by a project (edited by hand)
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                     *(f"LPT{i}" for i in range(1, 10))}

# the current round, read inside the same statement that stamps a row with it
_CURRENT_ROUND_SQL = f"COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'current_round'), {FIRST_ROUND})"

_SCHEMA = """
CREATE TABLE images (
    name TEXT PRIMARY KEY,
    image_file TEXT NOT NULL,
    status TEXT NOT NULL,
    round INTEGER NOT NULL,
    model_id TEXT,
    uncertainty REAL,
    updated_at TEXT NOT NULL,
    updated_by TEXT NOT NULL
);
CREATE TABLE losses (
    round INTEGER NOT NULL,
    stage TEXT NOT NULL,
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    time REAL NOT NULL
);
CREATE INDEX losses_round ON losses(round);
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def _remove_new_project(folder: Path, existed: bool) -> None:
    """Undo a ``Project.create`` (the folder was new, or empty apart from hidden files)."""
    import shutil

    for sub in (IMAGES_DIR, LABELS_DIR, PSEUDO_DIR, CHECKPOINTS_DIR):
        shutil.rmtree(folder / sub, ignore_errors=True)
    for path in folder.glob(f"{DB_NAME}*"):
        path.unlink(missing_ok=True)
    if not existed:
        with contextlib.suppress(OSError):
            folder.rmdir()
    logger.info("removed the incomplete project %s", folder)


def content_hash(array: np.ndarray) -> str:
    """SHA-256 of an image's pixels, shape and type: finds the same image added twice under another name."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.shape}|{array.dtype.str}|".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def sanitise_name(raw: str) -> str:
    """A file-system-safe image name: letters and digits of any script (NFC), ``.``, ``_``, ``-``; never empty,
    hidden or reserved. The project records the user's name where this changed it (see ``Project.export_names``)."""
    name = re.sub(r"[^\w.-]+", "_", unicodedata.normalize("NFC", str(raw)).strip()).strip("._-")
    name = re.sub(r"_{2,}", "_", name)[:_MAX_NAME_LEN].rstrip("._-") or "image"
    if name.upper().split(".")[0] in _WINDOWS_RESERVED or name.endswith(UNCERTAINTY_SUFFIX):
        # reserved device names cannot be files on Windows; "<x>_uncertainty" would clash with <x>'s uncertainty map
        name = f"{name}_img"
    return name


class Project(ProjectMasks, ProjectExport):
    """A project folder: images, ground-truth labels, pseudo-labels per round, checkpoints and the manifest."""

    def __init__(self, folder: Path) -> None:
        """Use :meth:`create` or :meth:`open`; this constructor does not check the folder."""
        self.folder = Path(folder).resolve()
        self.db_path = self.folder / DB_NAME
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ creating and opening

    @classmethod
    def create(cls, folder: Path, config: dict | None = None) -> Project:
        """Make a new project in ``folder`` (created if missing; must be empty apart from hidden files)."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise InputError(f"cannot create a project at {folder}: it is a file, not a folder")
        if (folder / DB_NAME).exists():
            raise InputError(f"{folder} is already a napari-diffseg project; open it instead")
        if folder.exists() and any(not p.name.startswith(".") for p in folder.iterdir()):
            raise InputError(f"cannot create a project in {folder}: the folder is not empty; "
                             "choose a new or empty folder")
        config_json = _config_to_json(config or {})
        existed = folder.exists()
        # the database is built beside its final name and moved into place, so a crash during creation never
        # leaves a half-initialised project.sqlite behind
        tmp = folder / f".{DB_NAME}.tmp-{os.getpid()}-{threading.get_ident()}"
        try:
            for sub in (IMAGES_DIR, LABELS_DIR, PSEUDO_DIR, CHECKPOINTS_DIR):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            tmp.unlink(missing_ok=True)
            con = sqlite3.connect(tmp, isolation_level=None)
            try:
                con.executescript(_SCHEMA)
                con.execute("BEGIN")
                con.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [
                    ("app", APP_ID),
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("current_round", str(FIRST_ROUND)),
                    ("config", config_json),
                    ("created_at", now()),
                    ("created_by", user()),
                ])
                con.execute("COMMIT")
            finally:
                con.close()
            os.replace(tmp, folder / DB_NAME)
        except BaseException as exc:  # a failed create leaves nothing behind that would block the retry
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            _remove_new_project(folder, existed)
            if isinstance(exc, (OSError, sqlite3.Error)):
                raise DiffsegError(f"cannot create a project in {folder}: {exc}") from exc
            raise
        logger.info("created project %s", folder)
        return cls(folder)

    @classmethod
    def create_from_folders(cls, folder: Path, images_dir: Path, labels_dir: Path | None = None,
                            num_classes: int = 2, on_image: Callable[[Path], None] | None = None,
                            objects: dict | None = None) -> Project:
        """A new project in ``folder`` with every image of ``images_dir``; a file of ``labels_dir`` with an image's
        name stem becomes its ground truth. All files are paired (and the pairing checked) before anything is
        created; when an image or label fails, or the user interrupts, the half-filled project is removed again.
        ``on_image(path)`` is called after each image (progress). ``objects`` (core.objects.files.objects_card):
        an objects-mode project, whose labels are instance masks (ids kept) trained as three classes."""
        folder, images_dir = Path(folder), Path(images_dir)
        image_paths, label_paths = pair_images_with_labels(images_dir, labels_dir)
        refuse_name_collisions((sanitise_name(name_stem(path)), path) for path in image_paths)
        existed = folder.exists()
        config = {"num_classes": num_classes} if objects is None else {"num_classes": 3, "objects": objects}
        project = cls.create(folder, config=config)
        try:
            project._record_sources(images_dir, labels_dir)
            for path in image_paths:
                record = project.add_image(path)
                label = label_paths.get(name_stem(path))
                if label is not None:
                    project.save_label(record.name, read_instances(label) if objects else read_mask(label, num_classes))
                if on_image is not None:
                    on_image(path)
        except BaseException:  # a bad image or label, Ctrl-C: no half-filled project is left behind
            _remove_new_project(folder, existed)
            raise
        return project

    @classmethod
    def open(cls, folder: Path) -> Project:
        """Open an existing project; InputError when ``folder`` is not one, is corrupt or is from a newer version."""
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"project folder {folder} does not exist")
        db = folder / DB_NAME
        if not db.is_file():
            raise InputError(f"{folder} is not a napari-diffseg project (no {DB_NAME}); create a project first")
        project = cls(folder)
        try:
            con = sqlite3.connect(project._db_uri(), uri=True, timeout=_BUSY_TIMEOUT_S)
            try:
                check = con.execute("PRAGMA quick_check").fetchone()
                if check is None or check[0] != "ok":
                    raise sqlite3.DatabaseError(f"integrity check failed: {check[0] if check else 'no answer'}")
                tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                meta = dict(con.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
            finally:
                con.close()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise DiffsegError(f"project database {db} is locked by another program; try again") from exc
            raise InputError(f"cannot read project database {db} ({exc}); check that the file is readable, "
                             "or restore it from a backup") from exc
        except sqlite3.DatabaseError as exc:
            raise InputError(f"project database {db} is corrupt or not a SQLite file ({exc}); restore it from a "
                             "backup or create a new project") from exc
        if meta.get("app") != APP_ID or not {"images", "losses", "meta"} <= tables:
            raise InputError(f"{db} is not a napari-diffseg project database")
        try:
            version = int(meta.get("schema_version", ""))
        except ValueError:
            raise InputError(f"project database {db} has an unreadable schema version") from None
        if version > SCHEMA_VERSION:
            raise InputError(f"project {folder} was written by a newer napari-diffseg (project format "
                             f"v{version}, this version reads up to v{SCHEMA_VERSION}); upgrade napari-diffseg")
        for sub in (IMAGES_DIR, LABELS_DIR, PSEUDO_DIR, CHECKPOINTS_DIR):
            with contextlib.suppress(OSError):  # read-only projects still open (for prediction); writes will say why
                (folder / sub).mkdir(exist_ok=True)
        project._recover_interrupted_label_writes()
        logger.info("opened project %s (%d images)", folder, len(project.records()))
        return project

    def _recover_interrupted_label_writes(self) -> None:
        """After a crash in the middle of ``_store_ground_truth``: put a kept previous mask back where its file is
        missing (the manifest still describes it), and remove leftover temporary files."""
        with contextlib.suppress(OSError):
            for leftover in sorted(self.labels_dir.glob(".*")):
                if leftover.name.endswith(PREVIOUS_SUFFIX):
                    target = leftover.with_name(leftover.name[1:-len(PREVIOUS_SUFFIX)])
                    if target.exists():
                        leftover.unlink()
                    else:
                        os.replace(leftover, target)
                        logger.warning("restored %s, interrupted while being replaced", target.name)
                elif leftover.name.endswith((".tmp", NEW_SUFFIX)):
                    leftover.unlink()

    # ------------------------------------------------------------------ database plumbing

    @contextlib.contextmanager
    def _connection(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A short-lived connection; with ``write`` an immediate transaction committed on success."""
        lock = self._lock if write else contextlib.nullcontext()
        with lock:
            try:
                con = sqlite3.connect(self._db_uri(), uri=True, timeout=_BUSY_TIMEOUT_S,
                                      isolation_level=None)
            except sqlite3.Error as exc:
                raise DiffsegError(f"cannot open project database {self.db_path}: {exc}") from exc
            try:
                if write:
                    con.execute("BEGIN IMMEDIATE")
                try:
                    yield con
                except BaseException:
                    if write and con.in_transaction:
                        con.execute("ROLLBACK")
                    raise
                if write:
                    con.execute("COMMIT")
            except sqlite3.Error as exc:
                raise DiffsegError(f"project database {self.db_path}: {exc}") from exc
            finally:
                con.close()

    def _db_uri(self) -> str:
        # read-write, never create: a deleted project.sqlite must not silently become an empty new one
        return f"{self.db_path.as_uri()}?mode=rw"

    def _meta(self, key: str) -> str | None:
        with self._connection() as con:
            row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _record_from_row(self, row: tuple) -> ImageRecord:
        name, image_file, status, round_, model_id, uncertainty, updated_at, updated_by = row
        image_file_path = Path(str(image_file))
        if not is_plain_name(name) or image_file_path.parent != Path(IMAGES_DIR) \
                or not is_plain_name(image_file_path.name):
            raise InputError(f"the project manifest {self.db_path} names image {name!r} (file {image_file!r}) with "
                             "something that is not a plain file name (edited by hand?); it is never used as a "
                             "path: restore the manifest from a backup")
        try:
            return ImageRecord(name=name, image_path=self.folder / image_file, status=ImageStatus(status),
                               round=int(round_), model_id=model_id,
                               uncertainty=None if uncertainty is None else float(uncertainty),
                               updated_at=updated_at, updated_by=updated_by)
        except (TypeError, ValueError):
            raise InputError(f"the project manifest {self.db_path} has an unreadable row for image {name!r} (status "
                             f"{status!r}, round {round_!r}; edited by hand?); restore it from a backup") from None

    def _set_status(self, name: str, status: ImageStatus, **fields: Any) -> None:
        """Update one image's row in its own committed transaction."""
        values = {"status": status.value, "updated_at": now(), "updated_by": user(), **fields}
        assignments = ", ".join(f"{column} = ?" for column in values)
        with self._connection(write=True) as con:
            cur = con.execute(f"UPDATE images SET {assignments}, round = {_CURRENT_ROUND_SQL} WHERE name = ?",
                              (*values.values(), name))
            if cur.rowcount != 1:
                raise InputError(f"no image named {name!r} in project {self.folder}")

    # ------------------------------------------------------------------ folders

    @property
    def images_dir(self) -> Path:
        return self.folder / IMAGES_DIR

    @property
    def labels_dir(self) -> Path:
        return self.folder / LABELS_DIR

    def pseudo_dir(self, round_number: int) -> Path:
        """``pseudo/round_<k>`` (not created here; writing a pseudo-label creates it)."""
        return self.folder / PSEUDO_DIR / f"round_{int(round_number)}"

    @contextlib.contextmanager
    def training_lock(self, activity: str) -> Iterator[None]:
        """Hold the project's training lock while ``activity`` runs: one trainer per project, across processes
        (napari and the command line alike) and platforms (see ``core.project.locks``). DiffsegError naming the holder when
        another run has it."""
        def busy(holder: str) -> str:  # the reason first, the path last: napari cuts long notifications at the end
            return (f"project is busy: {holder}; wait for it to finish or stop it (one training per project): "
                    f"{self.folder}")

        with locks.exclusive(self.folder / TRAINING_LOCK, activity, busy):
            yield

    def missing_files(self) -> list[str]:
        """Names of images whose image file, or (when LABELLED / ACCEPTED) mask file, is gone from the folder."""
        missing = []
        for record in self.records():
            if not record.image_path.is_file() or (record.status in GROUND_TRUTH_STATUSES
                                                   and not self._label_path(record.name).is_file()):
                missing.append(record.name)
        return missing

    def latest_model_dir(self) -> Path | None:
        """The most recent round's checkpoint folder that holds a ``best.pt`` (a model ready to predict with)."""
        for round_ in range(self.current_round, 0, -1):
            folder = self.checkpoints_dir(round_, create=False)
            if (folder / BEST).is_file():
                return folder
        return None

    def checkpoints_dir(self, round_number: int, create: bool = True) -> Path:
        """``checkpoints/round_<k>``, created if missing (unless ``create`` is False)."""
        path = self.folder / CHECKPOINTS_DIR / f"round_{int(round_number)}"
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    # ------------------------------------------------------------------ config and rounds

    @property
    def config(self) -> dict:
        """A copy of the project's configuration (JSON in the manifest)."""
        text = self._meta("config") or "{}"
        try:
            config = json.loads(text)
        except json.JSONDecodeError:
            config = None
        if not isinstance(config, dict):
            raise InputError(f"the project manifest {self.db_path} has an unreadable configuration ({text[:40]!r}; "
                             "edited by hand?); restore it from a backup")
        return config

    def update_config(self, changes: dict) -> dict:
        """Merge ``changes`` into the configuration (top-level keys), store it and return the new configuration."""
        with self._connection(write=True) as con:
            row = con.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
            config = json.loads(row[0]) if row else {}
            config.update(changes)
            con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('config', ?)", (_config_to_json(config),))
        return config

    @property
    def objects(self) -> dict | None:
        """The objects-mode settings (core.objects: instance labels, three-class training) or None (regions)."""
        entry = self.config.get("objects")
        return entry if isinstance(entry, dict) and entry.get("mode") == "objects" else None

    @property
    def num_classes(self) -> int:
        """``config["num_classes"]`` (default 2: background / foreground); masks are validated against it."""
        value = self.config.get("num_classes", 2)
        if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 255:
            raise InputError(f"the project manifest {self.db_path} has num_classes {value!r}, not a whole number "
                             "from 2 to 255 (edited by hand?); restore the manifest from a backup")
        return value

    @property
    def current_round(self) -> int:
        value = self._meta("current_round")
        try:
            round_ = FIRST_ROUND if value is None else int(value)
        except ValueError:
            round_ = None
        if round_ is None or not FIRST_ROUND <= round_ <= _MAX_ROUND:  # a loop over the rounds must end
            raise InputError(f"the project manifest {self.db_path} has an unreadable round number {value!r} "
                             "(edited by hand?); restore it from a backup")
        return round_

    def next_round(self) -> int:
        """Start the next round (e.g. after corrections were accepted); returns its number."""
        with self._connection(write=True) as con:
            row = con.execute("SELECT value FROM meta WHERE key = 'current_round'").fetchone()
            new = (FIRST_ROUND if row is None else int(row[0])) + 1
            # updated in place (not replaced), so that undo_next_round gives back the very same manifest
            con.execute("INSERT INTO meta(key, value) VALUES ('current_round', ?) ON CONFLICT(key) DO UPDATE SET "
                        "value = excluded.value", (str(new),))
        logger.info("project %s: round %d", self.folder, new)
        return new

    def undo_next_round(self, round_number: int) -> None:
        """Take back :meth:`next_round` when round ``round_number`` was started but nothing was trained in it (the
        command failed or was stopped before its first step): the current round goes back to the one before. Does
        nothing when another run has moved the round on since."""
        with self._connection(write=True) as con:
            con.execute("UPDATE meta SET value = ? WHERE key = 'current_round' AND value = ?",
                        (str(int(round_number) - 1), str(int(round_number))))
        logger.info("project %s: back to round %d (nothing was trained in round %d)", self.folder,
                    int(round_number) - 1, int(round_number))

    # ------------------------------------------------------------------ images

    def add_image(self, array_or_path: np.ndarray | Path | str, name: str | None = None,
                  spacing: tuple[float, ...] | None = None) -> ImageRecord:
        """Copy an image (a file path or an array) into ``images/<name>.tif`` and register it as UNLABELLED.

        The name defaults to the file stem (``"image"`` for arrays); it is sanitised and made unique.
        All images of a project must share one layout (2D/3D, channel count): InputError otherwise.
        ``spacing``: the voxel size per spatial axis (a napari layer's scale); a file's own metadata gives it when
        None. The planner reads it to train anisotropic volumes on slices (``spacing``).
        """
        if isinstance(array_or_path, (str, Path)):
            path = Path(array_or_path)
            array = read_image(path)
            raw_name = name if name is not None else name_stem(path)
            file_spacing = read_spacing(path)
        else:
            array = np.asarray(array_or_path)
            raw_name = name if name is not None else "image"
            file_spacing = None
            if array.dtype == object or array.dtype.kind not in "biuf":
                raise InputError(f"image {raw_name!r} has unsupported pixel type {array.dtype}")
        layout = image_layout(array, name=raw_name)
        if spacing is None and file_spacing is not None and len(file_spacing) == layout[0]:
            spacing = file_spacing  # the file's metadata, where it gives one value per spatial axis
        spacing = checked_spacing(spacing, layout[0], raw_name)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InputError(f"image {raw_name!r} contains NaN or infinite values; clean it before adding it")
        base = sanitise_name(raw_name)
        content_key = f"content:{content_hash(array)}"
        with self._lock:
            self._check_layout(raw_name, layout)
            same = self._meta(content_key)
            if same is not None:
                raise DuplicateImageError(f"image {raw_name!r} is already in the project as {same!r} (the same "
                                          "pixels); it was not added again", same)
            taken = {n.lower() for n in self.names()}
            unique = base
            k = 2
            while unique.lower() in taken:
                suffix = f"_{k}"
                unique = f"{base[: _MAX_NAME_LEN - len(suffix)]}{suffix}"
                k += 1
            image_file = f"{IMAGES_DIR}/{unique}.tif"
            write_tiff_atomic(self.folder / image_file, array)
            with self._connection(write=True) as con:
                con.execute("INSERT INTO images(name, image_file, status, round, model_id, uncertainty, updated_at,"
                            f" updated_by) VALUES (?, ?, ?, {_CURRENT_ROUND_SQL}, NULL, NULL, ?, ?)",
                            (unique, image_file, ImageStatus.UNLABELLED.value, now(), user()))
                con.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('layout', ?)", (json.dumps(layout),))
                con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (content_key, unique))
                if spacing is not None:
                    con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                                (f"{SPACING_KEY}{unique}", json.dumps(spacing)))
                if str(raw_name) != unique and not is_path_like(str(raw_name)):  # given back by exports
                    con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                                (f"{ORIGINAL_NAME_KEY}{unique}", str(raw_name)))
        logger.info("added image %s %s %s", unique, array.shape, array.dtype)
        return self.record(unique)

    def _check_layout(self, name: str, layout: tuple[int, int]) -> None:
        stored = self._meta("layout")
        if stored is None:
            return
        try:
            dims, channels = json.loads(stored)
        except (json.JSONDecodeError, TypeError, ValueError):
            raise InputError(f"the project manifest {self.db_path} has an unreadable image layout ({stored[:40]!r}; "
                             "edited by hand?); restore the manifest from a backup") from None
        if (dims, channels) != tuple(layout):
            raise InputError(f"image {name!r} is {layout[0]}D with {layout[1]} channel(s) but this project holds "
                             f"{dims}D images with {channels} channel(s); use a separate project for it")

    def names(self) -> list[str]:
        with self._connection() as con:
            return [row[0] for row in con.execute("SELECT name FROM images ORDER BY rowid")]

    def records(self) -> list[ImageRecord]:
        """All images in the order they were added."""
        with self._connection() as con:
            rows = con.execute("SELECT name, image_file, status, round, model_id, uncertainty, updated_at, "
                               "updated_by FROM images ORDER BY rowid").fetchall()
        return [self._record_from_row(row) for row in rows]

    def record(self, name: str) -> ImageRecord:
        with self._connection() as con:
            row = con.execute("SELECT name, image_file, status, round, model_id, uncertainty, updated_at, "
                              "updated_by FROM images WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise InputError(f"no image named {name!r} in project {self.folder}")
        return self._record_from_row(row)

    def image(self, name: str) -> np.ndarray:
        return read_image(self.record(name).image_path)

    def spacing(self, name: str) -> tuple[float, ...] | None:
        """The voxel size per spatial axis given when the image was added (None: none was given)."""
        stored = self._meta(f"{SPACING_KEY}{name}")
        return None if stored is None else tuple(float(v) for v in json.loads(stored))

    # ------------------------------------------------------------------ selections and counts

    def _names_with(self, statuses: tuple[ImageStatus, ...], negate: bool = False) -> list[str]:
        marks = ", ".join("?" for _ in statuses)
        op = "NOT IN" if negate else "IN"
        with self._connection() as con:
            rows = con.execute(f"SELECT name FROM images WHERE status {op} ({marks}) ORDER BY rowid",
                               [s.value for s in statuses])
            return [row[0] for row in rows]

    def labelled_names(self) -> list[str]:
        """Images with ground truth: LABELLED + ACCEPTED."""
        return self._names_with(GROUND_TRUTH_STATUSES)

    def unlabelled_names(self) -> list[str]:
        """Images awaiting a label or review: UNLABELLED + PSEUDO."""
        return self._names_with((ImageStatus.UNLABELLED, ImageStatus.PSEUDO))

    def training_unlabelled_names(self) -> list[str]:
        """Images without ground truth (UNLABELLED + PSEUDO + REJECTED): the unlabelled data for training."""
        return self._names_with(GROUND_TRUTH_STATUSES, negate=True)

    def status_counts(self) -> dict[ImageStatus, int]:
        """Number of images per status (every status present, zeros included)."""
        counts = {status: 0 for status in ImageStatus}
        with self._connection() as con:
            for status, count in con.execute("SELECT status, COUNT(*) FROM images GROUP BY status"):
                counts[ImageStatus(status)] = int(count)
        return counts

    # ------------------------------------------------------------------ loss history

    def log_losses(self, round_number: int, stage: str, step: int, losses: dict[str, float]) -> None:
        """Append one step's losses (one transaction for the whole dict)."""
        if not losses:
            return
        now = time.time()
        rows = []
        for name, value in losses.items():
            value = float(value)
            rows.append((int(round_number), str(stage), int(step), str(name), value if math.isfinite(value) else None, now))
        with self._connection(write=True) as con:
            con.executemany("INSERT INTO losses(round, stage, step, name, value, time) VALUES (?, ?, ?, ?, ?, ?)",
                            rows)

    def loss_history(self, round_number: int | None = None) -> list[LossEntry]:
        """Logged losses in logging order, optionally of one round (non-finite values come back as NaN)."""
        query = "SELECT round, stage, step, name, value, time FROM losses"
        params: tuple = ()
        if round_number is not None:
            query += " WHERE round = ?"
            params = (int(round_number),)
        with self._connection() as con:
            rows = con.execute(query + " ORDER BY rowid", params).fetchall()
        return [LossEntry(round=r, stage=s, step=st, name=n, value=math.nan if v is None else float(v), time=t)
                for r, s, st, n, v, t in rows]

    def __repr__(self) -> str:
        return f"Project({str(self.folder)!r})"


def _config_to_json(config: dict) -> str:
    if not isinstance(config, dict):
        raise InputError(f"project config must be a dict, got {type(config).__name__}")
    try:
        return json.dumps(config, sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise InputError(f"project config cannot be stored: {exc}") from exc


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} value {value!r} is not JSON serialisable")
