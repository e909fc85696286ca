"""What the benchmark suite runs: its sections, datasets, method variants and the settings of each mode."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1]  # benchmarks/
SECTIONS = ("accuracy", "ablations", "effort", "speed")
ALL_DATASETS = ("dsb2018", "glas", "ph2", "isbi2012_em", "la_mri_3d")
THREE_D_DATASETS = ("la_mri_3d",)  # volumes: their own (longer) training budget
METHODS = ("DiffSeg", "labels only", "random forest", "Otsu")
VARIANTS: dict[str, dict] = {  # ablations: TrainConfig fields that differ from the default
    "25% pretraining": {"pretrain_fraction": 0.25},
    "no warm-up": {"supervised_warmup": 0.0, "unlabelled_ramp": 1.0},
    "K = 0 rounds": {"rounds": 0},
    "K = 3 rounds": {"rounds": 3},
    "K = 5 rounds": {"rounds": 5},
    "K = 3 chained": {"rounds": 3, "chained_rounds": True},
    "width 32": {"base_channels": 32},
    "width 64": {"base_channels": 64},
}
DEFAULT_VARIANT = "default"
STRATEGIES = ("uncertainty", "random", "none")


@dataclass(frozen=True)
class Settings:
    """What one mode runs. Budgets are wall-time seconds per training run (one torch thread each)."""

    seeds: tuple[int, ...]
    datasets: tuple[str, ...]
    labelled: tuple[int, ...] = (1, 2, 5, 10)
    budget_2d: float = 35.0
    budget_3d: float = 40.0
    ablation_dataset: str = "dsb2018"
    ablation_labelled: int = 2
    ablation_seeds: tuple[int, ...] = (0,)
    variants: tuple[str, ...] = tuple(VARIANTS)
    budgets: tuple[float, ...] = (60.0, 120.0, 300.0, 600.0)
    labels_only_budgets: tuple[float, ...] = (60.0, 120.0, 300.0)  # the same network on the labels only
    sampling_steps: tuple[int, ...] = (1, 5, 20)
    effort_start: int = 1
    effort_per_round: int = 2
    effort_rounds: int = 3
    effort_budget: float = 30.0
    effort_seeds: tuple[int, ...] = (0,)
    strategies: tuple[str, ...] = STRATEGIES
    speed_configs: tuple[tuple[int, int], ...] = ((16, 64), (16, 128), (16, 256), (32, 128), (64, 128))
    speed_steps: int = 10  # 25% pretraining: 2 pretraining and 5 co-training step intervals are timed
    speed_mosaic: int = 1024
    speed_tiles: tuple[int, ...] = (256, 512, 1024)
    speed_repeats: int = 1


MODES = {
    "quick": Settings(
        seeds=(0,), datasets=("dsb2018",), labelled=(1, 2, 5), budget_2d=35.0,
        variants=("25% pretraining", "K = 3 rounds", "K = 3 chained", "width 32"),
        budgets=(35.0, 70.0), labels_only_budgets=(70.0,), sampling_steps=(1, 5), effort_rounds=2, effort_budget=20.0,
        strategies=("uncertainty", "random"), speed_configs=((16, 128), (32, 128)), speed_tiles=(256, 1024),
    ),
    # ablations and effort on GlaS in the full mode: Otsu nearly solves dsb2018 (0.919 Dice), so differences
    # between variants there are within noise; on GlaS the semi-supervised runs differ from labels-only.
    # Three seeds for uncertainty vs random corrections (one random draw says little); no 'none' control there.
    "full": Settings(seeds=(0, 1, 2), datasets=ALL_DATASETS, ablation_dataset="glas", effort_seeds=(0, 1, 2),
                     strategies=("uncertainty", "random")),
}


