"""The settings of one training run (TrainConfig), in a module without torch: the GUI reads and edits them on its
thread, and importing torch there froze the viewer for seconds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import InputError

LR_SCHEDULES = ("poly", "constant")
TWINS = ("teacher", "student")
WARMUP_TWINS = ("both", "copy")  # supervised warm-up: both twins learn the labels, or the teacher alone + a copy
LOSSES = ("dice", "dice_ce")  # the mask loss: soft Dice (the paper's), or soft Dice + cross-entropy


@dataclass
class TrainConfig:
    """Settings of one training run; defaults are tuned for a 2-core CPU (see benchmarks/quality).

    Departures from the paper-scale settings of shared/METHOD.md, measured at equal optimisation time (README,
    "How it works"): one pseudo-label round (K = 1) every 4th co-training step instead of K = 3 every step, Adam
    3e-3 in co-training, labelled + unlabelled halves of one batch per network, a working scale chosen from the
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
    supervised_warmup: float = 0.25
    unlabelled_ramp: float = 0.5
    warmup_twins: str = "both"
    num_classes: int = 2
    base_channels: int = 16
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
        if self.budget_seconds is None and self.max_steps is None:
            raise InputError("give a time budget (seconds) or a number of steps")
        if self.budget_seconds is not None and self.budget_seconds <= 0:
            raise InputError(f"the time budget must be positive, got {self.budget_seconds}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise InputError(f"the number of steps must be positive, got {self.max_steps}")
        if not 0 <= self.pretrain_fraction < 1:
            raise InputError("pretrain_fraction must be in [0, 1)")
        if self.num_classes < 2:
            raise InputError("num_classes must be at least 2 (background + one class)")
        if not 0 <= self.supervised_warmup < 1:
            raise InputError(f"supervised_warmup must be in [0, 1), got {self.supervised_warmup}")
        if self.warmup_twins not in WARMUP_TWINS:
            raise InputError(f"warmup_twins must be one of {', '.join(WARMUP_TWINS)}, got {self.warmup_twins!r}")
        if not 0 < self.unlabelled_ramp <= 1:
            raise InputError(f"unlabelled_ramp must be in (0, 1], got {self.unlabelled_ramp}")
        if self.rounds < 0 or self.rounds_every < 1:
            raise InputError("rounds must be >= 0 and rounds_every >= 1")
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
        if self.uncertainty_draws < 0:
            raise InputError(f"uncertainty_draws must be >= 0, got {self.uncertainty_draws}")
        if self.patch_size is not None:
            self.patch_size = tuple(int(p) for p in self.patch_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
