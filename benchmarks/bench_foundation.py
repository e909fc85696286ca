"""Foundation benchmark: semi-supervised (pretraining + co-training) vs labels-only at equal wall-time budget,
time to first pseudo-labels, and 2D prediction throughput. Prints a markdown table (and writes it with --out).

Uses the engine exactly as the `diffseg` CLI does (core.data.training_data_from_arrays, core.training.train,
core.checkpoint.SegmentationModel). Each semi / labels-only pair runs concurrently in two processes (one torch
thread each) so both see the same machine load.

    python benchmarks/bench_foundation.py --budget 120 --labelled 1 2 5 --out benchmarks/foundation.md
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
import datetime
import json
import os
from pathlib import Path
import platform
import tempfile
import time

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def load_split(root: Path):
    from napari_diffseg.core.io import read_image, read_mask

    split = json.loads((root / "split.json").read_text())
    def pairs(ids):
        return [(read_image(root / "images" / f"{i}.tif"), read_mask(root / "masks" / f"{i}.tif"), i) for i in ids]
    return pairs(split["train"]), pairs(split["test"])


def train_and_score(root: str, n_labelled: int, labels_only: bool, budget: float, seed: int, extra: dict) -> dict:
    import torch
    from napari_diffseg.core.checkpoint import SegmentationModel
    from napari_diffseg.core.data import training_data_from_arrays
    from napari_diffseg.core.metrics import dice
    from napari_diffseg.core.training import Done, Progress, TrainConfig, train

    train_pairs, test_pairs = load_split(Path(root))
    data = training_data_from_arrays(
        [p[0] for p in train_pairs], {i: train_pairs[i][1] for i in range(n_labelled)}, [p[2] for p in train_pairs]
    )
    config = TrainConfig(budget_seconds=budget, labels_only=labels_only, seed=seed, threads=1, **extra)
    with tempfile.TemporaryDirectory() as out:
        steps = 0
        for event in train(data, config, Path(out)):
            if isinstance(event, Progress):
                steps = event.step
        model = SegmentationModel.load(Path(out))
        predictions = [model.predict(image).mask for image, _, _ in test_pairs]
    truth = [mask for _, mask, _ in test_pairs]
    pooled = dice(np.concatenate([p.ravel() for p in predictions]), np.concatenate([t.ravel() for t in truth]))
    per_image = float(np.mean([dice(p, t) for p, t in zip(predictions, truth)]))
    return {"steps": steps, "pooled_dice": pooled, "mean_dice": per_image, "threshold": model.threshold,
            "twin": model.card.get("selected_twin"), "threads": torch.get_num_threads()}


def time_to_first_pseudo_labels(root: Path, n_labelled: int) -> dict:
    """All images of the dataset (train + test), the first n labelled, default settings; seconds until the first
    pseudo-labels of all unlabelled images are written."""
    from napari_diffseg.core.data import training_data_from_arrays
    from napari_diffseg.core.training import PseudoLabelsReady, TrainConfig, train

    train_pairs, test_pairs = load_split(root)
    pairs = train_pairs + test_pairs
    data = training_data_from_arrays([p[0] for p in pairs], {i: pairs[i][1] for i in range(n_labelled)},
                                     [p[2] for p in pairs])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        events = train(data, TrainConfig(), Path(out))
        for event in events:
            if isinstance(event, PseudoLabelsReady):
                seconds = time.perf_counter() - start
                events.close()
                return {"images": len(pairs), "unlabelled": len(event.names), "seconds": seconds,
                        "shape": pairs[0][0].shape}
    return {"images": len(pairs), "unlabelled": 0, "seconds": float("nan"), "shape": pairs[0][0].shape}


def prediction_speed(root: Path, budget: float, size: int = 2048, repeats: int = 2) -> list[dict]:
    """Megapixels per second of single-step prediction (with and without bf16) on a tiled mosaic."""
    from napari_diffseg.core.checkpoint import SegmentationModel
    from napari_diffseg.core.data import training_data_from_arrays
    from napari_diffseg.core.device import bf16_supported, configure_threads
    from napari_diffseg.core.training import TrainConfig, train

    train_pairs, _ = load_split(root)
    data = training_data_from_arrays([p[0] for p in train_pairs[:4]], {0: train_pairs[0][1]},
                                     [p[2] for p in train_pairs[:4]])
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for _ in train(data, TrainConfig(budget_seconds=None, max_steps=5, labels_only=True), Path(out)):
            pass
        tiles = [p[0] for p in train_pairs]
        reps = -(-size // tiles[0].shape[0])
        mosaic = np.block([[tiles[(r * reps + c) % len(tiles)] for c in range(reps)] for r in range(reps)])[:size, :size]
        for threads in sorted({configure_threads(None), os.cpu_count() or 1}):
            configure_threads(threads)
            for bf16 in ([False, True] if bf16_supported("cpu") else [False]):
                model = SegmentationModel.load(Path(out), bf16=bf16)
                model.predict(mosaic[:512, :512])  # warm-up
                start = time.perf_counter()
                for _ in range(repeats):
                    model.predict(mosaic)
                seconds = (time.perf_counter() - start) / repeats
                rows.append({"image": f"{size}x{size}", "threads": threads, "bf16": bf16,
                             "seconds": seconds, "mp_per_s": size * size / 1e6 / seconds})
    return rows


def machine() -> str:
    import torch

    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"{datetime.date.today().isoformat()}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--datasets", nargs="+", default=["dsb2018"])
    parser.add_argument("--labelled", nargs="+", type=int, default=[1, 2, 5])
    parser.add_argument("--budget", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--config", type=json.loads, default={}, help="extra TrainConfig fields as JSON")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    lines = [f"Machine: {machine()}", f"Budget per run: {args.budget:.0f} s wall time, seed {args.seed}, "
             f"extra config {args.config or 'none'}", ""]
    if not args.skip_accuracy:
        lines += ["| dataset | labelled | method | steps | pooled Dice | mean Dice | threshold | twin |",
                  "|---|---|---|---|---|---|---|---|"]
        with ProcessPoolExecutor(max_workers=2) as pool:
            for dataset in args.datasets:
                root = str(args.data_root / dataset)
                for n in args.labelled:
                    jobs = {name: pool.submit(train_and_score, root, n, lo, args.budget, args.seed, args.config)
                            for name, lo in (("semi-supervised", False), ("labels-only", True))}
                    for name, job in jobs.items():
                        r = job.result()
                        lines.append(f"| {dataset} | {n} | {name} | {r['steps']} | {r['pooled_dice']:.3f} | "
                                     f"{r['mean_dice']:.3f} | {r['threshold']:.2f} | {r['twin']} |")
                        print(lines[-1], flush=True)
        lines.append("")
    if not args.skip_speed:
        root = args.data_root / "dsb2018"
        first = time_to_first_pseudo_labels(root, 2)
        lines += ["| first pseudo-labels | images | unlabelled | image shape | seconds from start |", "|---|---|---|---|---|",
                  f"| dsb2018, 2 labelled | {first['images']} | {first['unlabelled']} | {first['shape']} | "
                  f"{first['seconds']:.1f} |", ""]
        print(lines[-2], flush=True)
        lines += ["| prediction | threads | bf16 | seconds | megapixels/s |", "|---|---|---|---|---|"]
        for row in prediction_speed(root, args.budget):
            lines.append(f"| {row['image']} | {row['threads']} | {row['bf16']} | {row['seconds']:.2f} | "
                         f"{row['mp_per_s']:.2f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
