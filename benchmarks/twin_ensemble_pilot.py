"""Pilot of one quality lever: predict with the mean of the teacher's and the student's probabilities instead of the
kept twin alone, scored on the SAME co-training runs (paired, so the wall-time noise of a run cancels), beside the
stronger-baseline check: labels-only as two networks of half the budget each, averaged, vs one labels-only network
of the whole budget. Training goes through benchmarks/_common.train_model, as benchmarks/quality.py does.

    python benchmarks/twin_ensemble_pilot.py --datasets glas isbi2012_em --seeds 0 1 --out results.json

Prints one JSON row per dataset and seed (test Dice: teacher, student, twins' mean, labels-only, the two half-budget
labels-only networks and their mean) and writes them all to --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from _common import load_split, score_masks, train_model

SECOND_NETWORK_SEED = 100  # seed offset of the second half-budget labels-only network


def runs(work: Path, dataset: str, seed: int, budget: float) -> dict[str, tuple[int, float, bool, Path]]:
    """The four trainings of one dataset and seed: name -> (seed, budget, labels only, model folder)."""
    second = seed + SECOND_NETWORK_SEED
    return {"default": (seed, budget, False, work / f"{dataset}_{seed}_default"),
            "lo": (seed, budget, True, work / f"{dataset}_{seed}_lo"),
            "loA": (seed, budget / 2, True, work / f"{dataset}_{seed}_loA"),
            "loB": (second, budget / 2, True, work / f"{dataset}_{second}_loB")}


def train_job(params: tuple) -> tuple:
    from napari_diffseg.core.method.training import TrainConfig

    root, seed, budget, labels_only, out = params
    train_pairs, _ = load_split(Path(root))
    shutil.rmtree(out, ignore_errors=True)
    config = TrainConfig(budget_seconds=budget, labels_only=labels_only, seed=seed)
    return params, train_model(train_pairs, [0, 1], config, Path(out))["steps"]


def mask_pathway_probabilities(model_dir: Path, twin: str | None, test_pairs) -> tuple[list[np.ndarray], float]:
    """Test-image probabilities of best.pt (twin None) or of one twin's mask pathway taken from last.pt, predicted
    exactly as ``diffseg predict`` does (SegmentationModel: working scale, tiles, bf16 where supported)."""
    from napari_diffseg.core import device as devices
    from napari_diffseg.core.method.checkpoint import ModelCheckpoint, RunCheckpoint
    from napari_diffseg.core.data.io import BEST
    from napari_diffseg.core.prediction.model import SegmentationModel

    folder = model_dir
    if twin is not None:
        last, best = RunCheckpoint.load(model_dir / "last.pt"), ModelCheckpoint.load(model_dir / BEST)
        whole = last.student if twin == "student" else last.teacher
        mask_path = {key[len("mask_path."):]: value for key, value in whole.items() if key.startswith("mask_path.")}
        folder = Path(tempfile.mkdtemp())
        shutil.copy(model_dir / "model_card.json", folder / "model_card.json")
        ModelCheckpoint(best.network, mask_path, best.threshold, best.working_scale, twin).save(folder / BEST)
    model = SegmentationModel.load(folder, bf16=devices.bf16_supported("cpu"))
    return [model.predict(image).probabilities for image, _, _ in test_pairs], model.threshold


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["glas", "isbi2012_em"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--budget", type=float, default=180.0)
    parser.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--work", default=None, help="folder for the model folders (default: a temporary one)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    from napari_diffseg.core.prediction.predict import probabilities_to_mask

    work = Path(args.work or tempfile.mkdtemp())
    jobs = [(str(Path(args.data_root) / dataset), *run)
            for dataset in args.datasets for seed in args.seeds
            for run in runs(work, dataset, seed, args.budget).values()]
    steps = {}
    with ProcessPoolExecutor(2) as pool:  # two trainings side by side, one torch thread each, as quality.py
        for params, count in pool.map(train_job, jobs):
            steps[params[-1]] = count
    rows = []
    for dataset in args.datasets:
        _, test_pairs = load_split(Path(args.data_root) / dataset)
        truth = [mask for _, mask, _ in test_pairs]
        for seed in args.seeds:
            folders = {name: run[-1] for name, run in runs(work, dataset, seed, args.budget).items()}
            teacher, threshold = mask_pathway_probabilities(folders["default"], "teacher", test_pairs)
            student, _ = mask_pathway_probabilities(folders["default"], "student", test_pairs)
            labels_only, _ = mask_pathway_probabilities(folders["lo"], None, test_pairs)
            half_a, _ = mask_pathway_probabilities(folders["loA"], None, test_pairs)
            half_b, _ = mask_pathway_probabilities(folders["loB"], None, test_pairs)

            def dice(probabilities: list[np.ndarray]) -> float:
                masks = [probabilities_to_mask(p, threshold) for p in probabilities]
                return score_masks(masks, truth)["mean_dice"]

            def mean(first, other):
                return [(a + b) / 2 for a, b in zip(first, other)]

            row = {"dataset": dataset, "seed": seed, "teacher": dice(teacher), "student": dice(student),
                   "twins_mean": dice(mean(teacher, student)), "labels_only": dice(labels_only),
                   "lo_half_A": dice(half_a), "lo_half_B": dice(half_b), "lo_half_mean": dice(mean(half_a, half_b)),
                   "steps": {name: steps[folder] for name, folder in folders.items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
