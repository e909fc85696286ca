"""A project's masks exported under the user's own names, and the records that keep export safe: the folders the
project was created from (export never writes into them) and the names the project had to change. A part of
``Project`` (``store.Project`` inherits it), apart from the store's reading and writing of images and masks."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from napari_diffseg.core.data.io import name_key
from napari_diffseg.core.data.safety import child_path, is_plain_name, refuse_unsafe_outputs
from napari_diffseg.core.errors import InputError
from napari_diffseg.core.project.layout import (CHECKPOINTS_DIR, IMAGES_DIR, LABELS_DIR, ORIGINAL_NAME_KEY, PSEUDO_DIR,
                                                SOURCES_KEY, is_path_like)

logger = logging.getLogger(__name__)


class ProjectExport:
    """Export and its records; uses the store's ``folder``, ``db_path``, ``_connection``, ``_meta``, ``names``,
    ``records``, ``current_mask`` and ``_write_mask``."""

    def _record_sources(self, images_dir: Path, labels_dir: Path | None) -> None:
        sources = {"images": str(Path(images_dir).resolve())}
        if labels_dir is not None:
            sources["labels"] = str(Path(labels_dir).resolve())
        with self._connection(write=True) as con:
            con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (SOURCES_KEY, json.dumps(sources)))

    def source_folders(self) -> dict[str, Path]:
        """The folders the project was created from ({"images": ..., "labels": ...}; {} for a project made
        otherwise, or when the record is unreadable: it only ever adds protection)."""
        try:
            sources = json.loads(self._meta(SOURCES_KEY) or "{}")
        except json.JSONDecodeError:
            return {}
        if not isinstance(sources, dict):
            return {}
        return {key: Path(value) for key, value in sources.items() if key in ("images", "labels")
                and isinstance(value, str) and value}

    def original_name(self, name: str) -> str:
        """The name the user gave image ``name`` (its file stem, or the name passed to ``add_image``) where the
        project had to change it (spaces, punctuation, a name taken); ``name`` otherwise. InputError for a
        recorded name that no file could have had (a path: edited by hand)."""
        original = self._meta(f"{ORIGINAL_NAME_KEY}{name}")
        if original is None:
            return name
        if is_path_like(original):
            raise InputError(f"the project manifest {self.db_path} records the original name {original!r} for image "
                             f"{name!r}: a path, not a file name (edited by hand?); it is never used as a path: "
                             "restore the manifest from a backup")
        return original

    def export_names(self, names: list[str]) -> dict[str, str]:
        """The file stem each image is exported under: the user's name (``original_name``), or the project name
        where the user's name cannot be a file name here or two would be one file on a case-insensitive file
        system (the images whose name was kept claim theirs first)."""
        preferred = {name: self.original_name(name) for name in names}
        taken: set[str] = set()
        chosen: dict[str, str] = {}
        for name in sorted(names, key=lambda n: preferred[n] != n):  # stable sort: the order of ``names`` stays
            stem = preferred[name]
            if not is_plain_name(stem) or name_key(stem) in taken:
                logger.warning("%s: exported as %s.tif, not under its original name %r (%s)", name, name, stem,
                               "taken" if is_plain_name(stem) else "not a file name here")
                stem = name
            taken.add(name_key(stem))
            chosen[name] = stem
        return {name: chosen[name] for name in names}

    def export_masks(self, out: Path, overwrite: bool = False) -> tuple[dict[str, int], dict[str, int]]:
        """Write ``<name>.tif`` to ``out`` for every image that has a mask (see ``current_mask``), under the user's
        names (``export_names``); returns the counts written and skipped, by source. InputError, before anything is
        written, when ``out`` is inside the project, nothing has a mask, or (unless ``overwrite``) a mask would
        replace or mix with files in ``out`` or ``out`` is a folder the project was created from (core.data.safety)."""
        if not self.names():
            raise InputError(f"project {self.folder} has no images: nothing to export")
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise InputError(f"the export folder {out} is a file; give a folder for the masks")
        target = out.resolve()
        for sub in ("", IMAGES_DIR, LABELS_DIR, PSEUDO_DIR, CHECKPOINTS_DIR):
            inside = self.folder.resolve() / sub
            if target == inside or (sub and target.is_relative_to(inside)):
                raise InputError(f"the export folder {out} is inside the project's own files; choose another "
                                 "folder")
        names = [record.name for record in self.records()]  # every row is checked before anything is written
        written: dict[str, int] = {}
        skipped: dict[str, int] = {}
        with_mask = []
        for name in names:  # first pass: what will be written (the masks are read again when written)
            mask, source = self.current_mask(name)
            counts = skipped if mask is None else written
            counts[source] = counts.get(source, 0) + 1
            if mask is not None:
                with_mask.append(name)
        if not written:
            raise InputError("nothing to export: no image has a mask yet; label images or train a round first")
        stems = self.export_names(names)
        targets = {name: child_path(out, stems[name], ".tif", what="export name") for name in with_mask}
        sources = self.source_folders()
        refuse_unsafe_outputs(out, list(targets.values()), overwrite=overwrite, option="--out folder", originals={
            "images the project was created from": sources.get("images"),
            "labels the project was created from": sources.get("labels")})
        for name in with_mask:
            self._write_mask(targets[name], self.current_mask(name)[0])
        return written, skipped
