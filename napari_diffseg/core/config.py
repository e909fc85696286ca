"""The settings of one training run (TrainConfig), in a module without torch: the GUI reads and edits them on its
thread, and importing torch there froze the viewer for seconds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
import logging
import re

from .errors import InputError

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

LR_SCHEDULES = ("poly", "constant")
TWINS = ("teacher", "student")
WARMUP_TWINS = ("both", "copy")  # supervised warm-up: both twins learn the labels, or the teacher alone + a copy
LOSSES = ("dice", "dice_ce")  # the mask loss: soft Dice (the paper's), or soft Dice + cross-entropy


@dataclass
class TrainConfig:
    """Settings of one training run; defaults are tuned for a 2-core CPU (see benchmarks/quality).

    Departures from the paper-scale settings of shared/METHOD.md, measured at equal optimisation time (README,
    "How it works"): one pseudo-label round (K = 1) every 4th co-training step instead of K = 3 every step, Adam
    3e-3 in co-training, a supervised warm-up through the first half of co-training (the teacher alone; the student
    then starts as its copy), labelled + unlabelled halves of one batch per network, a working scale chosen from the
    labelled objects, intensity/colour augmentation (each twin sees its own perturbed view of a patch), a poly
    learning-rate schedule that anneals to zero at the end of the budget, and the final weights of the teacher
    with a fixed 0.5 threshold instead of a selection on the labelled images.
    """

    budget_seconds: float | None = 300.0
    max_steps: int | None = None
    labels_only: bool = False
    pretrain_fraction: float = 0.0
    rounds: int = 1
    rounds_every: int = 4
    chained_rounds: bool = False
    lambda_d: float = 1.0
    supervised_warmup: float = 0.5
    unlabelled_ramp: float = 0.5
    warmup_twins: str = "copy"
    num_classes: int = 2
    base_channels: int = 16
    student_channels: int | None = None  # the student's width (None: the teacher's); a narrower student is cheaper
    depth: int = 3
    patch_size: tuple[int, ...] | None = None
    batch_size: int | None = None
    lr_pretrain: float = 1e-3
    lr_cotrain: float = 3e-3
    lr_schedule: str = "poly"
    working_scale: float | None = None
    augment: float = 1.0
    keep_twin: str = "teacher"
    loss: str = "dice"
    threshold: float = 0.5
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    bf16: bool | None = None
    checkpoint_every_seconds: float = 30.0
    first_pseudo_labels_after_seconds: float = 10.0
    pseudo_labels_every_seconds: float = 60.0
    uncertainty_draws: int = 0
    max_validation_images: int = 8

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Every field and the rules between fields; InputError naming the first setting that is wrong."""
        for name, bounds in LIMITS.items():
            values = (self.patch_size or ()) if name == "patch_edge" else [getattr(self, name)]
            for value in values:
                if value is None:  # optional settings (max_steps, batch_size, threads): the default decides
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not bounds.contains(value):
                    raise InputError(f"{LIMIT_NAMES.get(name, name)} must be a number {bounds.describe()}, "
                                     f"got {value!r}")
        if self.patch_size is not None and len(self.patch_size) not in (2, 3):
            raise InputError(f"patch_size needs 2 (Y X) or 3 (Z Y X) numbers, got {self.patch_size}")
        if self.patch_size is not None and min(self.patch_size) < 2 ** self.depth:
            raise InputError(f"patch size {self.patch_size} is smaller than the network's {2 ** self.depth}-pixel "
                             f"granularity (depth {self.depth}): use larger patches or a shallower network")
        if not isinstance(self.device, str) or not _DEVICE_PATTERN.fullmatch(self.device):
            raise InputError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.budget_seconds is None and self.max_steps is None:
            raise InputError("give a time budget (seconds) or a number of steps")
        if self.budget_seconds is not None and self.budget_seconds <= 0:
            raise InputError(f"the time budget must be positive, got {self.budget_seconds}")
        if not 0 <= self.pretrain_fraction < 1:
            raise InputError("pretrain_fraction must be in [0, 1)")
        if not 0 <= self.supervised_warmup < 1:
            raise InputError(f"supervised_warmup must be in [0, 1), got {self.supervised_warmup}")
        if self.warmup_twins not in WARMUP_TWINS:
            raise InputError(f"warmup_twins must be one of {', '.join(WARMUP_TWINS)}, got {self.warmup_twins!r}")
        if self.warmup_twins == "copy" and self.student_channels not in (None, self.base_channels):
            raise InputError("warmup_twins 'copy' copies the teacher into the student: it needs a student of the "
                             f"teacher's width ({self.base_channels}), got student_channels {self.student_channels}")
        if not 0 < self.unlabelled_ramp <= 1:
            raise InputError(f"unlabelled_ramp must be in (0, 1], got {self.unlabelled_ramp}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise InputError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.working_scale is not None and not 0.05 <= self.working_scale <= 1:
            raise InputError(f"the working scale must lie in [0.05, 1] (1 = native resolution), "
                             f"got {self.working_scale}")
        if self.augment < 0:
            raise InputError(f"the augmentation strength must be >= 0, got {self.augment}")
        if self.loss not in LOSSES:
            raise InputError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.keep_twin not in TWINS:
            raise InputError(f"keep_twin must be one of {', '.join(TWINS)}, got {self.keep_twin!r}")
        if not 0 < self.threshold < 1:
            raise InputError(f"the threshold must lie in (0, 1), got {self.threshold}")
        if self.patch_size is not None:
            self.patch_size = tuple(int(p) for p in self.patch_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """From stored settings; keys this version does not know (a newer or older version wrote them) are
        named in a warning, not used."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            logger.warning("ignoring unknown training settings: %s", ", ".join(unknown))
        return cls(**{k: v for k, v in values.items() if k in known})
