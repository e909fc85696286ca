"""Foundation benchmark: semi-supervised (pretraining + co-training) vs labels-only at equal wall-time budget,
time to first pseudo-labels, and 2D prediction throughput. Prints a markdown table (and writes it with --out).

Uses the engine exactly as the `diffseg` CLI does (core.data.training_set.training_data_from_arrays, core.method.training.train,
core.prediction.model.SegmentationModel), through the helpers in _common.py that benchmarks/suite.py shares. Each semi /
labels-only pair runs concurrently in two processes (one torch thread each) so both see the same machine load.

    python benchmarks/bench_foundation.py --budget 120 --labelled 1 2 5 --out benchmarks/foundation.md
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
import json
import os
from pathlib import Path
import tempfile
import time

from _common import DEFAULT_DATA, load_split, machine, mosaic, time_prediction, train_and_score


def time_to_first_pseudo_labels(root: Path, n_labelled: int) -> dict:
    """All images of the dataset (train + test), the first n labelled, default settings; seconds until the first
    pseudo-labels of all unlabelled images are written."""
    from napari_diffseg.core.data.training_set import training_data_from_arrays
    from napari_diffseg.core.method.training import PseudoLabelsReady, TrainConfig, train

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
    from napari_diffseg.core.data.training_set import training_data_from_arrays
    from napari_diffseg.core.device import bf16_supported, configure_threads
    from napari_diffseg.core.method.training import TrainConfig, train

    train_pairs, _ = load_split(root)
    data = training_data_from_arrays([p[0] for p in train_pairs[:4]], {0: train_pairs[0][1]},
                                     [p[2] for p in train_pairs[:4]])
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for _ in train(data, TrainConfig(budget_seconds=None, max_steps=5, labels_only=True), Path(out)):
            pass
        image = mosaic([p[0] for p in train_pairs], size)
        for threads in sorted({configure_threads(None), os.cpu_count() or 1}):
            configure_threads(threads)
            for bf16 in ([False, True] if bf16_supported("cpu") else [False]):
                timing = time_prediction(Path(out), image, bf16, repeats)
                rows.append({"image": f"{size}x{size}", "threads": threads, "bf16": bf16, **timing})
    return rows


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
