"""Model folders: checkpoints (last.pt for resuming, best.pt for predicting) and the JSON model card.

A model folder holds ``last.pt`` (RunCheckpoint: teacher, student, optimisers, step and clock, for resume and warm
start), ``best.pt`` (ModelCheckpoint: the mask pathway of the kept twin, with its threshold and working scale),
``model_card.json`` (config, data fingerprints, threshold, metrics, versions) and ``losses.csv``. Files are written
atomically.
Loading checks the format tag so corrupt or foreign files give a one-line ``ModelError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
import json
from pathlib import Path
import warnings

import torch

from ..errors import InputError, ModelError
from ..data.io import BEST, LAST, atomic_write  # noqa: F401 (BEST and LAST: the model folder's file names)

FORMAT_TAG = "napari-diffseg"
FORMAT_VERSION = 1
CARD = "model_card.json"


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write a checkpoint atomically; a failed write (torch reports a full disk as a RuntimeError) is an
    InputError that says so, and the earlier file stays."""
    payload = {"format": FORMAT_TAG, "format_version": FORMAT_VERSION, **payload}
    try:
        atomic_write(path, lambda handle: torch.save(payload, handle))
    except RuntimeError as error:
        message = " ".join(str(error).split())[:200]
        raise InputError(f"cannot write {path} ({message}); is the disk full? Free some space and resume") from error


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no checkpoint here (train a model first, or check the model folder)")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of a garbage file before failing
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt files
        raise ModelError(f"{path}: not a readable checkpoint ({type(error).__name__}); the file is corrupt or truncated") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_TAG:
        raise ModelError(f"{path}: not a napari-diffseg checkpoint")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ModelError(f"{path}: written by a newer napari-diffseg (format {payload['format_version']}); upgrade")
    return payload


def _as_payload(checkpoint) -> dict:
    """The fields of a checkpoint dataclass, by name, without the ones left None (shallow: tensors are not copied)."""
    return {f.name: getattr(checkpoint, f.name) for f in fields(checkpoint) if getattr(checkpoint, f.name) is not None}


def _from_json(value):
    """Fields that earlier versions stored as JSON text inside the checkpoint."""
    return json.loads(value) if isinstance(value, str) else value


@dataclass
class ModelCheckpoint:
    """best.pt: what predicting needs, the kept twin's mask pathway with its architecture (teacher.NetworkConfig as a
    dict), threshold and working scale. A model of layout "both" (core/method/ensemble.py) also lists its
    ``members``, each a ModelCheckpoint's fields as a dict; its own fields are those of its 3D member, so that a
    reader that does not know members still loads a working model."""

    network: dict
    mask_path: dict
    threshold: float
    working_scale: float = 1.0
    twin: str = "teacher"
    plan: dict | None = None  # core/method/planner.Plan as a dict (None: written before plans, a 2D/3D network)
    members: list | None = None  # layout "both": the members' fields (the 2D network on slices, the 3D network)

    def save(self, path: Path) -> None:
        save_checkpoint(path, _as_payload(self))

    def to_payload(self) -> dict:
        """The fields by name (what ``members`` holds of each member)."""
        return _as_payload(self)

    @classmethod
    def from_payload(cls, payload: dict) -> "ModelCheckpoint":
        """From stored fields; KeyError, TypeError or ValueError when they are not a checkpoint's."""
        members = payload.get("members")
        return cls(dict(payload["network"]), dict(payload["mask_path"]), float(payload["threshold"]),
                   float(payload.get("working_scale", 1.0)), str(payload.get("twin", "teacher")),
                   dict(payload["plan"]) if payload.get("plan") is not None else None,
                   None if members is None else [cls.from_payload(dict(m)).to_payload() for m in members])

    @classmethod
    def load(cls, path: Path) -> "ModelCheckpoint":
        payload = load_checkpoint(path)
        try:
            return cls.from_payload(payload)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ModelError(f"{path}: checkpoint content does not fit napari-diffseg ({type(error).__name__})") \
                from None


@dataclass
class RunCheckpoint:
    """last.pt: what resuming a run, warm-starting the next round or continuing a pretraining needs. A run writes
    all of it; a pretraining (``pretrain_only``) the teacher, its optimiser, the step and ``pretrain_seconds``."""

    config: dict  # TrainConfig.to_dict()
    network: dict  # teacher.NetworkConfig as a dict
    teacher: dict
    teacher_optimiser: dict
    step: int
    working_scale: float | None = None
    stage: str | None = None
    stage_start: float = 0.0
    student_pending_copy: bool = False
    elapsed: float = 0.0
    overhead: float = 0.0
    data: list = field(default_factory=list)  # fingerprints of the images and labels trained on
    rng: dict | None = None  # "torch" and "generator": torch generator states; "numpy": the patch sampler's
    student: dict | None = None
    student_optimiser: dict | None = None
    pretrain_only: bool = False  # written by training.pretrain: stage 1's teacher alone, before any label
    pretrain_seconds: float = 0.0
    plan: dict | None = None  # core/method/planner.Plan as a dict: a resumed or warm-started run keeps its layout

    def save(self, path: Path) -> None:
        save_checkpoint(path, _as_payload(self))

    @classmethod
    def load(cls, path: Path) -> "RunCheckpoint":
        payload = load_checkpoint(path)
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in payload.items() if key in known}
        values["data"] = _from_json(values.get("data", []))
        if isinstance(values.get("rng"), dict):
            values["rng"] = {**values["rng"], "numpy": _from_json(values["rng"].get("numpy"))}
        try:
            return cls(**values)
        except TypeError as error:  # a required part is missing
            raise ModelError(f"{path}: checkpoint content does not fit napari-diffseg ({error})") from None


def write_model_card(model_dir: Path, card: dict) -> None:
    text = json.dumps(card, indent=2, sort_keys=True, default=str)
    atomic_write(Path(model_dir) / CARD, lambda handle: handle.write(text.encode()))


CARD_SECTIONS = {"config": dict, "network": dict, "training": dict, "metrics": dict, "environment": dict,
                 "data": list}  # the card's nested parts and their JSON types


def read_model_card(model_dir: Path) -> dict:
    """The model card as a dict ({} when there is none); ModelError when it is unreadable or of the wrong shape."""
    path = Path(model_dir) / CARD
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: unreadable model card ({error})") from None
    if not isinstance(card, dict):
        raise ModelError(f"{path}: the model card is a JSON {type(card).__name__}, not an object (edited by hand?)")
    for key, kind in CARD_SECTIONS.items():
        if key in card and not isinstance(card[key], kind):
            raise ModelError(f"{path}: the model card's {key!r} is a JSON {type(card[key]).__name__} "
                             "(edited by hand?); retrain, or restore the file")
    return card
