"""Model folders: checkpoints (last.pt for resuming, best.pt for predicting) and the JSON model card.

A model folder holds ``last.pt`` (teacher, student, optimisers, step and clock, for resume and warm start),
``best.pt`` (the mask pathway of the kept twin, with its threshold and working scale), ``model_card.json``
(config, data fingerprints, threshold, metrics, versions) and ``losses.csv``. Files are written atomically.
Loading checks the format tag so corrupt or foreign files give a one-line ``ModelError``.
"""

from __future__ import annotations

import json
from pathlib import Path
import warnings

import torch

from .errors import InputError, ModelError
from .io import BEST, LAST, atomic_write  # noqa: F401 (BEST and LAST: the model folder's file names)

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
