"""Layout "both": a 2D network on slices of the volumes and a 3D network, trained one after the other inside the
one budget (``SHARE_2D`` of it to the 2D network), then joined into one model whose probabilities are the mean of
theirs (core/prediction/model.EnsembleModel), as nnU-Net ensembles its 2d and 3d_fullres configurations.

Each member is a complete run of ``training.train`` (the whole method: teacher, student, rounds) in
``members/<layout>/`` of the model folder, a model folder of its own (predict with it, export it). The model folder
itself holds, once both have trained (each member without the pass over the unlabelled images that ends a run:
the joined model makes that one): ``best.pt`` (both members: ``checkpoint.ModelCheckpoint.members``), the card
(both plans and the fit of the joined model), ``last.pt`` (a copy of the member's that trained last, so that the
folder reads as resumable and a later round under layout 3d continues the 3D network), ``ensemble.json`` (which
members have finished: resume goes on with the first that has not) and the joined model's pseudo-labels. The
members' events pass through with their steps, time and progress counted over the whole budget.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import csv
from dataclasses import replace
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from .checkpoint import BEST, LAST, ModelCheckpoint, RunCheckpoint, read_model_card, write_model_card
from .config import Layout, TrainConfig
from .events import (CheckpointKind, CheckpointSaved, Done, FitReport, PlanChosen, Progress, PseudoLabelsReady,
                     Stage, StageProgress, TrainingEvent, require_a_step)
from .outputs import PSEUDO_LABEL_DIR, FolderSink, PseudoLabelSink
from .resume import LOSSES_FILE, write_loss_rows
from ..data.io import atomic_write
from ..data.metrics import dice as dice_score
from ..errors import InputError, ModelError
from ..prediction.predict import probabilities_to_mask

MEMBERS = (Layout.SLICES, Layout.VOLUME)  # in training order: the cheaper 2D network first
SHARE_2D = 0.5  # of the budget (seconds or steps) to the 2D member; the 3D member gets the rest
MEMBERS_DIR = "members"
STATE_FILE = "ensemble.json"

log = logging.getLogger(__name__)


def member_dir(out_dir: Path, layout: str) -> Path:
    return Path(out_dir) / MEMBERS_DIR / str(layout)


def shares() -> dict[str, float]:
    return {Layout.SLICES.value: SHARE_2D, Layout.VOLUME.value: 1.0 - SHARE_2D}


def member_config(config: TrainConfig, layout: str) -> TrainConfig:
    """The settings of one member: its layout and its share of the budget."""
    share, schedule = shares()[str(layout)], config.schedule
    return config.replace(layout=layout,
                          budget_seconds=None if schedule.budget_seconds is None else schedule.budget_seconds * share,
                          max_steps=None if schedule.max_steps is None else max(1, round(schedule.max_steps * share)))


def check_both(data, config: TrainConfig) -> None:
    """InputError unless layout "both" can train on this data with these settings."""
    if data.spatial_dims != 3:
        raise InputError("layout 'both' (a 2D network on slices and a 3D network, averaged) needs volumes; these are "
                         "2D images: choose 2d or auto")
    if config.schedule.patch_size is not None:
        raise InputError("layout 'both' plans a patch for each of its two networks: leave the patch size to the "
                         "planner, or train one layout (--layout 2d or 3d) with --patch-size")


def _read_state(out_dir: Path) -> dict | None:
    try:
        state = json.loads((Path(out_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("finished"), list) else None


def _write_state(out_dir: Path, finished: list[str]) -> None:
    text = json.dumps({"layout": Layout.BOTH.value, "members": [m.value for m in MEMBERS], "shares": shares(),
                       "finished": finished}, indent=2)
    atomic_write(Path(out_dir) / STATE_FILE, lambda handle: handle.write(text.encode()))


def _copy_last(source: Path, out_dir: Path) -> None:
    """The member's last.pt as the folder's (what marks it resumable, and what a later round under layout 3d reads)."""
    if (source / LAST).is_file():
        with (source / LAST).open("rb") as member_last:  # streamed: a 3D run's last.pt is tens of MB
            atomic_write(Path(out_dir) / LAST, lambda handle: shutil.copyfileobj(member_last, handle))


def _member_warm_start(warm_start: Path | None, layout: str) -> Path | None:
    """Where a member warm-starts from: the same member of an earlier "both" model, or an earlier model (or a
    pretrained teacher) trained in its layout; None otherwise (the member trains from scratch)."""
    if warm_start is None:
        return None
    own = member_dir(warm_start, layout)
    if (own / LAST).is_file():
        return own
    try:
        saved = RunCheckpoint.load(Path(warm_start) / LAST)
    except ModelError:
        return None
    return Path(warm_start) if saved.plan and saved.plan.get("layout") == str(layout) else None


def _spent(folder: Path) -> tuple[int, float]:
    """Steps and budget seconds of a finished member (from its card)."""
    training = read_model_card(folder).get("training", {})
    return int(training.get("steps", 0)), float(training.get("elapsed_seconds", 0.0))


def train_both(train, data, config: TrainConfig, out_dir: Path, resume: bool = False,
               warm_start: Path | None = None, sink: PseudoLabelSink | None = None,
               ranks=None) -> Iterator[TrainingEvent]:
    """``training.train`` for layout "both" (same arguments, same events; see the module); ``train``: the one-network
    run that trains each member (``training.train``, passed in: this module does not import the trainer)."""
    check_both(data, config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    main = ranks is None or ranks.main
    state = _read_state(out_dir) if resume else {"finished": []}
    if state is None:
        raise ModelError(f"{out_dir / STATE_FILE}: nothing to resume for layout 'both' (no record of its members); "
                         "start without resume")
    finished = [str(layout) for layout in state["finished"]]
    if not resume and main:
        shutil.rmtree(out_dir / PSEUDO_LABEL_DIR, ignore_errors=True)
        _write_state(out_dir, finished)
    sink = sink if sink is not None else FolderSink(out_dir / PSEUDO_LABEL_DIR, objects=bool(data.objects))
    budget = config.schedule.budget_seconds
    log.info("layout both: a 2D network on slices for %.0f %% of the budget, then a 3D network for the rest, their "
             "probabilities averaged", 100 * SHARE_2D)
    steps_before, seconds_before, fraction_before = 0, 0.0, 0.0
    for number, layout in enumerate(MEMBERS, start=1):
        folder, share = member_dir(out_dir, layout), shares()[layout.value]
        if layout.value in finished:
            steps, seconds = _spent(folder)
            steps_before, seconds_before, fraction_before = steps_before + steps, seconds_before + seconds, \
                fraction_before + share
            continue
        resumed = resume and (folder / LAST).is_file()
        later = 0.0 if budget is None else budget * (1.0 - fraction_before - share)
        settings = member_config(config, layout)
        events = train(data, settings, folder, resume=resumed,  # the joined model makes the final pseudo-labels
                       warm_start=None if resumed else _member_warm_start(warm_start, layout), sink=sink, ranks=ranks,
                       final_pseudo_labels=False)
        if not resumed:  # each member must learn something: an untrained member would pass for half the model
            events = require_a_step(events, settings.schedule.budget_seconds)
        last_step = 0
        try:
            with contextlib.closing(events):
                for event in events:
                    if isinstance(event, Done):
                        last_step = event.fit.step if event.fit is not None else last_step
                        continue
                    if isinstance(event, Progress):
                        last_step = event.step
                        event = replace(event, step=steps_before + event.step,
                                        fraction=fraction_before + share * event.fraction,
                                        elapsed=seconds_before + event.elapsed, remaining=event.remaining + later)
                    elif isinstance(event, PseudoLabelsReady):
                        event = replace(event, step=steps_before + event.step)
                    elif isinstance(event, PlanChosen):
                        event = PlanChosen(f"member {number} of {len(MEMBERS)} of layout both ({share:.0%} of the "
                                           f"budget): {event.text}", {**event.plan, "member": layout.value})
                    elif isinstance(event, CheckpointSaved) and event.fit is not None:
                        event = replace(event, fit=replace(event.fit, step=steps_before + event.fit.step))
                    elif isinstance(event, CheckpointSaved) and event.kind == CheckpointKind.LAST and main:
                        _copy_last(folder, out_dir)
                    yield event
        finally:
            if main:
                _copy_last(folder, out_dir)  # a stopped member's last.pt too: the folder stays resumable
        if not main:
            continue
        finished.append(layout.value)
        _write_state(out_dir, finished)
        steps, seconds = _spent(folder)
        steps_before, seconds_before, fraction_before = steps_before + (steps or last_step), seconds_before + seconds, \
            fraction_before + share
    if not main:
        return
    yield StageProgress(Stage.SAVING, 0, 1)
    join_losses(out_dir)
    model = join_members(out_dir, data, config, steps_before, seconds_before)
    yield CheckpointSaved(out_dir / BEST, CheckpointKind.BEST, model.fit)
    if data.unlabelled_indices:
        yield from _pseudo_labels(model, data, sink, steps_before)
    yield CheckpointSaved(out_dir / LAST, CheckpointKind.LAST)
    yield Done(out_dir, model.fit)


def join_losses(out_dir: Path) -> None:
    """The folder's losses.csv: the members' step logs one after the other, steps counted on, with a member
    column."""
    rows, offset = [], 0
    for layout in MEMBERS:
        path = member_dir(out_dir, layout) / LOSSES_FILE
        member_rows = list(csv.DictReader(path.open())) if path.is_file() else []
        rows += [{**row, "member": layout.value, "step": int(row["step"]) + offset} for row in member_rows]
        offset += int(member_rows[-1]["step"]) if member_rows else 0
    if rows:
        write_loss_rows(Path(out_dir) / LOSSES_FILE, rows)


def join_members(out_dir: Path, data, config: TrainConfig, steps: int, seconds: float):
    """Write best.pt of both members and the card (with the joined model's fit on the labelled images); returns
    the loaded ``EnsembleModel`` with that fit as ``fit``."""
    from ..device import bf16_supported, select_device
    from ..prediction.model import SegmentationModel

    saved = {layout.value: ModelCheckpoint.load(member_dir(out_dir, layout) / BEST) for layout in MEMBERS}
    volume = saved[Layout.VOLUME.value]
    ModelCheckpoint(volume.network, volume.mask_path, volume.threshold, volume.working_scale, volume.twin, volume.plan,
                    [member.to_payload() for member in saved.values()]).save(out_dir / BEST)
    cards = {layout.value: read_model_card(member_dir(out_dir, layout)) for layout in MEMBERS}
    device = select_device(config.runtime.device)
    model = SegmentationModel.load(out_dir, device=device, bf16=bf16_supported(device))
    fit = measure_fit(model, data, config, steps, seconds)
    plans = {layout: card.get("plan", {}) for layout, card in cards.items()}
    write_model_card(out_dir, {
        **cards[Layout.VOLUME.value],
        "plan": {"layout": Layout.BOTH.value, "members": plans, "shares": shares(),
                 "text": model.describe_plan()},
        "members": {layout: str(Path(MEMBERS_DIR) / layout) for layout in cards},
        "config": config.to_dict(),
        "threshold": model.threshold,
        "selected_twin": fit.kept_twin,
        "metrics": fit.to_dict(),
        "validation_note": "the mean of both members' probabilities at the mean of their thresholds; the Dice under "
                           "metrics.validation is the fit on the labelled (training) images, not a validation",
        "training": {**cards[Layout.VOLUME.value].get("training", {}),  # a run's keys (stage, ...), then the sums
                     "steps": steps, "elapsed_seconds": round(seconds, 3),
                     "overhead_seconds": round(sum(float(card.get("training", {}).get("overhead_seconds", 0.0))
                                                   for card in cards.values()), 3),
                     "members": {layout: card.get("training", {}) for layout, card in cards.items()}},
    })
    model.card = read_model_card(out_dir)
    model.fit = fit
    return model


def measure_fit(model, data, config: TrainConfig, steps: int, seconds: float) -> FitReport:
    """Dice of each member and of the joined model on the labelled images (a report of the fit, as a run's); each
    image is predicted once per member, the joined mask taken from their mean."""
    indices = data.labelled_indices[: config.schedule.max_validation_images]
    truth = np.concatenate([data.labels[i].ravel() for i in indices])
    names = [_name(member) for member in model.members] + [Layout.BOTH.value]
    masks: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for index in indices:
        members, mean = _member_probabilities(model, data.images[index])
        for name, probabilities in zip(names, [*members, mean]):
            masks[name].append(probabilities_to_mask(probabilities, model.threshold if name == Layout.BOTH.value
                                                     else _member(model, name).threshold).ravel())
    dice, foreground = {}, {}
    for name in names:
        predicted = np.concatenate(masks[name])
        dice[name] = dice_score(predicted, truth)
        foreground[name] = float(np.count_nonzero(predicted)) / max(predicted.size, 1)
    return FitReport(Layout.BOTH.value, model.threshold, dice, steps, round(seconds, 1), foreground,
                     float(np.count_nonzero(truth)) / max(truth.size, 1))


def _member_probabilities(model, image01: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Each member's probabilities of a normalised image and their mean (what the joined model predicts)."""
    members = [member.predict_normalised(image01).probabilities for member in model.members]
    return members, np.mean(members, axis=0, dtype=np.float32)


def _member(model, name: str):
    return next(member for member in model.members if _name(member) == name)


def _name(member) -> str:
    return Layout.VOLUME.value if member.slice_axis is None else Layout.SLICES.value


def _pseudo_labels(model, data, sink: PseudoLabelSink, step: int) -> Iterator[StageProgress | PseudoLabelsReady]:
    """The joined model's masks of the unlabelled images, the entropy of its mean probabilities, and an image score:
    the members' disagreement (1 - soft Dice between their probabilities), as the twins' for one network."""
    from ..prediction.predict import disagreement, normalised_entropy

    names, scores = [], {}
    indices = data.unlabelled_indices
    for done, index in enumerate(indices):
        yield StageProgress(Stage.PSEUDO_LABELS, done, len(indices))
        probabilities, mean = _member_probabilities(model, data.images[index])
        score = disagreement(probabilities[0], probabilities[1])
        name = data.names[index]
        sink.write(name, probabilities_to_mask(mean, model.threshold), normalised_entropy(mean), score, step)
        names.append(name)
        scores[name] = score
    yield PseudoLabelsReady(step, sink.directory, names, scores)

