"""The settings of one training run (TrainConfig: method, network, schedule and runtime sections, one validate),
in a module without torch: the GUI reads and edits them on its thread, and importing torch there froze the viewer
for seconds."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from enum import StrEnum
import logging
import re

from ..errors import InputError
from ..data.io import one_line

logger = logging.getLogger(__name__)
_DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

@dataclass(frozen=True)
class Bounds:
    """The allowed range of a numeric setting (``maximum`` None: no upper bound). The CLI's option types and the
    Train panel's spin boxes take their ranges from ``LIMITS`` (tests/test_config.py checks all three agree)."""

    minimum: float
    maximum: float | None = None

    def contains(self, value: float) -> bool:
        return value >= self.minimum and (self.maximum is None or value <= self.maximum)

    def describe(self) -> str:
        return f">= {self.minimum:g}" if self.maximum is None else f"in [{self.minimum:g}, {self.maximum:g}]"


LIMITS: dict[str, Bounds] = {
    "max_steps": Bounds(1),
    "rounds": Bounds(0, 10),
    "rounds_every": Bounds(1),
    "num_classes": Bounds(2, 255),  # masks are stored as uint8
    "base_channels": Bounds(4, 128),
    "student_channels": Bounds(4, 128),
    "depth": Bounds(1, 6),
    "batch_size": Bounds(1),
    "patch_edge": Bounds(8, 1024),  # each axis of patch_size
    "lr_pretrain": Bounds(1e-12, 1.0),
    "lr_cotrain": Bounds(1e-12, 1.0),
    "lambda_d": Bounds(0.0),
    "seed": Bounds(0, 2**31 - 1),
    "threads": Bounds(1),
    "checkpoint_every_seconds": Bounds(0.0),
    "first_pseudo_labels_after_seconds": Bounds(0.0),
    "pseudo_labels_every_seconds": Bounds(0.0),
    "uncertainty_draws": Bounds(0, 64),
    "max_validation_images": Bounds(1),
}
LIMIT_NAMES = {"base_channels": "the network width", "patch_edge": "each patch edge", "num_classes": "num_classes"}

class LrSchedule(StrEnum):
    """How the learning rate moves over the budget."""

    POLY = "poly"  # nnU-Net's poly schedule: anneals to zero at the end of the known budget
    CONSTANT = "constant"


class Twin(StrEnum):
    """The two networks of co-training: the diffusion teacher (mask + image pathway) and its student."""

    TEACHER = "teacher"
    STUDENT = "student"


class WarmupTwins(StrEnum):
    """Who learns the labels in the supervised warm-up."""

    BOTH = "both"  # both twins, independently initialised (the paper's twins)
    COPY = "copy"  # the teacher alone; the student then starts as its copy


class Targets(StrEnum):
    """Where the unlabelled term of co-training takes its targets from."""

    AVERAGE = "average"  # each twin's running weight average at t = 0 on the weak view, confident pixels only
    NOISED = "noised"  # the other twin's argmax on this step's noised forward (the paper's cross pseudo supervision)
    OFFLINE = "offline"  # the teacher's confident maps of whole pool images, two passes (core/method/offline.py)


class Student(StrEnum):
    """What the twin student is."""

    NETWORK = "network"  # a second network with its own optimiser (the paper's twin)
    AVERAGE = "average"  # the teacher's running weight average (Mean Teacher): no second network to train


class TargetsFrom(StrEnum):
    """Whose running average makes a twin's unlabelled targets (targets "average")."""

    OTHER = "other"  # the other twin's (cross pseudo supervision)
    MEAN = "mean"  # the mean of both twins' probabilities (one ensemble target for both)


class BudgetClock(StrEnum):
    """What the time budget counts."""

    WALL = "wall"  # seconds of optimisation on the clock (the product: what the user waits)
    CPU = "cpu"  # CPU seconds of this process (benchmarks: a budget that machine load cannot move)


class Layout(StrEnum):
    """How volumes are trained and predicted (core/method/planner.py decides under "auto")."""

    AUTO = "auto"  # the planner decides from the spacing, the shapes and the device
    SLICES = "2d"  # a 2D network on slices of the volumes (and on 2D images)
    VOLUME = "3d"  # a 3D network on patches of the volumes
    BOTH = "both"  # a 2D and a 3D network, one after the other, their probabilities averaged (core/method/ensemble.py)


class Loss(StrEnum):
    """The mask loss."""

    DICE = "dice"  # soft Dice (the paper's)
    DICE_CE = "dice_ce"  # soft Dice + cross-entropy


@dataclass
class MethodSettings:
    """What is trained: the semi-supervised method (shared/METHOD.md) and the mask it keeps."""

    labels_only: bool = False
    pretrain_fraction: float = 0.0
    rounds: int = 1
    rounds_every: int = 4
    chained_rounds: bool = False
    lambda_d: float = 1.0
    round_t_fraction: float = 1.0  # the rounds' reconstructions noise at t < this fraction of T (1: any t)
    supervised_warmup: float = 0.5
    unlabelled_ramp: float = 0.5
    warmup_twins: WarmupTwins = WarmupTwins.COPY
    student: Student = Student.NETWORK
    loss: Loss = Loss.DICE
    cutmix: bool = False  # unlabelled patches CutMixed in pairs (teacher.swap_in_pairs)
    copy_paste: bool = False  # labelled content pasted into unlabelled patches (BCP), instead of CutMix
    appearance: float = 0.0  # share of labelled patches given an unlabelled patch's low-frequency appearance
    # (core/method/appearance.py: Fourier appearance transfer); 0: off
    appearance_band: float = 0.05  # the low frequencies it transfers, as a fraction of the patch (0: the mean alone)
    targets: Targets = Targets.NOISED
    targets_from: TargetsFrom = TargetsFrom.OTHER
    average_decay: float = 0.99  # of the running weight averages that make the targets (targets "average")
    confidence: float = 0.9  # unlabelled pixels whose target probability is lower are left out (0: none)
    strong_augment: float = 1.5  # strength of the strong view the unlabelled loss is taken on (0: the weak view)
    unlabelled_loss: Loss = Loss.DICE_CE  # the loss on confident pseudo-labelled pixels (targets "average")
    keep_twin: Twin = Twin.TEACHER
    threshold: float = 0.5
    uncertainty_draws: int = 0

    def describe(self) -> str:
        """What is trained, in a few words (the CLI's log and the model card)."""
        return "labels-only baseline" if self.labels_only else "diffusion teacher + co-trained student"


@dataclass
class NetworkSettings:
    """The U-Nets: classes, width and depth (the full architecture is teacher.NetworkConfig, built from these)."""

    num_classes: int = 2
    base_channels: int = 16
    student_channels: int | None = None  # the student's width (None: the teacher's); a narrower student is cheaper
    depth: int = 3
    layout: Layout = Layout.AUTO  # 2d slices or 3d patches for volumes (auto: core/method/planner.py decides)


@dataclass
class ScheduleSettings:
    """How long and on what: the budget, patches and batches, learning rates, augmentation, and how often the
    run validates, writes pseudo-labels and checkpoints."""

    budget_seconds: float | None = 300.0
    max_steps: int | None = None
    patch_size: tuple[int, ...] | None = None
    batch_size: int | None = None
    lr_pretrain: float = 1e-3
    lr_cotrain: float = 3e-3
    lr_schedule: LrSchedule = LrSchedule.POLY
    budget_clock: BudgetClock = BudgetClock.WALL
    working_scale: float | None = None
    augment: float = 1.0
    checkpoint_every_seconds: float = 30.0
    first_pseudo_labels_after_seconds: float = 10.0
    pseudo_labels_every_seconds: float = 60.0
    max_validation_images: int = 8


@dataclass
class RuntimeSettings:
    """Where and how it runs: seed, device, threads, bf16 autocast (None: decided from the machine)."""

    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    bf16: bool | None = None


# The method as shared/METHOD.md describes it (the paper's stage 1 inside the budget, twins from their own
# initialisation, the unlabelled weight ramped linearly over all of co-training, K = 3 pseudo-label rounds every
# step, cross pseudo supervision on the noised forwards, soft Dice): ``--preset paper``, to compare the product's
# departures with the original. The product's budget, patches, scale, augmentation and schedule stay.
PRESETS: dict[str, dict] = {
    "paper": {"pretrain_fraction": 0.25, "student": "network", "warmup_twins": "both", "supervised_warmup": 0.0,
              "unlabelled_ramp": 1.0, "copy_paste": False, "appearance": 0.0,
              "rounds": 3, "rounds_every": 1, "targets": "noised", "confidence": 0.0, "strong_augment": 0.0,
              "cutmix": False, "loss": "dice", "unlabelled_loss": "dice"},
}

SECTIONS = {"method": MethodSettings, "network": NetworkSettings, "schedule": ScheduleSettings,
            "runtime": RuntimeSettings}
SECTION_OF = {f.name: section for section, kind in SECTIONS.items() for f in fields(kind)}  # setting -> section
_CHOICES = {"warmup_twins": WarmupTwins, "loss": Loss, "keep_twin": Twin, "lr_schedule": LrSchedule,
            "targets": Targets, "targets_from": TargetsFrom, "student": Student, "unlabelled_loss": Loss, "budget_clock": BudgetClock,
            "layout": Layout}


def parse_setting(assignment: str) -> tuple[str, object]:
    """``NAME=VALUE`` (the CLI's ``--set``) -> (name, value), the value typed after the setting's default: true/false
    for switches, a number for numbers, a word for choices, ``none`` for optional settings. InputError naming the
    setting when the name is unknown or the value is not of its kind; the ranges are checked by ``validate``."""
    import difflib

    name, sep, text = assignment.partition("=")
    name, text = name.strip().replace("-", "_"), text.strip()
    if not sep or not name:
        raise InputError(f"--set expects NAME=VALUE, got {assignment!r}")
    if name not in SECTION_OF:
        close = difflib.get_close_matches(name, SECTION_OF, n=3)
        raise InputError(f"unknown training setting {name!r}" + (f" (did you mean {', '.join(close)}?)" if close
                                                                 else "; the settings are TrainConfig's fields"))
    default = next(f.default for f in fields(SECTIONS[SECTION_OF[name]]) if f.name == name)
    if text.lower() in ("none", "null") and default is None:
        return name, None
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError
            return name, text.lower() in ("true", "1", "yes", "on")
        if isinstance(default, StrEnum) or name in _CHOICES:
            return name, text
        if isinstance(default, int) or name in ("max_steps", "batch_size", "threads", "student_channels"):
            return name, int(text)
        if isinstance(default, float) or default is None:
            return name, float(text)
    except ValueError:
        raise InputError(f"{name} takes {'true or false' if isinstance(default, bool) else 'a number'}, "
                         f"got {text!r}") from None
    return name, text


@dataclass(init=False)
class TrainConfig:
    """Settings of one training run in four sections (``config.method``, ``.network``, ``.schedule``,
    ``.runtime``); defaults are tuned for a 2-core CPU (see benchmarks/quality).

    Built from sections, from settings by name (``TrainConfig(seed=3, base_channels=8)``: every setting name is
    unique across the sections), or both (the names override the sections). Stored (project settings, model cards)
    as one flat dict of settings by name (``to_dict`` / ``from_dict``), the format of every earlier version.

    Departures from the paper-scale settings of shared/METHOD.md, measured at equal optimisation time
    (docs/how-it-works.md): one pseudo-label round (K = 1) every 4th co-training step instead of K = 3 every step, Adam
    3e-3 in co-training, a supervised warm-up through the first half of co-training (the teacher alone; the student
    then starts as its copy), labelled + unlabelled halves of one batch per network, a working scale chosen from the
    labelled objects, intensity/colour augmentation (each twin sees its own perturbed view of a patch), a poly
    learning-rate schedule that anneals to zero at the end of the budget, and the final weights of the teacher
    with a fixed 0.5 threshold instead of a selection on the labelled images.
    """

    method: MethodSettings
    network: NetworkSettings
    schedule: ScheduleSettings
    runtime: RuntimeSettings

    def __init__(self, method: MethodSettings | None = None, network: NetworkSettings | None = None,
                 schedule: ScheduleSettings | None = None, runtime: RuntimeSettings | None = None, **settings):
        unknown = sorted(set(settings) - set(SECTION_OF))
        if unknown:
            raise TypeError(f"unknown training settings: {', '.join(unknown)}")
        given = {"method": method, "network": network, "schedule": schedule, "runtime": runtime}
        for name, kind in SECTIONS.items():
            changes = {key: value for key, value in settings.items() if SECTION_OF[key] == name}
            setattr(self, name, replace(given[name] or kind(), **changes))  # a copy: configs never share a section
        self.validate()

    @classmethod
    def from_preset(cls, preset: str | None, **settings) -> "TrainConfig":
        """The settings of a named preset (``PRESETS``; None: the defaults) under ``settings``."""
        if preset is not None and preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
        return cls(**{**(PRESETS[preset] if preset else {}), **settings})

    def replace(self, **settings) -> "TrainConfig":
        """A validated copy with some settings (by name) changed."""
        return TrainConfig(self.method, self.network, self.schedule, self.runtime, **settings)

    def validate(self) -> None:
        """Every field and the rules between fields; InputError naming the first setting that is wrong."""
        method, network, schedule, runtime = self.method, self.network, self.schedule, self.runtime
        for name, bounds in LIMITS.items():
            if name == "patch_edge":
                values = schedule.patch_size or ()
            else:
                values = [getattr(getattr(self, SECTION_OF[name]), name)]
            for value in values:
                if value is None:  # optional settings (max_steps, batch_size, threads): the default decides
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not bounds.contains(value):
                    raise InputError(f"{LIMIT_NAMES.get(name, name)} must be a number {bounds.describe()}, "
                                     f"got {value!r}")
        for name, kind in _CHOICES.items():
            section = getattr(self, SECTION_OF[name])
            value = getattr(section, name)
            if value not in tuple(kind):
                raise InputError(f"{name} must be one of {', '.join(kind)}, got {value!r}")
            setattr(section, name, kind(value))
        if schedule.patch_size is not None and len(schedule.patch_size) not in (2, 3):
            raise InputError(f"patch_size needs 2 (Y X) or 3 (Z Y X) numbers, got {schedule.patch_size}")
        if schedule.patch_size is not None and min(schedule.patch_size) < 2 ** network.depth:
            raise InputError(f"patch size {schedule.patch_size} is smaller than the network's {2 ** network.depth}"
                             f"-pixel granularity (depth {network.depth}): use larger patches or a shallower network")
        if network.layout == Layout.BOTH and schedule.patch_size is not None:
            raise InputError("layout 'both' plans a patch for each of its two networks: leave the patch size to the "
                             "planner, or train one layout (2d or 3d) with a patch size")
        if schedule.patch_size is not None and network.layout != Layout.AUTO and \
                len(schedule.patch_size) != (2 if network.layout == Layout.SLICES else 3):
            raise InputError(f"layout {network.layout} trains a {2 if network.layout == Layout.SLICES else 3}D "
                             f"network: the patch size needs as many numbers, got {schedule.patch_size}")
        if not isinstance(runtime.device, str) or not _DEVICE_PATTERN.fullmatch(runtime.device):
            raise InputError(f"device must be auto, cpu, cuda, cuda:N or mps, got {runtime.device!r}")
        if schedule.budget_seconds is None and schedule.max_steps is None:
            raise InputError("give a time budget (seconds) or a number of steps")
        if schedule.budget_seconds is not None and schedule.budget_seconds <= 0:
            raise InputError(f"the time budget must be positive, got {schedule.budget_seconds}")
        if not 0 <= method.pretrain_fraction < 1:
            raise InputError("pretrain_fraction must be in [0, 1)")
        if not 0 <= method.supervised_warmup < 1:
            raise InputError(f"supervised_warmup must be in [0, 1), got {method.supervised_warmup}")
        if method.student == Student.AVERAGE and method.targets != Targets.AVERAGE:
            raise InputError("student 'average' (the teacher's running weight average) makes its targets from that "
                             "average: it needs targets 'average'")
        if method.warmup_twins == WarmupTwins.COPY and network.student_channels not in (None, network.base_channels):
            raise InputError("warmup_twins 'copy' copies the teacher into the student: it needs a student of the "
                             f"teacher's width ({network.base_channels}), got student_channels "
                             f"{network.student_channels}")
        if not 0 < method.unlabelled_ramp <= 1:
            raise InputError(f"unlabelled_ramp must be in (0, 1], got {method.unlabelled_ramp}")
        if schedule.working_scale is not None and not 0.05 <= schedule.working_scale <= 1:
            raise InputError(f"the working scale must lie in [0.05, 1] (1 = native resolution), "
                             f"got {schedule.working_scale}")
        if not 0 <= method.average_decay < 1:
            raise InputError(f"average_decay must be in [0, 1), got {method.average_decay}")
        if not 0 < method.round_t_fraction <= 1:
            raise InputError(f"round_t_fraction must be in (0, 1], got {method.round_t_fraction}")
        if not 0 <= method.confidence < 1:
            raise InputError(f"confidence must be in [0, 1), got {method.confidence}")
        if method.strong_augment < 0:
            raise InputError(f"the strong augmentation must be >= 0, got {method.strong_augment}")
        if schedule.augment < 0:
            raise InputError(f"the augmentation strength must be >= 0, got {schedule.augment}")
        if not 0 < method.threshold < 1:
            raise InputError(f"the threshold must lie in (0, 1), got {method.threshold}")
        if schedule.patch_size is not None:
            schedule.patch_size = tuple(int(p) for p in schedule.patch_size)

    def to_dict(self) -> dict:
        """Every setting by name, plain values (the stored format)."""
        return {name: getattr(getattr(self, section), name).value if name in _CHOICES
                else getattr(getattr(self, section), name) for name, section in SECTION_OF.items()}

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """From stored settings, flat by name or nested by section; keys this version does not know (a newer or
        older version wrote them) are named in a warning, not used."""
        flat: dict = {}
        for key, value in values.items():
            if key in SECTIONS and isinstance(value, dict):
                flat.update(value)
            else:
                flat[key] = value
        unknown = sorted(set(flat) - set(SECTION_OF))
        if unknown:
            logger.warning("ignoring unknown training settings: %s", ", ".join(unknown))
        return cls(**{k: v for k, v in flat.items() if k in SECTION_OF})

    @classmethod
    def from_stored(cls, stored: dict | None, exclude: frozenset[str] = frozenset(), **settings) -> "TrainConfig":
        """A project's stored settings (less the names in ``exclude``) under ``settings``, the one merge of the CLI
        and the GUI. Stored settings that no longer make a valid config (another version wrote them, or they were
        edited by hand) are ignored, all of them, with a warning: a half-kept set would be a config nobody chose."""
        kept: dict = {}
        if stored:
            try:
                kept = cls.from_dict({k: v for k, v in stored.items() if k not in exclude}).to_dict()
            except (InputError, TypeError, ValueError) as error:
                logger.warning("ignoring the project's stored training settings (%s)", one_line(error))
        defaults = cls().to_dict()
        inherited = {name: value for name, value in kept.items()
                     if name not in settings and name not in exclude and value != defaults[name]}
        if inherited:
            logger.info("kept from the project's stored settings: %s",
                        ", ".join(f"{name} {value}" for name, value in sorted(inherited.items())))
        return cls(**{**inherited, **settings})
