"""Objects of an image larger than memory (#28): block-by-block decoding of a three-class mask, its peak memory and
whether every object keeps one id across block borders.

A synthetic three-class zarr mask of touching discs (a grid with jitter) is written block by block; the boundary
between touching discs is left out for a share of the pairs (``--joined``), as an undertrained network leaves it,
so their interiors join into one seed that the decoding must split at its neck. ``core.objects.blocks.decode_large``
then writes the instance TIFF window by window. Reported: the objects found against the discs drawn, the objects
wider than the margin (``cut``), AP@0.5 against the discs, wall seconds and the process's peak RSS (``ru_maxrss``),
before and after the decoding.

    python benchmarks/objects_large.py --size 6144 --radius 7 --out benchmarks/objects/large.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import resource
import sys
import tempfile
import time

import numpy as np

from _common import load_average, machine, versions


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def draw_discs(size: int, radius: int, rng: np.random.Generator, band: int = 256):
    """Instance ids of jittered touching discs on a (size, size) grid, drawn band by band (a band's ids: yielded
    with its row offset); neighbours are 2 * radius - 1 px apart, so they touch."""
    step = 2 * radius - 1
    centres_y = np.arange(radius, size - radius, step)
    centres_x = np.arange(radius, size - radius, step)
    ids = np.arange(1, len(centres_y) * len(centres_x) + 1).reshape(len(centres_y), len(centres_x))
    jitter = rng.integers(-1, 2, size=(len(centres_y), len(centres_x), 2))
    for top in range(0, size, band):
        rows = slice(top, min(size, top + band))
        yy, xx = np.mgrid[rows, 0:size]
        instances = np.zeros(yy.shape, np.uint32)
        near = np.flatnonzero((centres_y + radius + 2 >= rows.start) & (centres_y - radius - 2 < rows.stop))
        for i in near:
            for j in range(len(centres_x)):
                cy, cx = centres_y[i] + jitter[i, j, 0], centres_x[j] + jitter[i, j, 1]
                x0, x1 = max(0, cx - radius), min(size, cx + radius + 1)
                window = (slice(None), slice(x0, x1))
                disc = (yy[window] - cy) ** 2 + (xx[window] - cx) ** 2 <= radius ** 2
                target = instances[window]
                target[disc & (target == 0)] = ids[i, j]
        yield top, instances
    return int(ids.max())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=6144, help="image side in pixels (default 6144)")
    parser.add_argument("--radius", type=int, default=7)
    parser.add_argument("--joined", type=float, default=0.5,
                        help="share of the boundary pixels between touching discs painted interior (default 0.5)")
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)

    import tifffile
    import zarr

    from napari_diffseg.core.objects import blocks, metrics, targets

    rng = np.random.default_rng(0)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        shape = (args.size, args.size)
        classes = zarr.open_array(str(folder / "classes.zarr"), mode="w", shape=shape, dtype=np.uint8,
                                  chunks=(1024, 1024))
        truth = zarr.open_array(str(folder / "truth.zarr"), mode="w", shape=shape, dtype=np.uint32,
                                chunks=(1024, 1024))
        drawn = draw_discs(args.size, args.radius, rng)
        while True:
            try:
                top, band = next(drawn)
            except StopIteration as stop:
                count = stop.value
                break
            band_classes = targets.instances_to_classes(band)
            outer = targets.instances_to_classes((band > 0).astype(np.uint8)) == targets.BOUNDARY
            between = (band_classes == targets.BOUNDARY) & ~outer
            band_classes[between & (rng.random(band.shape) < args.joined)] = targets.INTERIOR
            classes[top:top + band.shape[0]] = band_classes
            truth[top:top + band.shape[0]] = band
        built = time.perf_counter() - started
        rss_before = peak_rss_mb()
        began = time.perf_counter()
        decoding = blocks.decode_large(folder / "classes.zarr", folder / "objects.tif")
        while True:
            try:
                next(decoding)
            except StopIteration as stop:
                decoded = stop.value
                break
        decode_seconds = time.perf_counter() - began
        rss_after = peak_rss_mb()
        objects = tifffile.imread(folder / "objects.tif")
        scores = metrics.pooled_scores([(np.asarray(truth[:]), objects)])
    result = {"command": "python benchmarks/objects_large.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine(), "versions": versions(), "load": [round(v, 2) for v in load_average()],
              "size": args.size, "radius": args.radius, "joined": args.joined, "discs": count,
              "objects": decoded.count, "cut": decoded.cut, "ap50": scores["ap50"], "ap_50_95": scores["ap_50_95"],
              "build_seconds": round(built, 1), "decode_seconds": round(decode_seconds, 1),
              "peak_rss_mb_before_decoding": round(rss_before), "peak_rss_mb": round(rss_after)}
    print(f"{args.size} x {args.size}: {count} discs, {decoded.count} objects decoded, cut {decoded.cut}, AP@0.5 "
          f"{scores['ap50']:.4f} (0.5:0.95 {scores['ap_50_95']:.4f}); decoding {decode_seconds:.1f} s; peak RSS "
          f"{rss_before:.0f} MB before decoding, {rss_after:.0f} MB after (the scoring reads both masks whole: "
          f"after the decoding's figure)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
