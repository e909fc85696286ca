"""The rows of a project's manifest (core/project/store.py): an image's status in the human-in-the-loop cycle, its
record, a logged loss, and the time and user that stamp each change."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
import getpass
from pathlib import Path


class ImageStatus(str, Enum):
    """Where an image is in the human-in-the-loop cycle."""

    UNLABELLED = "unlabelled"
    LABELLED = "labelled"
    PSEUDO = "pseudo"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


GROUND_TRUTH_STATUSES = (ImageStatus.LABELLED, ImageStatus.ACCEPTED)


@dataclass
class ImageRecord:
    """One row of the manifest. ``round`` is the round in which ``status`` was last set."""

    name: str
    image_path: Path
    status: ImageStatus
    round: int
    model_id: str | None
    uncertainty: float | None
    updated_at: str
    updated_by: str


@dataclass
class LossEntry:
    """One logged loss value; ``time`` is seconds since the epoch."""

    round: int
    stage: str
    step: int
    name: str
    value: float
    time: float


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def user() -> str:
    try:
        return getpass.getuser() or "unknown"
    except Exception:  # getpass raises OSError/KeyError/ImportError when no user name can be found
        return "unknown"
