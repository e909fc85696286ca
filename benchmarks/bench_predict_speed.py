"""Prediction speed of the default 2D model (grey, 2 classes, width 16, depth 3) in megapixels per second, the
levers of the scale issue measured side by side in one process: torch threads, BatchNorm folded into the
convolutions, bf16, tile size and tiles per batch, and the OpenVINO backend where it is installed. Weights are random (speed does not depend on them); the image
is a synthetic 2048 x 2048 uint8 picture; each row is the best of ``--repeats`` timed passes after a warm-up pass.

    python benchmarks/bench_predict_speed.py [--size 2048] [--repeats 3] [--out benchmarks/predict_speed.md]

The first row is the path as it was before the scale issue (BatchNorm not folded, 1 thread: the old CLI default on
2 cores, bf16, 1024-px tiles, 4 tiles per batch), the second what `diffseg predict` does now with torch, the first
OpenVINO row what it does with the [openvino] extra; ratios are to the first row, measured in the same run. Every
row uses today's tile fitting (a tile may grow by up to 25 % when that saves a row of tiles).
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from _common import load_average, machine, print_report
from napari_diffseg.core.prediction import openvino_backend
from napari_diffseg.core.prediction.model import SegmentationModel
from napari_diffseg.core.method.networks import fold_batch_norm
from napari_diffseg.core.prediction.predict import tiled_probabilities, run_to_completion
from napari_diffseg.core.method.teacher import DiffusionTwin, NetworkConfig


def trained_like_network() -> DiffusionTwin:
    """A default network whose BatchNorm statistics are not the identity (as after training)."""
    torch.manual_seed(0)
    network = DiffusionTwin(NetworkConfig(spatial_dims=2, image_channels=1))
    for module in network.mask_path.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return network.eval()


def seconds_per_pass(network: DiffusionTwin, image01: np.ndarray, tile: int, batch: int, bf16: bool,
                     repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first pass warms up oneDNN's kernels
        began = time.perf_counter()
        run_to_completion(tiled_probabilities([network], image01, (tile, tile), batch_size=batch, bf16=bf16))
        times.append(time.perf_counter() - began)
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    image = (rng.random((args.size, args.size)) * 255).astype(np.uint8)
    image01 = SegmentationModel(trained_like_network(), 0.5, {}).check_image(image)
    plain = trained_like_network()
    folded = copy.deepcopy(plain)
    fold_batch_norm(folded.mask_path)
    rows = [  # (label, network, threads, bf16, tile, tiles per batch)
        ("before: BN not folded, 1 thread", plain, 1, True, 1024, 4),
        ("torch now (`diffseg predict` without the [openvino] extra): BN folded, 2 threads, tile 512, 1 per batch",
         folded, 2, True, 512, 1),
        ("BN folded, 2 threads, tile 1024, 1 per batch (the torch default before today)", folded, 2, True, 1024, 1),
        ("BN folded, 1 thread", folded, 1, True, 1024, 4),
        ("BN not folded, 2 threads", plain, 2, True, 1024, 4),
        ("BN folded, 2 threads", folded, 2, True, 1024, 4),
        ("BN folded, 2 threads, fp32", folded, 2, False, 1024, 4),
        ("BN folded, 2 threads, tile 512", folded, 2, True, 512, 4),
        ("BN folded, 2 threads, tile 512, 8 per batch", folded, 2, True, 512, 8),
        ("BN folded, 2 threads, tile 512, 2 per batch", folded, 2, True, 512, 2),
        ("BN folded, 2 threads, tile 256", folded, 2, True, 256, 4),
        ("BN folded, 2 threads, tile 768", folded, 2, True, 768, 4),
        ("BN folded, 2 threads, tile 2048, 1 per batch", folded, 2, True, 2048, 1),
    ]
    if openvino_backend.available():  # the [openvino] extra: `diffseg predict` (auto) and the Predict panel use it
        def compiled(threads: int, bf16: bool) -> DiffusionTwin:
            network = copy.deepcopy(folded)
            network.mask_path = openvino_backend.CompiledUNet(folded.mask_path, threads, bf16)
            return network

        fast, fast_fp32, fast_1 = compiled(2, True), compiled(2, False), compiled(1, True)
        rows += [
            ("OpenVINO (`diffseg predict` with the [openvino] extra), 2 threads, 1 tile per batch", fast, 2, True,
             1024, 1),
            ("OpenVINO, 2 threads, fp32", fast_fp32, 2, False, 1024, 1),
            ("OpenVINO, 1 thread (the Predict panel on 2 cores)", fast_1, 1, True, 1024, 1),
            ("OpenVINO, 2 threads, tile 512", fast, 2, True, 512, 1),
            ("OpenVINO, 2 threads, tile 512, 4 per batch", fast, 2, True, 512, 4),
            ("OpenVINO, 2 threads, tile 2048", fast, 2, True, 2048, 1),
        ]
    megapixels = args.size * args.size / 1e6
    lines = [f"{machine()}; load average {load_average()[0]:.1f} before; image {args.size} x {args.size}, best of {args.repeats} passes", "",
             "| setting | threads | precision | tile | tiles/batch | s / image | MP/s | ratio |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    baseline = None
    for label, network, threads, bf16, tile, batch in rows:
        torch.set_num_threads(threads)
        seconds = seconds_per_pass(network, image01, tile, batch, bf16, args.repeats)
        rate = megapixels / seconds
        baseline = baseline or rate
        lines.append(f"| {label} | {threads} | {'bf16' if bf16 else 'fp32'} | {tile} | {batch} | {seconds:.2f} | "
                     f"{rate:.2f} | {rate / baseline:.2f} |")
        print(lines[-1], flush=True)
    print_report(lines, args.out)


if __name__ == "__main__":
    main()
