"""Human-in-the-loop rounds on a project: training data from the project store, one training round with warm start
and pseudo-label bookkeeping, and the review queue.

``train_round`` wraps :func:`core.method.training.train` for a :class:`~napari_diffseg.core.project.store.Project`:

- it trains into ``checkpoints/round_<k>`` of the current round ``k``;
- it warm-starts from the most recent earlier round whose folder holds a ``last.pt`` made with the same network
  settings (a changed width / depth / image kind means a cold start, announced in :class:`RoundStarted`);
- each pseudo-label and uncertainty map goes straight into the project (``Project.save_pseudo``, through a
  ``ProjectSink``) as the pass makes it, so a consumer that reacts to ``PseudoLabelsReady`` finds the project
  already updated;
- it logs losses to the project in batches (every ``LOSS_LOG_EVERY`` steps, and whatever is left when the run ends
  or is cancelled).

Which images train how: LABELLED and ACCEPTED images are the labelled set (their masks from ``labels/``); every
other image, REJECTED ones included, is unlabelled data. This follows ``Project.reject``: a rejected pseudo-label
is not ground truth, but the pixels still teach the unsupervised parts, and the image gets a fresh pseudo-label
in a later round (``Project.save_pseudo`` lets a later round's label bring it back to the review queue).
Excluding rejected images altogether would drop them from review for good.

Like ``train``, ``train_round`` is a generator: close it to cancel (the wrapped run still leaves ``last.pt``).
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
from dataclasses import asdict
import logging
from pathlib import Path
import shutil

import numpy as np

from ..method import rollback
from ..method.checkpoint import LAST, read_model_card
from ..data.training_set import TrainingData, common_spacing, training_data_from_arrays
from ..errors import InputError, ModelError
from .store import CHECKPOINTS_DIR, ImageStatus, Project
from ..method.teacher import NetworkConfig
from ..method.events import Progress, PseudoLabelsReady, RoundStarted, TrainingEvent  # noqa: F401 (re-exported)
from ..method.events import require_a_step
from ..method.training import TrainConfig, pretrain, pretraining_info, train

log = logging.getLogger(__name__)

LOSS_LOG_EVERY = 20
PRETRAIN_DIR = "pretrain"  # under checkpoints/: stage 1 run in the background while the user labels
TRAIN_CONFIG_KEY = "train"


def project_training_data(project: Project, num_classes: int | None = None) -> TrainingData:
    """All images of the project; LABELLED + ACCEPTED ones with their ground-truth masks, the rest unlabelled.

    InputError when the project has no image, or no image with ground truth.
    """
    records = project.records()
    if not records:
        raise InputError("the project has no images: add images first")
    classes = project.num_classes if num_classes is None else int(num_classes)
    images, labels, names = [], {}, []
    for record in records:
        images.append(project.image(record.name))
        names.append(record.name)
        if record.status in (ImageStatus.LABELLED, ImageStatus.ACCEPTED):
            mask = project.label(record.name)
            if mask is None:
                raise InputError(f"{record.name} is marked {record.status.value} but its mask file is missing from "
                                 f"{project.labels_dir}; label it again")
            labels[len(images) - 1] = mask
    if not labels:
        raise InputError("no labelled image: label at least one image (Annotate panel) before training")
    objects = project.objects
    if objects:  # instance labels -> the three-class target (core/objects)
        from ..objects.files import objects_training_data_from_arrays

        data = objects_training_data_from_arrays(images, labels, names, int(objects.get("boundary_width", 1)))
    else:
        data = training_data_from_arrays(images, labels, names, classes)
    data.spacing = common_spacing([project.spacing(name) for name in names], data.spatial_dims)
    return data


def previous_checkpoint_dir(project: Project, round_number: int | None = None) -> Path | None:
    """The most recent round before ``round_number`` (default: the current one) whose checkpoint folder has
    ``last.pt``."""
    current = project.current_round if round_number is None else int(round_number)
    for earlier in range(current - 1, 0, -1):
        folder = project.checkpoints_dir(earlier, create=False)
        if (folder / LAST).is_file():
            return folder
    return None


def pretrain_dir(project: Project) -> Path:
    """``checkpoints/pretrain``: the teacher pretrained (stage 1, no labels) while the user labels."""
    return project.folder / CHECKPOINTS_DIR / PRETRAIN_DIR


def pretrain_project(project: Project, config: TrainConfig) -> Iterator[TrainingEvent]:
    """Stage 1 on every image of the project, no label needed, for ``config.schedule.budget_seconds`` or until closed,
    continuing an earlier pretraining; round 1 then co-trains from this teacher (see ``train_round``)."""
    records = project.records()
    if not records:
        raise InputError("the project has no images: add images first")
    data = training_data_from_arrays([project.image(r.name) for r in records], {}, [r.name for r in records],
                                     project.num_classes, require_labels=False)
    folder = pretrain_dir(project)
    with project.training_lock("pretraining the teacher"):
        folder.mkdir(parents=True, exist_ok=True)
        yield from pretrain(data, config, folder)


def _network_settings(data: TrainingData, config: TrainConfig, plan: dict | None = None) -> dict:
    """The network a round would train, to compare with the one it would start from: volumes train a 2D network
    on slices in the "2d" layout; under layout "auto" a round continues in the layout of the model it starts from
    (its ``plan``), as ``training.train`` does. A model of layout "both" stores its 3D member's network."""
    layout = str(config.network.layout)
    if layout in ("auto", "both") and plan and plan.get("layout") in ("2d", "3d"):
        layout = plan["layout"]  # ("both": a pretrained teacher of its 2D member, core/method/ensemble.py)
    dims = 2 if data.spatial_dims == 3 and layout == "2d" else data.spatial_dims
    return asdict(NetworkConfig(spatial_dims=dims, image_channels=data.channels,
                                num_classes=config.network.num_classes, base_channels=config.network.base_channels,
                                depth=config.network.depth))


def _warm_start_dir(project: Project, data: TrainingData, config: TrainConfig, round_: int) -> tuple[Path | None, str]:
    previous = previous_checkpoint_dir(project, round_)
    if previous is None:
        pretrained = pretraining_info(pretrain_dir(project))
        if pretrained is None:
            return None, "no earlier round to start from: training from scratch"
        if pretrained["network"] != _network_settings(data, config, pretrained.get("plan")):
            return None, "the pretrained teacher has other network settings: training from scratch"
        return pretrain_dir(project), (f"co-training from the teacher pretrained without labels for "
                                       f"{pretrained['seconds']:.0f} s ({pretrained['steps']} steps)")
    try:
        card = read_model_card(previous)
    except ModelError as error:
        return None, f"cannot read the model card of {previous.name} ({error}); training from scratch"
    if card.get("network") != _network_settings(data, config, card.get("plan")):
        return None, f"{previous.name} was trained with other network settings: training from scratch"
    return previous, f"warm start from {previous.name}"


class ProjectSink:
    """Pseudo-labels straight into the project store (pseudo/round_<k>/ and the manifest), image by image."""

    def __init__(self, project: Project, round_: int):
        self.project, self.round = project, round_
        self.directory = project.pseudo_dir(round_)

    def write(self, name: str, mask: np.ndarray, uncertainty: np.ndarray, score: float, step: int) -> None:
        self.project.save_pseudo(name, mask, uncertainty, self.round, f"round_{self.round}/step_{step}", score)


def train_round(project: Project, config: TrainConfig, warm_start: bool = True,
                resume: bool = False, next_round: bool = False) -> Iterator[TrainingEvent]:
    """Train the project's current round, yielding :class:`RoundStarted` and then the events of ``train``.

    ``warm_start``: start from the last earlier round's ``last.pt`` when there is a compatible one.
    ``resume``: continue a stopped run of this round from its ``last.pt`` (optimisers, step and clock included);
    without one, the round starts normally.
    ``next_round``: start the next round first (napari's Next round), once the training lock is held; when the
    run fails or is stopped before its first step, the round is taken back, so a refused or failed run leaves the
    project as it was.
    """
    if config.network.num_classes != project.num_classes:
        raise InputError(f"the training settings have {config.network.num_classes} classes but the project has "
                         f"{project.num_classes}")
    round_ = project.current_round + (1 if next_round else 0)
    with project.training_lock(f"training round {round_}"):
        if not next_round:
            yield from _train_round(project, config, warm_start, resume)
            return
        yield from _train_next_round(project, config, warm_start)


def _train_next_round(project: Project, config: TrainConfig, warm_start: bool) -> Iterator[TrainingEvent]:
    """``_train_round`` of a new round, taken back (round number and its new folders) when no step was made."""
    new_round = project.current_round + 1
    new_folders = [folder for folder in (project.checkpoints_dir(new_round, create=False),
                                         project.pseudo_dir(new_round)) if not folder.exists()]
    project.next_round()
    stepped = False
    events = _train_round(project, config, warm_start, resume=False)
    try:
        for event in events:
            stepped = stepped or isinstance(event, Progress)
            yield event
    except BaseException:
        events.close()  # the run's own clean-up first (last.pt, losses)
        if not stepped:
            project.undo_next_round(new_round)
            for folder in new_folders:
                shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        events.close()


def _train_round(project: Project, config: TrainConfig, warm_start: bool, resume: bool) -> Iterator[TrainingEvent]:
    round_ = project.current_round
    out_dir = project.checkpoints_dir(round_)
    data = project_training_data(project, config.network.num_classes)
    resumed = bool(resume and (out_dir / LAST).is_file())
    if not resumed and (out_dir / LAST).exists():
        log.warning("round %d already has a model in %s; it will be replaced (Next round starts round %d from it "
                    "instead, resume continues it)", round_, out_dir, round_ + 1)
    warm, note = (None, "resuming the stopped run of this round") if resumed else (None, "training from scratch")
    if warm_start and not resumed:
        warm, note = _warm_start_dir(project, data, config, round_)
    log.info("round %d: %s (%d labelled, %d unlabelled)", round_, note, len(data.labelled_indices),
             len(data.unlabelled_indices))
    yield RoundStarted(round_, out_dir, warm, resumed, len(data.labelled_indices), len(data.unlabelled_indices), note)

    # a retrained round whose run learns nothing gets its folder back as it was (core.method.rollback)
    kept = rollback.restored_if_untrained(out_dir) if not resumed else contextlib.nullcontext()
    events = train(data, config, out_dir, resume=resumed, warm_start=warm, sink=ProjectSink(project, round_))
    if not resumed:
        events = require_a_step(events, config.schedule.budget_seconds)
    with kept:
        yield from _logged(events, project, round_, config)


def _logged(events: Iterator[TrainingEvent], project: Project, round_: int,
            config: TrainConfig) -> Iterator[TrainingEvent]:
    """The run's events, its losses logged to the project in batches and its settings stored after its first
    step (a run that fails before it leaves the settings as they were)."""
    pending: list[Progress] = []

    def flush() -> None:
        for progress in pending:
            project.log_losses(round_, progress.stage, progress.step, progress.losses)
        pending.clear()

    settings_stored = False
    try:
        for event in events:
            if isinstance(event, Progress):
                if not settings_stored:  # a run that fails before its first step leaves the settings as they were
                    project.update_config({TRAIN_CONFIG_KEY: config.to_dict()})
                    settings_stored = True
                pending.append(event)
                if len(pending) >= LOSS_LOG_EVERY:
                    flush()
            yield event
    finally:
        events.close()  # cancels the run (it writes last.pt) before the last losses are logged
        flush()
