"""Fault injection shared by tests/test_faults.py (a few kills, asserted) and bench_reliability.py (many, counted):
kill -9 a process that accepts masks in a loop, or one that trains, and check what is left on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import random
import signal
import subprocess
import sys
import time

import numpy as np

from napari_diffseg.core.method.checkpoint import BEST, LAST, load_checkpoint
from napari_diffseg.core.prediction.model import SegmentationModel
from napari_diffseg.core.project.store import ImageStatus, Project

ACCEPT_LOOP = """
import sys
import numpy as np
from napari_diffseg.core.project.store import Project
project = Project.open(sys.argv[1])
masks = [np.load(sys.argv[2]), np.load(sys.argv[3])]
names = project.names()
i = 0
while True:
    name = names[i % len(names)]
    project.accept(name, masks[i % 2])
    print(f"{name} {i % 2}", flush=True)  # this accept returned: it must survive any later kill
    i += 1
"""


@dataclass
class AcceptKills:
    """What ``kill_during_accepts`` saw: kills, accepts confirmed before them, and what was wrong afterwards."""

    kills: int = 0
    confirmed_accepts: int = 0
    lost_accepts: int = 0  # an accept that returned before the kill is not ground truth after reopening
    torn_masks: int = 0  # an accepted image whose mask is missing or neither of the masks written
    leftover_files: int = 0  # temporary files left in labels/ after reopening


def kill_during_accepts(folder: Path, masks: list[np.ndarray], kills: int, seed: int = 0,
                        max_delay: float = 0.3) -> AcceptKills:
    """Kill (-9) a child that accepts ``masks`` (two) in turn for every image of the project at ``folder``, at a
    random moment after its first accept, ``kills`` times; reopen the project after each kill and count damage."""
    work = Path(folder).parent
    mask_files = []
    for index, mask in enumerate(masks):
        mask_files.append(work / f"_kill_mask{index}.npy")
        np.save(mask_files[-1], mask)
    rng = random.Random(seed)
    report = AcceptKills()
    log = work / "_kill_accepts.txt"
    for _ in range(kills):
        with open(log, "w") as out:
            child = subprocess.Popen([sys.executable, "-c", ACCEPT_LOOP, str(folder), *map(str, mask_files)],
                                     stdout=out)
            deadline = time.monotonic() + 30
            while not log.read_text().strip() and time.monotonic() < deadline:  # it is accepting
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, max_delay))
            child.send_signal(signal.SIGKILL)
            child.wait()
        report.kills += 1
        confirmed = {}
        for line in log.read_text().splitlines():
            if line.count(" ") == 1:  # the last line may be cut by the kill
                name, which = line.split()
                confirmed[name] = int(which)
                report.confirmed_accepts += 1
        reopened = Project.open(folder)  # finishes an interrupted replacement, removes leftovers
        for record in reopened.records():
            if record.status == ImageStatus.ACCEPTED:
                label = reopened.label(record.name)
                if label is None or not any(np.array_equal(label, mask) for mask in masks):
                    report.torn_masks += 1
        report.lost_accepts += sum(reopened.record(name).status != ImageStatus.ACCEPTED for name in confirmed)
        report.leftover_files += len([p for p in reopened.labels_dir.iterdir() if p.name.startswith(".")])
    return report


@dataclass
class TrainingKills:
    """What ``kill_during_training`` saw: kills, and model folders left broken (a best.pt or last.pt that does
    not load)."""

    kills: int = 0
    broken_models: int = 0
    models_left: int = 0  # kills after which a loadable best.pt was there (written when a run ends)
    checkpoints_left: int = 0  # kills after which a loadable last.pt was there (the next run resumed it)


def kill_during_training(command: list[str], out: Path, kills: int, seed: int = 1,
                         delay: tuple[float, float] = (4.0, 8.0)) -> TrainingKills:
    """Run ``command`` (a ``diffseg train ... --out out``), with ``--resume`` once a last.pt exists, and kill it
    (-9) after a random delay, ``kills`` times; after each kill the folder must hold a loadable model or none."""
    rng = random.Random(seed)
    report = TrainingKills()
    for _ in range(kills):
        child = subprocess.Popen(command + (["--resume"] if (out / LAST).is_file() else []),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(*delay))  # python and torch start, then training (a checkpoint every 30 s)
        child.send_signal(signal.SIGKILL)
        child.wait()
        report.kills += 1
        try:
            if (out / BEST).exists():
                SegmentationModel.load(out)
                report.models_left += 1
            if (out / LAST).exists():
                load_checkpoint(out / LAST)
                report.checkpoints_left += 1
        except Exception:  # noqa: BLE001 (any failure to load is the damage counted here)
            report.broken_models += 1
    return report
