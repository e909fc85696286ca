"""A run that learns nothing leaves its model folder as it was.

A new run in a model folder replaces its ``last.pt`` (also when it is stopped or ends at once) and drops the
previous run's ``losses.csv`` and ``pseudo_labels/`` as it starts; ``best.pt`` and the card are only replaced by a run
that trained. When the run then ends before its first step (:class:`UntrainedRunError`: the budget was too small),
:func:`restored_if_untrained` puts those files back, so the failed command has changed nothing there. The previous
files wait in a hidden folder for the length of the run, as hard links (a copy where the file system has none); a
run killed with -9 leaves that folder behind, and the next run clears it.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import os
from pathlib import Path
import shutil

from .checkpoint import LAST
from .ensemble import MEMBERS_DIR, STATE_FILE
from ..errors import UntrainedRunError
from .outputs import PSEUDO_LABEL_DIR
from .resume import LOSSES_FILE

KEPT_DIR = ".before-this-run"
# what a new run replaces or removes before it has learned (a run of layout "both" also its members' folders and
# the record of which finished: core/method/ensemble.py)
RUN_FILES = (LAST, LOSSES_FILE, PSEUDO_LABEL_DIR, MEMBERS_DIR, STATE_FILE)


@contextlib.contextmanager
def restored_if_untrained(folder: Path, names: tuple[str, ...] = RUN_FILES) -> Iterator[None]:
    """Keep ``names`` of ``folder`` aside while the block runs; put them back when it raises UntrainedRunError."""
    folder = Path(folder)
    kept = folder / KEPT_DIR
    shutil.rmtree(kept, ignore_errors=True)
    present = [name for name in names if (folder / name).exists()]
    for name in present:
        kept.mkdir(exist_ok=True)
        source = folder / name
        if source.is_dir():
            shutil.copytree(source, kept / name, copy_function=_link_or_copy)
        else:
            _link_or_copy(source, kept / name)
    try:
        yield
    except UntrainedRunError:
        for name in names:
            target = folder / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            if name in present:
                os.replace(kept / name, target)
        raise
    finally:
        shutil.rmtree(kept, ignore_errors=True)


def _link_or_copy(source: Path, target: Path) -> Path:
    """A hard link (the run replaces files atomically, so the link keeps the old content), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return Path(target)
