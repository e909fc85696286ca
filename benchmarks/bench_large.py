"""Peak memory and speed of `diffseg predict` on images larger than memory allows in one piece (the scale issue,
item 1), and agreement of block-by-block with in-memory prediction on an image that fits.

Inputs are synthetic uint16 TIFFs generated here block by block (never whole in memory): mosaics of the bundled
DSB2018 sample images (2D) and of synthetic blob volumes (3D), written uncompressed (memory-mapped when read).
Models: a 2D model trained for ``--train-budget`` seconds on the bundled sample, a 3D one on synthetic volumes.
Each prediction runs as its own process under ``/usr/bin/time -v`` (peak resident set size, wall time).

    python benchmarks/bench_large.py [--work /tmp/diffseg_large] [--out benchmarks/scale_large.md]

The 3D volume (200 x 2048 x 2048) is predicted for its first ``--blocks-3d`` blocks only (then cancelled, as the
Stop button does): peak memory is reached within the first block, and the whole volume would take far longer than
a benchmark should on 2 cores; the row says so.
"""

from __future__ import annotations

import argparse
from pathlib import Path
import re
import subprocess
import sys
import time

import numpy as np
import tifffile

from _common import REPO, load_average, machine, print_report

SAMPLE = REPO / "napari_diffseg" / "sample_data" / "train"
PYTHON = sys.executable


def timed(argv: list[str]) -> dict:
    """Run a command under /usr/bin/time -v: exit code, peak RSS in MB, wall seconds, stderr tail."""
    began = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - began
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    return {"code": result.returncode, "peak_mb": int(peak.group(1)) / 1024 if peak else float("nan"),
            "seconds": seconds, "tail": result.stderr[-1500:]}


def train_models(work: Path, budget: float, layout_3d: str = "auto", need_2d: bool = True) -> tuple[Path, Path]:
    from napari_diffseg.core.data.synthetic import make_blobs_dataset

    model_2d = work / "model_2d"
    model_3d = work / ("model_3d" if layout_3d == "auto" else f"model_3d_{layout_3d}")
    if need_2d and not (model_2d / "best.pt").exists():
        run = timed([PYTHON, "-m", "napari_diffseg.cli", "train", str(SAMPLE / "images"), "--labels",
                     str(SAMPLE / "labels"), "--out", str(model_2d), "--budget", str(budget), "--quiet"])
        assert run["code"] == 0, run["tail"]
    if not (model_3d / "best.pt").exists():
        volumes = work / "volumes"
        (volumes / "images").mkdir(parents=True, exist_ok=True)
        (volumes / "labels").mkdir(exist_ok=True)
        for index, (image, mask) in enumerate(make_blobs_dataset(4, shape=(48, 96, 96), ndim=3, seed=1)):
            tifffile.imwrite(volumes / "images" / f"v{index}.tif", image)
            if index < 2:
                tifffile.imwrite(volumes / "labels" / f"v{index}.tif", mask)
        run = timed([PYTHON, "-m", "napari_diffseg.cli", "train", str(volumes / "images"), "--labels",
                     str(volumes / "labels"), "--out", str(model_3d), "--budget", str(budget), "--quiet",
                     "--layout", layout_3d])
        assert run["code"] == 0, run["tail"]
    return model_2d, model_3d


def mosaic_2d(path: Path, size: int) -> Path:
    """A size x size uint16 TIFF tiled from the sample images, written row of tiles by row of tiles."""
    if path.exists():
        return path
    tiles = [tifffile.imread(p).astype(np.uint16) * 200 for p in sorted((SAMPLE / "images").glob("*.tif"))]
    tiles = [t if t.ndim == 2 else t[..., :3].mean(-1).astype(np.uint16) for t in tiles]
    side = min(min(t.shape[:2]) for t in tiles)
    tiles = [t[:side, :side] for t in tiles]
    image = tifffile.memmap(path, shape=(size, size), dtype=np.uint16)
    for row, y in enumerate(range(0, size, side)):
        for column, x in enumerate(range(0, size, side)):
            piece = tiles[(row * 7 + column) % len(tiles)]
            image[y:y + side, x:x + side] = piece[:size - y, :size - x]
        image.flush()
    del image
    return path


def volume_3d(path: Path, shape: tuple[int, int, int]) -> Path:
    """A uint16 volume of synthetic blobs, written a slab at a time."""
    from napari_diffseg.core.data.synthetic import make_blobs_dataset

    if path.exists():
        return path
    (slab, _), = make_blobs_dataset(1, shape=(32, 256, 256), ndim=3, seed=4)
    slab = slab.astype(np.uint16) * 200
    volume = tifffile.memmap(path, shape=shape, dtype=np.uint16)
    for z in range(0, shape[0], 32):
        for y in range(0, shape[1], 256):
            for x in range(0, shape[2], 256):
                volume[z:z + 32, y:y + 256, x:x + 256] = slab[:shape[0] - z]
        volume.flush()
    del volume
    return path


PARTIAL_3D = """
import sys
from pathlib import Path
from napari_diffseg.core import device
from napari_diffseg.core.prediction import large
from napari_diffseg.core.prediction.model import SegmentationModel
device.configure_threads(None, spare_core=False)
model = SegmentationModel.load(Path(sys.argv[1]), bf16=device.bf16_supported(device.select_device("cpu")),
                               backend="auto")  # as diffseg predict: OpenVINO where installed
run = large.predict_large(model, large.open_lazy(Path(sys.argv[2])), Path(sys.argv[3]))
for progress in run:
    print(f"block {progress.done} of {progress.total}", file=sys.stderr, flush=True)
    if progress.done >= int(sys.argv[4]):
        run.close()
        break
"""


def agreement(model_dir: Path, path: Path, work: Path) -> float:
    """Fraction of pixels where block-by-block prediction equals in-memory prediction of the same image."""
    import zarr

    from napari_diffseg.core import device

    from napari_diffseg.core.prediction import large
    from napari_diffseg.core.prediction.model import SegmentationModel
    from napari_diffseg.core.prediction.predict import run_to_completion

    device.configure_threads(None, spare_core=False)
    model = SegmentationModel.load(model_dir, bf16=device.bf16_supported(device.select_device("cpu")),
                                   backend="auto")
    in_memory = model.predict(tifffile.imread(path)).mask
    blocks = run_to_completion(large.predict_large(model, large.open_lazy(path), work / "agreement.zarr"))
    return float((np.asarray(zarr.open_array(str(blocks), mode="r")) == in_memory).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/diffseg_large")
    parser.add_argument("--train-budget", type=float, default=60)
    parser.add_argument("--sizes-2d", type=int, nargs="*", default=[8192, 20000],
                        help="2D mosaic sizes (none: the 3D volume alone, no 2D model)")
    parser.add_argument("--shape-3d", type=int, nargs=3, default=[200, 2048, 2048])
    parser.add_argument("--blocks-3d", type=int, default=3)
    parser.add_argument("--layout-3d", default="auto", choices=["auto", "2d", "3d", "both"],
                        help="the volume model's layout (auto: the planner's, 2D slices on a CPU)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from napari_diffseg.core.prediction import openvino_backend

    backend = "OpenVINO (the [openvino] extra)" if openvino_backend.available() else "torch"
    lines = [f"{machine()}; load average {load_average()[0]:.1f} at the start; prediction backend {backend}", ""]
    model_2d, model_3d = train_models(work, args.train_budget, args.layout_3d, bool(args.sizes_2d))
    if args.sizes_2d:
        share = agreement(model_2d, mosaic_2d(work / "fits_4096.tif", 4096), work)
        lines += [f"Block-by-block vs in-memory prediction of a 4096 x 4096 mosaic (2048-px blocks, 128-px halo): "
                  f"{100 * share:.3f} % of pixels equal.", ""]
    lines += ["| input | size on disk | what ran | peak RSS | wall time | megapixels/s |", "|---|---:|---|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    for size in args.sizes_2d:
        path = mosaic_2d(work / f"mosaic_{size}.tif", size)
        run = timed([PYTHON, "-m", "napari_diffseg.cli", "predict", str(model_2d), str(path), "--out",
                     str(work / f"pred_{size}"), "--quiet"])
        assert run["code"] == 0, run["tail"]
        lines.append(f"| 2D {size} x {size} uint16 | {path.stat().st_size / 2**30:.2f} GiB | `diffseg predict`, whole "
                     f"image (zarr + tiled TIFF out) | {run['peak_mb']:.0f} MB | {run['seconds']:.0f} s | "
                     f"{size * size / 1e6 / run['seconds']:.2f} |")
        print(lines[-1], flush=True)
    shape = tuple(args.shape_3d)
    path = volume_3d(work / "volume_{}x{}x{}.tif".format(*shape), shape)
    run = timed([PYTHON, "-c", PARTIAL_3D, str(model_3d), str(path), str(work / "pred_3d.zarr"), str(args.blocks_3d)])
    assert run["code"] == 0, run["tail"]
    blocks = re.findall(r"block (\d+) of (\d+)", run["tail"])
    done, total = blocks[-1] if blocks else ("?", "?")
    lines.append(f"| 3D {' x '.join(map(str, shape))} uint16 | {path.stat().st_size / 2**30:.2f} GiB | "
                 f"`core.prediction.large.predict_large` (layout {args.layout_3d}), first {done} of {total} blocks, "
                 f"then cancelled | {run['peak_mb']:.0f} MB "
                 f"| {run['seconds']:.0f} s | |")
    print(lines[-1], flush=True)
    print_report(lines, args.out)


if __name__ == "__main__":
    main()
