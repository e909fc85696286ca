"""Objects benchmark (#28): instance segmentation of dsb2018 nuclei from K labelled images.

Arms, each scored with the StarDist / DSB 2018 object metrics (``core.objects.metrics``: AP = TP / (TP + FP + FN)
at IoU 0.5 and its mean over 0.5:0.95, object F1 at 0.5, the count error per image):
- DiffSeg objects: the default semi-supervised method on the three-class target (background, interior, boundary) of
  the instance masks, decoded by the seeded watershed (what ``diffseg train --objects`` / ``predict`` do);
- labels-only objects: the same network and target on the K labelled images alone (paired: same subset, seed);
- regions + CC: today's regions model (two classes, same method) and connected components of its mask;
- forest + CC: the suite's random-forest pixel classifier (``_common.fit_balanced_forest``) and connected
  components (APOC's object segmenter);
- Otsu + watershed: a classic pipeline as CellProfiler's IdentifyPrimaryObjects does it (Gaussian smoothing, Otsu
  threshold, holes filled, distance transform, its local maxima as seeds, seeded watershed); no training.

Data: a dsb2018 folder (default ../shared/data_large/dsb2018: the developer set's 20 test images, a pool of 214;
``--data ../shared/data/dsb2018`` for the 30-image pool; ``--data ../shared/data_large/glas``: GlaS, whose masks are
binary, so its objects are the connected components of the ground truth, as the issue asks, with a warning per
mask; the classic arm thresholds the mean of the colour channels, which suits dark-background fluorescence, not
H&E); K labelled = subset ``s`` of the pool
(``quality_stats.labelled_subset``: subset 0 = the first K), the rest unlabelled. Scores on the test split and on
the first ``--collection`` unlabelled images of the pool (what a plugin user gets). Training budgets are CPU seconds
of this process (``budget_clock="cpu"``, one torch thread), as benchmarks/quality.py measures them.

    python benchmarks/objects.py --labelled 2 --seeds 0 --budget 120 --part pilot
    python benchmarks/objects.py --labelled 1 2 5 --seeds 0 1 2 --subsets 0 1 2 --budget 180 --part full

Writes benchmarks/objects/results_<part>.json (after every arm) and prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path
import tempfile
import time

import numpy as np

from _common import REPO, fit_balanced_forest, load_average, machine, rf_features, versions, RF_MAX_PIXELS, \
    RF_PIXELS_PER_IMAGE
from quality_stats import bootstrap_ci, labelled_subset, paired_differences

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_DATA = REPO.parent / "shared" / "data_large" / "dsb2018"
OBJECTS, LABELS_ONLY, REGIONS, FOREST, CLASSIC = ("DiffSeg objects", "labels-only objects", "regions + CC",
                                                   "forest + CC", "Otsu + watershed")
ARMS = (OBJECTS, LABELS_ONLY, REGIONS, FOREST, CLASSIC)
Pair = tuple[np.ndarray, np.ndarray, str]


def load_instances(root: Path) -> tuple[list[Pair], list[Pair]]:
    """(pool, test) of (raw image, instance mask, id), the pool in labelling order."""
    from napari_diffseg.core.data.io import read_image
    from napari_diffseg.core.objects.files import read_instances

    split = json.loads((root / "split.json").read_text())

    def pairs(ids):
        return [(read_image(root / "images" / f"{i}.tif"), read_instances(root / "masks" / f"{i}.tif"), i) for i in ids]

    return pairs(split["train"]), pairs(split["test"])


def score(predictions: list[np.ndarray], truth: list[np.ndarray]) -> dict:
    """Object scores pooled over the images (TP / FP / FN summed) and the mean per-image AP@0.5."""
    from napari_diffseg.core.objects.metrics import object_scores, pooled_scores

    pooled = pooled_scores(list(zip(truth, predictions)))
    per_image = [object_scores(t, p) for t, p in zip(truth, predictions)]
    pooled["mean_image_ap50"] = float(np.mean([s["ap50"] for s in per_image]))
    pooled["mean_image_ap_50_95"] = float(np.mean([s["ap_50_95"] for s in per_image]))
    return pooled


# ---------------------------------------------------------------------------------------------- the arms
def train_arm(pool: list[Pair], labelled: list[int], arm: str, budget: float, seed: int, out: Path) -> tuple:
    """Train one network arm; returns (a function image -> instance mask, the training facts)."""
    from napari_diffseg.core import device as devices
    from napari_diffseg.core.data.training_set import training_data_from_arrays
    from napari_diffseg.core.method.config import TrainConfig
    from napari_diffseg.core.method.training import Progress, train
    from napari_diffseg.core.objects.files import objects_training_data_from_arrays
    from napari_diffseg.core.prediction.model import SegmentationModel

    objects = arm in (OBJECTS, LABELS_ONLY)
    config = TrainConfig(budget_seconds=budget, budget_clock="cpu", threads=1, seed=seed,
                         labels_only=arm == LABELS_ONLY, num_classes=3 if objects else 2)
    devices.configure_threads(1)
    images, names = [p[0] for p in pool], [p[2] for p in pool]
    if objects:
        data = objects_training_data_from_arrays(images, {i: pool[i][1] for i in labelled}, names)
    else:
        data = training_data_from_arrays(images, {i: pool[i][1] > 0 for i in labelled}, names)
    cpu, wall, steps = time.process_time(), time.perf_counter(), 0
    for event in train(data, config, out):
        if isinstance(event, Progress):
            steps = event.step
    facts = {"steps": steps, "cpu_seconds": time.process_time() - cpu, "wall_seconds": time.perf_counter() - wall}
    card = json.loads((out / "model_card.json").read_text())
    facts["optimisation_seconds"] = card["training"]["elapsed_seconds"]
    model = SegmentationModel.load(out, bf16=devices.bf16_supported("cpu"))
    return model, facts


# extra decodings of the same trained model: keyword arguments of probabilities_to_instances, "mirror" to predict
# with test-time mirroring
DECODERS = {"seed 0.3": {"seed_threshold": 0.3}, "seed 0.5": {"seed_threshold": 0.5}, "mirrored": {"mirror": True},
            "no split": {"split": False, "min_size": 4}}  # "no split": the decoding before seeds were split


def decoded_arms(model, arm: str, decoders: list[str]) -> dict[str, object]:
    """The trained ``model``'s predictions as instance masks: the default decoding under ``arm``'s name and, for the
    objects arms, each extra decoder of ``decoders`` under "arm, decoder" (the same model, so the pairs are free of
    training noise); one function image -> {name: instances}."""
    from napari_diffseg.core.objects.decode import probabilities_to_instances, semantic_to_instances

    objects = arm in (OBJECTS, LABELS_ONLY)

    def predict(image: np.ndarray) -> dict[str, np.ndarray]:
        prediction = model.predict(image)
        if not objects:
            return {arm: semantic_to_instances(prediction.mask)}
        out = {arm: probabilities_to_instances(prediction.probabilities)}
        mirrored = None
        for name in decoders:
            options = dict(DECODERS[name])
            mirror = options.pop("mirror", False)
            if mirror and mirrored is None:
                mirrored = model.predict(image, mirror=True).probabilities
            out[f"{arm}, {name}"] = probabilities_to_instances(mirrored if mirror else prediction.probabilities,
                                                               **options)
        return out

    return predict


def forest_arm(pool: list[Pair], labelled: list[int], seed: int) -> tuple:
    from napari_diffseg.core.objects.decode import semantic_to_instances

    per_class = min(RF_PIXELS_PER_IMAGE, RF_MAX_PIXELS // len(labelled)) // 2
    cpu = time.process_time()
    training = [(rf_features(pool[i][0]).reshape(pool[i][1].size, -1), pool[i][1].ravel() > 0) for i in labelled]
    forest = fit_balanced_forest(training, per_class, seed)
    facts = {"steps": 0, "cpu_seconds": time.process_time() - cpu}

    def predict(image: np.ndarray) -> np.ndarray:
        shape = image.shape[:2]
        if True not in forest.classes_:
            return np.zeros(shape, np.uint16)
        column = list(forest.classes_).index(True)
        foreground = forest.predict_proba(rf_features(image).reshape(int(np.prod(shape)), -1))[:, column] > 0.5
        return semantic_to_instances(foreground.reshape(shape))

    return predict, facts


def classic_instances(image: np.ndarray, sigma: float = 1.0, min_distance: int = 4, min_size: int = 10) -> np.ndarray:
    """Otsu + distance transform + seeded watershed (CellProfiler's IdentifyPrimaryObjects with shape declumping)."""
    from scipy import ndimage
    from skimage import feature, filters, measure, morphology, segmentation

    from napari_diffseg.core.objects.decode import relabel_sequential

    grey = np.asarray(image, np.float32)
    if grey.ndim == 3:
        grey = grey.mean(axis=-1)
    smooth = filters.gaussian(grey, sigma=sigma, preserve_range=True)
    if smooth.max() == smooth.min():
        return np.zeros(grey.shape, np.uint16)
    foreground = ndimage.binary_fill_holes(smooth > filters.threshold_otsu(smooth))
    components = measure.label(foreground)
    sizes = np.bincount(components.ravel())
    foreground = (sizes >= min_size)[components] & foreground  # specks below min_size are dropped
    components = measure.label(foreground)
    distance = ndimage.distance_transform_edt(foreground)
    peaks = feature.peak_local_max(distance, min_distance=min_distance, labels=components, exclude_border=False)
    markers = np.zeros(grey.shape, np.int64)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    markers = measure.label(morphology.dilation(markers > 0, morphology.disk(1)) & foreground) if len(peaks) else markers
    instances = segmentation.watershed(-distance, markers, mask=foreground)
    return relabel_sequential(instances)


# ---------------------------------------------------------------------------------------------- the run
def _shown(root: Path) -> str:
    """The data folder as '<shared folder>/dsb2018' (data or data_large), wherever the checkout is."""
    return "/".join(root.resolve().parts[-2:])


def run(args) -> tuple[list[dict], dict]:
    root = Path(args.data)
    pool, test = load_instances(root)
    meta = {"command": "python benchmarks/objects.py " + " ".join(args.argv),
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine(), "versions": versions(),
            "load_start": [round(v, 2) for v in load_average()], "data": _shown(root),
            "pool": len(pool), "test": len(test), "budget_cpu_seconds": args.budget}
    if os.environ.get("DIFFSEG_COMMIT"):  # run from an exported tree (git archive), which has no .git
        meta["versions"]["git"] = os.environ["DIFFSEG_COMMIT"]
    results: list[dict] = []
    began = time.perf_counter()
    out_file = Path(args.out) / f"results_{args.part}.json"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    for n in args.labelled:
        for subset in args.subsets:
            labelled = labelled_subset(len(pool), n, subset)
            collection = [i for i in range(len(pool)) if i not in set(labelled)][: args.collection]
            for seed in args.seeds:
                for arm in args.arms:
                    if arm == CLASSIC and seed != args.seeds[0]:
                        continue  # no training, no randomness: one run per subset
                    with tempfile.TemporaryDirectory() as folder:
                        if arm == FOREST:
                            single, facts = forest_arm(pool, labelled, seed)
                        elif arm == CLASSIC:
                            single, facts = classic_instances, {"steps": 0, "cpu_seconds": 0.0}
                        else:
                            model, facts = train_arm(pool, labelled, arm, args.budget, seed, Path(folder))
                            predict = decoded_arms(model, arm, args.decoders)
                        if arm in (FOREST, CLASSIC):
                            predict = lambda image, single=single, arm=arm: {arm: single(image)}  # noqa: E731
                        started = time.perf_counter()
                        rows: dict[str, dict] = {}
                        for where, indices, pairs in (("test", None, test), ("collection", collection, pool)):
                            chosen = pairs if indices is None else [pairs[i] for i in indices]
                            predicted = [predict(p[0]) for p in chosen]
                            for name in predicted[0]:
                                row = rows.setdefault(name, {"method": name, "n": n, "subset": subset, "seed": seed,
                                                             "labelled": labelled, **facts})
                                scored = score([p[name] for p in predicted], [p[1] for p in chosen])
                                row.update({f"{where}_{key}": value for key, value in scored.items()})
                        for row in rows.values():
                            row["predict_seconds"] = time.perf_counter() - started
                    results.extend(rows.values())
                    for result in rows.values():
                        print(f"[{(time.perf_counter() - began) / 60:5.1f} min] {result['method']:20s} K={n} subset "
                              f"{subset} seed {seed}: test AP50 {result['test_ap50']:.3f} AP "
                              f"{result['test_ap_50_95']:.3f} F1 {result['test_f1']:.3f} |count err| "
                              f"{result['test_count_error_abs']:.1f}; collection AP50 {result['collection_ap50']:.3f} "
                              f"({facts['steps']} steps)", flush=True)
                    meta.update(wall_minutes=round((time.perf_counter() - began) / 60, 2),
                                load_end=[round(v, 2) for v in load_average()])
                    out_file.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    return results, meta


def table(results: list[dict], meta: dict) -> str:
    lines = [f"{Path(meta['data']).name} objects ({meta['data']}: pool {meta['pool']}, test {meta['test']}); budget "
             f"{meta['budget_cpu_seconds']:g} CPU-s per trained arm; {meta['machine']}; load "
             f"{meta['load_start']} -> {meta.get('load_end')}", "",
             "| arm | K | subset | seed | test AP@0.5 | test AP 0.5:0.95 | test F1 | test mean abs count error | "
             "collection AP@0.5 | collection AP 0.5:0.95 | steps |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['method']} | {r['n']} | {r['subset']} | {r['seed']} | {r['test_ap50']:.3f} | "
                     f"{r['test_ap_50_95']:.3f} | {r['test_f1']:.3f} | {r['test_count_error_abs']:.1f} | "
                     f"{r['collection_ap50']:.3f} | {r['collection_ap_50_95']:.3f} | {r['steps']} |")
    return "\n".join(lines)


def summary(results: list[dict]) -> str:
    """Per K: each arm's mean (sd) over its runs, and the paired differences (AP@0.5 points, mean [95 % bootstrap
    CI]) of the objects arm against labels-only (same subset and seed), against each baseline (same subset; the
    seed too where the baseline has one: the untrained Otsu arm is paired with every seed of its subset, so its
    interval is narrower than the runs warrant) and against its own earlier decoding (the same trained models)."""
    lines = []
    for n in sorted({r["n"] for r in results}):
        runs = [r for r in results if r["n"] == n]
        lines += [f"K = {n}", "", "| arm | runs | test AP@0.5 | test AP 0.5:0.95 | collection AP@0.5 | "
                  "collection AP 0.5:0.95 | steps |", "|---|---|---|---|---|---|---|"]
        arms = list(dict.fromkeys(r["method"] for r in runs))
        for arm in arms:
            mine = [r for r in runs if r["method"] == arm]

            def cell(key, digits=3):
                values = np.array([r[key] for r in mine], float)
                mean, sd = f"{values.mean():.{digits}f}", f"{values.std():.{digits}f}"
                return f"{mean} ({sd})" if len(values) > 1 else mean

            lines.append(f"| {arm} | {len(mine)} | {cell('test_ap50')} | {cell('test_ap_50_95')} | "
                         f"{cell('collection_ap50')} | {cell('collection_ap_50_95')} | {cell('steps', 0)} |")
        lines += ["", "| objects arm vs | pairs | test AP@0.5 | collection AP@0.5 |", "|---|---|---|---|"]
        ours = [r for r in runs if r["method"] == OBJECTS]
        for other in arms:
            if other == OBJECTS or not ours:
                continue
            theirs = [r for r in runs if r["method"] == other]
            pair_on = ("subset",) if other == CLASSIC else ("subset", "seed")
            cells = []
            for key in ("test_ap50", "collection_ap50"):
                differences = [100 * d for d in paired_differences(ours, theirs, key, pair_on)]
                mean, low, high = bootstrap_ci(differences)
                cells.append(f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]")
            lines.append(f"| {other} | {len(differences)} | {cells[0]} | {cells[1]} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="a dsb2018 folder (images/, masks/, split.json)")
    parser.add_argument("--labelled", nargs="+", type=int, default=[2])
    parser.add_argument("--subsets", nargs="+", type=int, default=[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--budget", type=float, default=120.0, help="CPU seconds per trained arm (default 120)")
    parser.add_argument("--collection", type=int, default=40,
                        help="score on the first N unlabelled images of the pool too (default 40)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--decoders", nargs="*", default=[], choices=list(DECODERS),
                        help="also score the objects arms' models with these decodings (the same trained model: "
                             "seed thresholds, test-time mirroring)")
    parser.add_argument("--summary", nargs="+", metavar="JSON",
                        help="print the summary of these results files (paired differences with bootstrap CIs) "
                             "and exit")
    parser.add_argument("--part", default="run")
    parser.add_argument("--out", default=str(BENCH_DIR / "objects"))
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.summary:
        print(summary([r for path in args.summary for r in json.loads(Path(path).read_text())["results"]]))
        return 0
    results, meta = run(args)
    print(table(results, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
