"""A project's masks: ground truth (painted labels, accepted corrections) and the pseudo-labels of each round with
their uncertainty, the review decisions on them (accept, reject, undo) and, in objects mode, the object count of
each. A part of ``store.Project`` (which inherits it); it uses the project's manifest plumbing (``_connection``,
``_lock``, ``_set_status``, ``record``, ``records``), its ``image``, ``objects``, ``num_classes``, ``labels_dir``,
``pseudo_dir`` and ``folder``. Every file is written completely before the manifest row that points at it
changes (see the store's durability note)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path

import numpy as np

from napari_diffseg.core.data.io import (UNCERTAINTY_SUFFIX, check_mask_matches, normalise_mask, read_image,
                                         write_mask, write_tiff_atomic)
from napari_diffseg.core.errors import InputError
from napari_diffseg.core.objects.decode import classes_to_instances
from napari_diffseg.core.objects.files import write_instances
from napari_diffseg.core.objects.targets import as_instances
from napari_diffseg.core.project.layout import PSEUDO_DIR
from napari_diffseg.core.project.records import GROUND_TRUTH_STATUSES, ImageStatus, now, user

logger = logging.getLogger("napari_diffseg.core.project.store")  # the store's log, as before the split

NEW_SUFFIX, PREVIOUS_SUFFIX = ".new", ".previous"  # a label being replaced: hidden files beside it
OBJECTS_KEY = "objects:"  # meta key prefix: objects mode's object count of an image's label or pseudo-label


class ProjectMasks:
    """Labels, pseudo-labels and the review (see the module)."""

    def review_queue(self) -> list[str]:
        """Names of the images awaiting review (status PSEUDO), most uncertain first (unknown uncertainty last)."""
        records = [r for r in self.records() if r.status == ImageStatus.PSEUDO]
        order = {name: index for index, name in enumerate(r.name for r in records)}
        records.sort(key=lambda r: (r.uncertainty is None, -(r.uncertainty or 0.0), order[r.name]))
        return [r.name for r in records]

    def _label_path(self, name: str) -> Path:
        return self.labels_dir / f"{name}.tif"

    def _pseudo_paths(self, name: str, round_number: int) -> tuple[Path, Path]:
        folder = self.pseudo_dir(round_number)
        return folder / f"{name}.tif", folder / f"{name}{UNCERTAINTY_SUFFIX}.tif"

    def _write_mask(self, path: Path, mask: np.ndarray) -> None:
        """A label image as stored: instance ids (uint16 / uint32) in objects mode, uint8 classes otherwise."""
        if self.objects:
            write_instances(path, mask)
        else:
            write_mask(path, mask)

    def _record_object_count(self, kind: str, name: str, mask: np.ndarray) -> None:
        """Objects mode: remember how many objects the label or the latest pseudo-label of ``name`` holds (for the
        Project table, without reading every mask)."""
        if not self.objects:
            return
        count = int(np.count_nonzero(np.unique(np.asarray(mask))))
        with self._connection(write=True) as con:
            con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (f"{OBJECTS_KEY}{kind}:{name}",
                                                                               str(count)))

    def object_counts(self) -> dict[str, int]:
        """Objects mode: image name -> objects in its current mask (the ground truth of labelled and accepted
        images, else the latest pseudo-label; images without either are left out). {} for a regions project."""
        if not self.objects:
            return {}
        with self._connection() as con:
            rows = con.execute("SELECT key, value FROM meta WHERE key LIKE ?", (f"{OBJECTS_KEY}%",)).fetchall()
        stored: dict[tuple[str, str], int] = {}
        for key, value in rows:
            kind, _, name = key[len(OBJECTS_KEY):].partition(":")
            with contextlib.suppress(ValueError):
                stored[(kind, name)] = int(value)
        counts = {}
        for record in self.records():
            kind = "label" if record.status in GROUND_TRUTH_STATUSES else "pseudo"
            if record.status != ImageStatus.REJECTED and (kind, record.name) in stored:
                counts[record.name] = stored[(kind, record.name)]
        return counts

    def label(self, name: str) -> np.ndarray | None:
        """The ground-truth mask of a LABELLED / ACCEPTED image, else None."""
        if self.record(name).status not in GROUND_TRUTH_STATUSES:
            return None
        path = self._label_path(name)
        return read_image(path) if path.is_file() else None

    def _checked_mask(self, name: str, mask: np.ndarray) -> np.ndarray:
        if self.objects:  # instance ids are kept (a one-value mask is split into objects, warned)
            instances = as_instances(np.asarray(mask), name=name)
            check_mask_matches(self.image(name), instances, name)
            return instances
        mask = normalise_mask(np.asarray(mask), self.num_classes, name=name)
        check_mask_matches(self.image(name), mask, name)
        return mask.astype(np.uint8, copy=False)

    def _store_ground_truth(self, name: str, mask: np.ndarray, status: ImageStatus) -> None:
        """Replace ``labels/<name>.tif`` and the image's status as one change: the new mask is written completely
        first, the previous one is kept aside until the manifest row is committed, and put back when that fails
        (database locked, disk full), so the file and the status never disagree and no earlier mask is lost."""
        path = self._label_path(name)
        fresh = path.with_name(f".{path.name}{NEW_SUFFIX}")
        previous = path.with_name(f".{path.name}{PREVIOUS_SUFFIX}")
        with self._lock:
            self._write_mask(fresh, mask)
            had_previous = path.exists()
            try:
                if had_previous:
                    os.replace(path, previous)
                os.replace(fresh, path)
                self._set_status(name, status)
            except BaseException:
                if had_previous and previous.exists():
                    os.replace(previous, path)
                else:
                    path.unlink(missing_ok=True)
                fresh.unlink(missing_ok=True)
                raise
            previous.unlink(missing_ok=True)
        self._record_object_count("label", name, mask)

    def current_mask(self, name: str) -> tuple[np.ndarray | None, str]:
        """The best mask there is for image ``name`` and where it comes from: the ground truth of labelled and
        accepted images, else the latest pseudo-label (none for rejected images). (mask or None, source)."""
        record = self.record(name)
        if record.status in GROUND_TRUTH_STATUSES:
            mask = self.label(name)
            if mask is None:
                logger.warning("%s is %s but its mask file is missing; skipped", name, record.status.value)
                return None, "missing label file"
            return mask, record.status.value
        if record.status == ImageStatus.REJECTED:
            return None, record.status.value
        pseudo = self.pseudo(name)
        return (pseudo[0], "pseudo-labelled") if pseudo is not None else (None, "no mask yet")

    def save_label(self, name: str, mask: np.ndarray) -> None:
        """Store painted ground truth in ``labels/<name>.tif`` and mark the image LABELLED (one atomic change)."""
        self._store_ground_truth(name, self._checked_mask(name, mask), ImageStatus.LABELLED)
        logger.info("saved label %s", name)

    def accept(self, name: str, mask: np.ndarray) -> None:
        """Store a reviewed (possibly corrected) mask as ground truth and mark the image ACCEPTED.

        The mask file is on disk and the status committed when this returns; when either fails, both stay as
        they were (see ``_store_ground_truth``).
        """
        self._store_ground_truth(name, self._checked_mask(name, mask), ImageStatus.ACCEPTED)
        logger.info("accepted %s", name)

    def reject(self, name: str) -> None:
        """Mark the image REJECTED: its pseudo-label is not used for training (the pixels still are, unsupervised)."""
        self._set_status(name, ImageStatus.REJECTED)
        logger.info("rejected %s", name)

    def undo_review(self, name: str) -> np.ndarray | None:
        """Undo an accept or a reject: the image is back in the review queue (PSEUDO). An accepted mask stops being
        ground truth (its file is removed) and is returned, so that the corrections are not lost."""
        record = self.record(name)
        if record.status not in (ImageStatus.ACCEPTED, ImageStatus.REJECTED):
            raise InputError(f"{name} is {record.status.value}: only an accepted or rejected pseudo-label can be "
                             "sent back to review")
        if not self.pseudo_rounds(name):
            raise InputError(f"{name} has no pseudo-label to go back to")
        mask = None
        with self._lock:
            if record.status == ImageStatus.ACCEPTED:
                mask = self.label(name)
                self._label_path(name).unlink(missing_ok=True)
            self._set_status(name, ImageStatus.PSEUDO)
        logger.info("back to review: %s (was %s)", name, record.status.value)
        return mask

    def save_pseudo(self, name: str, mask: np.ndarray, uncertainty_map: np.ndarray, round_number: int, model_id: str,
                    mean_uncertainty: float) -> None:
        """Write round ``round_number``'s pseudo-label and uncertainty map, then mark the image PSEUDO.

        Images that are LABELLED or ACCEPTED keep their status (the files are still written, for the record), and a
        REJECTED image only becomes PSEUDO again with a pseudo-label from a later round than its rejection. The
        status check and the update are one SQL statement, so a concurrent accept from the GUI always wins.
        """
        mask = normalise_mask(np.asarray(mask), self.num_classes, name=name).astype(np.uint8, copy=False)
        if self.objects:  # the network's three classes -> objects, so review and accept work on ids
            mask = classes_to_instances(mask)
        uncertainty_map = np.asarray(uncertainty_map, dtype=np.float32)
        if uncertainty_map.shape != mask.shape:
            raise InputError(f"pseudo-label of {name!r}: uncertainty map shape {uncertainty_map.shape} does not "
                             f"match mask shape {mask.shape}")
        record = self.record(name)  # InputError for unknown names before anything is written
        mask_path, uncertainty_path = self._pseudo_paths(record.name, round_number)
        self._write_mask(mask_path, mask)
        write_tiff_atomic(uncertainty_path, uncertainty_map)
        self._record_object_count("pseudo", record.name, mask)
        mean = float(mean_uncertainty)
        with self._connection(write=True) as con:
            cur = con.execute(
                "UPDATE images SET status = ?, round = ?, model_id = ?, uncertainty = ?, updated_at = ?, "
                "updated_by = ? WHERE name = ? AND (status IN (?, ?) OR (status = ? AND round < ?))",
                (ImageStatus.PSEUDO.value, int(round_number), model_id, mean if math.isfinite(mean) else None, now(),
                 user(), name, ImageStatus.UNLABELLED.value, ImageStatus.PSEUDO.value, ImageStatus.REJECTED.value,
                 int(round_number)))
        if cur.rowcount == 0:
            logger.debug("pseudo-label of %s (round %d) written; status kept", name, round_number)

    def pseudo_rounds(self, name: str) -> list[int]:
        """Rounds that have a pseudo-label file for ``name``, ascending."""
        rounds = []
        for folder in (self.folder / PSEUDO_DIR).glob("round_*"):
            suffix = folder.name[len("round_"):]
            if suffix.isdigit() and (folder / f"{name}.tif").is_file():
                rounds.append(int(suffix))
        return sorted(rounds)

    def pseudo(self, name: str, round_number: int | None = None) -> tuple[np.ndarray, np.ndarray | None] | None:
        """(mask, uncertainty) of round ``round_number`` (default: the latest round that has one), or None.

        Used by the GUI's Revert to go back to the teacher's proposal.
        """
        self.record(name)
        if round_number is None:
            rounds = self.pseudo_rounds(name)
            if not rounds:
                return None
            round_number = rounds[-1]
        mask_path, uncertainty_path = self._pseudo_paths(name, round_number)
        if not mask_path.is_file():
            return None
        uncertainty = read_image(uncertainty_path) if uncertainty_path.is_file() else None
        return read_image(mask_path), uncertainty
