"""Quality protocol: does the semi-supervised default beat labels-only, the random forest and how far is it from
the ceiling? (issue: make the unlabelled images pay)

For each dataset (glas, ph2, dsb2018, la_mri_3d from ../shared/data_large: the developer sets with every remaining
public image in the unlabelled pool; isbi2012_em from ../shared/data), K labelled images from fixed subsets of the
pool (subset 0 = the first K of split.json's ``train``, subsets 1, 2 ... = fixed random draws from the whole pool,
``quality_stats.labelled_subset``), the rest of the pool unlabelled, and per (K, subset) several seeds:
- DiffSeg: what ``diffseg train POOL --labels LABELS`` then ``diffseg predict`` do with the default settings
  (``_common.train_model`` / ``SegmentationModel``), plus any ``--variant`` arms (ablations);
- labels only: the same with ``--labels-only`` on the same subset and seed (paired);
- paper (``--paper-too``): the method as the paper describes it (``--preset paper``);
- random forest: the suite's pixel classifier on the same K images (one forest per seed);
- ceiling (``--ceiling``): labels-only with the whole pool labelled, same budget, one per seed.
Two scores per run, both reported: the collection (every unlabelled image of the pool: what a plugin user gets)
and the test images (new stacks); mean per-image Dice, pooled Dice and HD95.

Budgets are CPU seconds of the training process (``budget_clock="cpu"``, one torch thread per run: machine load
cannot move them; the product's own budget stays wall time); each run records its steps, wall seconds and CPU
seconds. Differences are paired (same dataset, K, subset, seed) and reported as the mean with a bootstrap 95 %
confidence interval (``quality_stats.bootstrap_ci``).

    python benchmarks/quality.py --datasets glas --labelled 1 2 --part glas_3min       # one part (~1 h)
    python benchmarks/quality.py --datasets glas ph2 --labelled 2 --budget-2d 900 --seeds 0 --part long
    python benchmarks/quality.py --datasets glas --subsets 0 --seeds 0 --budget-2d 90 \\
        --variant "no cutmix" '{"cutmix": false}' --part screen_cutmix              # a cheap screen
    python benchmarks/quality.py --merge benchmarks/quality/results_*.json           # one report of all parts

Each part writes benchmarks/quality/results_<part>.json (after every finished job) and RESULTS_<part>.md;
``--merge`` writes RESULTS.md from the parts given.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
import datetime
import json
import math
from pathlib import Path
import tempfile
import time

import numpy as np

from _common import (REPO, fit_balanced_forest, load_average, load_split, machine, rf_features, score_masks,
                     train_model, versions, RF_MAX_PIXELS, RF_PIXELS_PER_IMAGE)
from quality_stats import bootstrap_ci, labelled_subset, paired_differences

BENCH_DIR = Path(__file__).resolve().parent
DATA = REPO.parent / "shared" / "data"
DATA_LARGE = REPO.parent / "shared" / "data_large"
DATASETS = ("glas", "ph2", "dsb2018", "isbi2012_em", "la_mri_3d")
THREE_D = ("la_mri_3d",)
STANDARD_BUDGET_2D = 180.0  # CPU seconds: the 3-minute regime (budgets above it for 2D sets are the long regime)
DEFAULT_ARM, LABELS_ONLY, PAPER, CEILING, FOREST = "DiffSeg", "labels only", "paper", "ceiling", "random forest"
PAIR_ON = ("dataset", "n", "subset", "seed")


def dataset_root(dataset: str) -> Path:
    large = DATA_LARGE / dataset
    return large if large.is_dir() else DATA / dataset


# ------------------------------------------------------------------------------------------------ jobs
def _predict_all(model_dir: Path, images: list[np.ndarray], mirror: bool = False) -> list[np.ndarray]:
    from napari_diffseg.core import device as devices
    from napari_diffseg.core.prediction.model import SegmentationModel

    model = SegmentationModel.load(Path(model_dir), bf16=devices.bf16_supported("cpu"))
    return [model.predict(image, mirror=mirror).mask for image in images]


def _scores(prefix: str, predictions: list[np.ndarray], truth: list[np.ndarray]) -> dict:
    if not predictions:
        return {}
    scored = score_masks(predictions, truth)
    return {f"{prefix}_{key}": scored[key] for key in ("mean_dice", "pooled_dice", "mean_hd95", "dice")}


def job_train(params: dict) -> dict:
    """One training and its scores on the collection and the test images, as ``diffseg train`` / ``predict`` do."""
    import time as clock

    from napari_diffseg.core.method.config import TrainConfig

    pool, test = load_split(Path(params["root"]))
    labelled = params["labelled"]
    overrides = dict(params["overrides"])  # a variant may be a labels-only arm too ({"labels_only": true, ...})
    labels_only = bool(overrides.pop("labels_only", params["labels_only"]))
    config = TrainConfig.from_preset(params.get("preset"), budget_seconds=params["budget"],
                                     budget_clock="cpu", threads=1, labels_only=labels_only,
                                     seed=params["seed"], **overrides)
    wall, cpu = clock.perf_counter(), clock.process_time()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        trained = train_model(pool, labelled, config, out)
        cpu_seconds, wall_seconds = clock.process_time() - cpu, clock.perf_counter() - wall
        card = json.loads((out / "model_card.json").read_text())
        collection = [i for i in range(len(pool)) if i not in set(labelled)] or list(range(len(pool)))
        result = {key: value for key, value in params.items() if key != "root"}
        result.update(
            _scores("collection", _predict_all(out, [pool[i][0] for i in collection]), [pool[i][1] for i in collection]))
        result.update(_scores("test", _predict_all(out, [p[0] for p in test]), [p[1] for p in test]))
        if params.get("mirror_too"):  # the same model predicted with test-time mirroring: a pair no load can move
            began = clock.process_time()
            if params["mirror_too"] == "all":
                result.update(_scores("collection_mirror", _predict_all(out, [pool[i][0] for i in collection], True),
                                      [pool[i][1] for i in collection]))
            result.update(_scores("test_mirror", _predict_all(out, [p[0] for p in test], True),
                                  [p[1] for p in test]))
            result["mirror_cpu_seconds"] = clock.process_time() - began
        result.update(steps=trained["steps"], optimisation_seconds=card["training"]["elapsed_seconds"],
                      overhead_seconds=card["training"]["overhead_seconds"], cpu_seconds=cpu_seconds,
                      wall_seconds=wall_seconds, working_scale=card.get("working_scale"),
                      patch_size=card.get("patch_size"), collection_size=len(collection),
                      layout=(card.get("plan") or {}).get("layout"), plan=(card.get("plan") or {}).get("text"),
                      collapse=trained["collapse"])
    result["steps_per_second"] = result["steps"] / max(1e-9, result["optimisation_seconds"])
    return result


def job_forest(params: dict) -> dict:
    """Random forests (one per seed) on the subset's labelled pixels, scored on the collection and the test images
    (each image's features computed once for every seed's forest)."""
    pool, test = load_split(Path(params["root"]))
    labelled = params["labelled"]
    per_class = min(RF_PIXELS_PER_IMAGE, RF_MAX_PIXELS // len(labelled)) // 2
    began = time.perf_counter()
    training = [(rf_features(pool[i][0]).reshape(pool[i][1].size, -1), pool[i][1].ravel() > 0) for i in labelled]
    forests = [fit_balanced_forest(training, per_class, seed) for seed in params["seeds"]]

    def predict(image: np.ndarray, shape) -> list[np.ndarray]:
        flat = rf_features(image).reshape(int(np.prod(shape)), -1)
        masks = []
        for forest in forests:
            if True not in forest.classes_:
                masks.append(np.zeros(shape, bool))
            else:
                column = list(forest.classes_).index(True)
                masks.append(forest.predict_proba(flat)[:, column].reshape(shape) > 0.5)
        return masks

    collection = [i for i in range(len(pool)) if i not in set(labelled)]
    collection_masks = [predict(pool[i][0], pool[i][1].shape) for i in collection]
    test_masks = [predict(image, mask.shape) for image, mask, _ in test]
    results = []
    for number, seed in enumerate(params["seeds"]):
        result = {key: value for key, value in params.items() if key not in ("root", "seeds")}
        result.update(seed=seed, labels_only=False, steps=0, steps_per_second=math.nan)
        result.update(_scores("collection", [m[number] for m in collection_masks], [pool[i][1] for i in collection]))
        result.update(_scores("test", [m[number] for m in test_masks], [mask for _, mask, _ in test]))
        results.append(result)
    for result in results:
        result["wall_seconds"] = (time.perf_counter() - began) / len(results)
    return {"forest_runs": results}


def run_job(job: tuple[str, dict]) -> dict:
    kind, params = job
    return job_forest(params) if kind == "forest" else job_train(params)


def plan(args) -> list[tuple[str, dict]]:
    """Training jobs of one (dataset, K, subset, seed) next to each other (so the two workers run the paired arms
    side by side), then the ceilings, then the forests."""
    jobs, ceilings, forests = [], [], []
    for dataset in args.datasets:
        root = dataset_root(dataset)
        pool_size = len(json.loads((root / "split.json").read_text())["train"])
        budget = args.budget_3d if dataset in THREE_D else args.budget_2d
        common = {"dataset": dataset, "root": str(root), "budget": budget}
        for n in args.labelled:
            for subset in args.subsets:
                labelled = labelled_subset(pool_size, n, subset)
                if not args.no_forest:
                    forests.append(("forest", {**common, "n": n, "subset": subset, "labelled": labelled,
                                               "seeds": list(args.seeds), "method": FOREST}))
                for seed in args.seeds:
                    arms = [] if args.no_default else [(DEFAULT_ARM, False, {}, None)]
                    arms += [(name, False, overrides, None) for name, overrides in args.variants]
                    if args.paper_too:
                        arms.append((PAPER, False, {}, "paper"))
                    if not args.no_labels_only:
                        arms.append((LABELS_ONLY, True, {}, None))
                    for method, labels_only, overrides, preset in arms:
                        jobs.append(("train", {**common, "n": n, "subset": subset, "seed": seed,
                                               "mirror_too": args.mirror_too,
                                               "labelled": labelled, "labels_only": labels_only, "method": method,
                                               "overrides": overrides, "preset": preset}))
        if args.ceiling:
            for seed in args.seeds:
                ceilings.append(("train", {**common, "n": pool_size, "subset": 0, "seed": seed,
                                           "labelled": list(range(pool_size)), "labels_only": True,
                                           "method": CEILING, "overrides": {}, "preset": None}))
    return jobs + ceilings + forests


# ---------------------------------------------------------------------------------------------- report
def _mean_sd(values) -> tuple[float, float]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _cell(values, digits=3) -> str:
    mean, sd = _mean_sd(values)
    return "n/a" if math.isnan(mean) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _ci_cell(differences) -> str:
    mean, low, high = bootstrap_ci(differences)
    if math.isnan(mean):
        return "n/a"
    if math.isnan(low):
        return f"{100 * mean:+.1f} (n={len(differences)}, no CI)"
    return f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] (n={len(differences)})"


def comparison(results: list[dict], dataset: str, n: int, ours: str, baseline: str, score: str):
    """Paired differences of ``score`` between two arms in one setting."""
    mine = [r for r in results if r["dataset"] == dataset and r["n"] == n and r["method"] == ours]
    theirs = [r for r in results if r["dataset"] == dataset and r["n"] == n and r["method"] == baseline]
    return paired_differences(mine, theirs, score, PAIR_ON)


def settings_of(results: list[dict]) -> list[tuple[str, int]]:
    seen = []
    for dataset in DATASETS:
        for n in sorted({r["n"] for r in results if r["dataset"] == dataset and r["method"] != CEILING}):
            seen.append((dataset, n))
    return seen


def report(results: list[dict], metas: list[dict]) -> str:
    lines = ["# Quality protocol: DiffSeg vs labels-only, the random forest and the ceiling", ""]
    for meta in metas:
        lines.append(f"- `{meta['command']}` on {meta['date']} ({meta['wall_minutes']:.0f} min wall, load "
                     f"{meta['load_start']} -> {meta.get('load_end')}); {meta['machine']}; git {meta['versions'].get('git')}")
    lines += ["", "Budgets are CPU seconds of the training process (one torch thread). Collection = every "
              "unlabelled image of the pool (what a plugin user gets); test = the held-apart test images. Dice is the "
              "mean over images per run, then mean ± sd over runs (subsets x seeds); differences are paired per "
              "(subset, seed), in Dice points, with a bootstrap 95 % CI of the mean (with fewer than ~6 pairs the percentile "
              "bootstrap cannot reach beyond the values seen: read those intervals as the range of the pairs, not as "
              "a confidence statement; one pair has none).", ""]
    regimes = sorted({r["budget"] for r in results})
    for budget in regimes:
        part = [r for r in results if r["budget"] == budget]
        if len(regimes) > 1:
            lines += ["", f"## {budget:g} CPU seconds per training", ""]
        lines += regime_section(part, long_regime=budget > STANDARD_BUDGET_2D and not any(
            r["dataset"] in THREE_D for r in part))
    lines += ["", collapse_line(results)]
    return "\n".join(lines) + "\n"


def regime_section(results: list[dict], long_regime: bool) -> list[str]:
    """The tables, paired differences and bar of the runs of one budget (regimes are never pooled or paired
    across budgets)."""
    lines = []
    arms = [a for a in dict.fromkeys(r["method"] for r in results) if a != CEILING]
    lines += ["| dataset | K | arm | runs | collection Dice | collection pooled | collection HD95 | test Dice | "
              "test pooled | test HD95 | steps | steps/s | CPU s | wall s |", "|" + "---|" * 14]
    for dataset, n in settings_of(results):
        for arm in arms:
            rows = [r for r in results if r["dataset"] == dataset and r["n"] == n and r["method"] == arm]
            if rows:
                lines.append(f"| {dataset} | {n} | {arm} | {len(rows)} | {_cell([r.get('collection_mean_dice') for r in rows])} | "
                             f"{_cell([r.get('collection_pooled_dice') for r in rows])} | "
                             f"{_cell([r.get('collection_mean_hd95') for r in rows], 1)} | "
                             f"{_cell([r.get('test_mean_dice') for r in rows])} | "
                             f"{_cell([r.get('test_pooled_dice') for r in rows])} | "
                             f"{_cell([r.get('test_mean_hd95') for r in rows], 1)} | "
                             f"{_cell([r['steps'] for r in rows], 0)} | "
                             f"{_cell([r['steps_per_second'] for r in rows], 2)} | "
                             f"{_cell([r.get('cpu_seconds') for r in rows], 0)} | "
                             f"{_cell([r['wall_seconds'] for r in rows], 0)} |")
    ceilings = [r for r in results if r["method"] == CEILING]
    if ceilings:
        lines += ["", "Ceiling (labels-only with the whole pool labelled, same budget; its collection score is on "
                  "images it was trained on):", "", "| dataset | runs | collection Dice | test Dice |", "|---|---|---|---|"]
        for dataset in DATASETS:
            rows = [r for r in ceilings if r["dataset"] == dataset]
            if rows:
                lines.append(f"| {dataset} | {len(rows)} | {_cell([r.get('collection_mean_dice') for r in rows])} | "
                             f"{_cell([r.get('test_mean_dice') for r in rows])} |")
    others = [a for a in arms if a not in (LABELS_ONLY, FOREST)]
    lines += ["", "### Paired differences (Dice points, mean [95 % CI])", "",
              "| dataset | K | arm | vs labels only: collection | vs labels only: test | vs forest: collection | "
              "vs forest: test | steps/s ratio to labels only |", "|" + "---|" * 8]
    for dataset, n in settings_of(results):
        for arm in others:
            cells = [_ci_cell(comparison(results, dataset, n, arm, baseline, score))
                     for baseline in (LABELS_ONLY, FOREST) for score in ("collection_mean_dice", "test_mean_dice")]
            speed = [r["steps_per_second"] for r in results if r["dataset"] == dataset and r["n"] == n]
            ours = [r["steps_per_second"] for r in results if r["dataset"] == dataset and r["n"] == n and r["method"] == arm]
            base = [r["steps_per_second"] for r in results if r["dataset"] == dataset and r["n"] == n
                    and r["method"] == LABELS_ONLY]
            ratio = f"{np.mean(ours) / np.mean(base):.2f}" if ours and base and speed else "n/a"
            if any(c != "n/a" for c in cells):
                lines.append(f"| {dataset} | {n} | {arm} | " + " | ".join(cells) + f" | {ratio} |")
    lines += mirror_lines(results)
    lines += ["", "### The bar (quality issue)", ""] + (long_bar_lines(results) if long_regime else bar_lines(results))
    return lines


def mirror_lines(results: list[dict]) -> list[str]:
    """Test-time mirroring against one pass, on the same trained models (``--mirror-too``): paired differences."""
    mirrored = [r for r in results if "test_mirror_mean_dice" in r]
    if not mirrored:
        return []
    lines = ["", "### Test-time mirroring (`diffseg predict --mirror`), the same trained models predicted both ways",
             "", "| dataset | K | arm | runs | test Dice: one pass -> mirrored | mirrored - one pass: test | "
             "mirrored - one pass: collection |", "|" + "---|" * 7]
    for dataset, n in settings_of(mirrored):
        for arm in dict.fromkeys(r["method"] for r in mirrored):
            rows = [r for r in mirrored if r["dataset"] == dataset and r["n"] == n and r["method"] == arm]
            if not rows:
                continue
            cells = []
            for score in ("test", "collection"):
                diffs = [r[f"{score}_mirror_mean_dice"] - r[f"{score}_mean_dice"] for r in rows
                         if f"{score}_mirror_mean_dice" in r]
                cells.append(_ci_cell(diffs) if diffs else "not scored")
            lines.append(f"| {dataset} | {n} | {arm} | {len(rows)} | {_cell([r['test_mean_dice'] for r in rows])} -> "
                         f"{_cell([r['test_mirror_mean_dice'] for r in rows])} | " + " | ".join(cells) + " |")
    return lines


def long_bar_lines(results: list[dict]) -> list[str]:
    """The long regime's bar: DiffSeg ahead of labels-only by >= 3 collection points (mean over 3 runs) on glas
    and ph2."""
    lines = []
    for dataset in ("glas", "ph2"):
        collection = comparison(results, dataset, 2, DEFAULT_ARM, LABELS_ONLY, "collection_mean_dice")
        if not collection:
            lines.append(f"- long regime, {dataset} K=2: not in these results")
            continue
        mean = 100 * float(np.mean(collection))
        lines.append(f"- long regime, {dataset} K=2: collection {_ci_cell(collection)} (bar: >= +3 over 3 runs; "
                     f"{len(collection)} of 3 runs: " + ("met" if mean >= 3 and len(collection) >= 3 else "on track" if mean >= 3
                                                   else "MISSED" if len(collection) >= 3 else "MISSED so far") + ")")
    return lines


def collapse_line(results: list[dict]) -> str:
    """Runs whose kept model's masks of its labelled images collapsed (``FitReport.collapse``), or that none did;
    runs of results written before the check existed are counted as not checked."""
    trained = [r for r in results if r["method"] != FOREST]
    checked = [r for r in trained if "collapse" in r]
    collapsed = [f"{r['dataset']} K={r['n']} subset {r['subset']} seed {r['seed']} {r['method']}: {r['collapse']}"
                 for r in checked if r["collapse"]]
    head = f"Collapsed runs (the run's own check, `FitReport.collapse`): {len(collapsed)} of {len(checked)} checked"
    unchecked = f"; {len(trained) - len(checked)} run(s) predate the check" if len(checked) < len(trained) else ""
    return head + unchecked + (": " + "; ".join(collapsed) if collapsed else "")


def bar_lines(results: list[dict]) -> list[str]:
    """The issue's bar, as far as the results given reach (a part that did not run is said to be missing)."""
    lines = []
    present = {r["dataset"] for r in results}
    main = [(d, n) for d in ("glas", "ph2", "dsb2018") for n in (1, 2) if present & {"glas", "ph2", "dsb2018"}]
    lower_bounds, means, test_ok = [], [], []
    for dataset, n in main:
        collection = comparison(results, dataset, n, DEFAULT_ARM, LABELS_ONLY, "collection_mean_dice")
        test = comparison(results, dataset, n, DEFAULT_ARM, LABELS_ONLY, "test_mean_dice")
        if not collection:
            lines.append(f"- {dataset} K={n} (3 minutes): not in these results")
            continue
        mean, low, _ = bootstrap_ci(collection)
        _, test_low, _ = bootstrap_ci(test)
        lower_bounds.append(low)
        means.append(mean)
        test_ok.append(test_low > -0.01)
        lines.append(f"- {dataset} K={n}: collection {_ci_cell(collection)} (CI lower bound > 0: "
                     f"{'yes' if low > 0 else 'NO'}); test {_ci_cell(test)} (lower bound > -1: "
                     f"{'yes' if test_low > -0.01 else 'NO'})")
    if means:
        lines.append(f"- collection: CI lower bound > 0 in {sum(low > 0 for low in lower_bounds)} of {len(means)} "
                     f"settings (bar: 5 of 6), mean {100 * np.mean(means):+.1f} points (bar: >= +3); test lower bound "
                     f"> -1 in {sum(test_ok)} of {len(test_ok)} (bar: all)")
    for dataset in ("isbi2012_em", "la_mri_3d"):
        for n in sorted({r["n"] for r in results if r["dataset"] == dataset and r["method"] == DEFAULT_ARM}):
            diffs = comparison(results, dataset, n, DEFAULT_ARM, LABELS_ONLY, "test_mean_dice")
            _, _, high = bootstrap_ci(diffs)
            lines.append(f"- {dataset} K={n}: vs labels only (test) {_ci_cell(diffs)} (no worse: CI upper bound > 0: "
                         f"{'yes' if high > 0 else 'NO'})")
    for dataset, n in settings_of(results):
        forest = comparison(results, dataset, n, DEFAULT_ARM, FOREST, "test_mean_dice")
        if forest:
            need = -1.0 if dataset == "dsb2018" else 3.0
            mean = 100 * float(np.mean(forest))
            lines.append(f"- {dataset} K={n}: vs forest (test) {mean:+.1f} (bar: {need:+.0f}): "
                         f"{'met' if mean >= need else 'MISSED'}")
    return lines + volume_bar_lines(results)


VOLUME_BAR = {1: 0.65, 2: 0.75}  # the volumes issue: mean test Dice of the default at K = 1 and 2, 6 CPU minutes


def volume_bar_lines(results: list[dict]) -> list[str]:
    """The volumes issue's bar on la_mri_3d: the default's mean test Dice (>= 0.75 at K = 2, >= 0.65 at K = 1), its
    sd over seeds and subsets (<= 0.05 at K = 2), no collapsed run, and >= the forest + 10 points."""
    lines = []
    for n, need in VOLUME_BAR.items():
        rows = [r for r in results if r["dataset"] == "la_mri_3d" and r["n"] == n and r["method"] == DEFAULT_ARM]
        if not rows:
            continue
        mean, sd = _mean_sd([r["test_mean_dice"] for r in rows])
        collapsed = sum(bool(r.get("collapse")) for r in rows)
        text = (f"- volumes, la_mri_3d K={n}: default test Dice {mean:.3f} ± {sd:.3f} over {len(rows)} run(s) "
                f"(bar: >= {need:.2f}: {'met' if mean >= need else f'MISSED by {100 * (need - mean):.1f} points'}")
        if n == 2:
            text += f"; sd <= 0.05: {'met' if sd <= 0.05 else 'MISSED'}"
            forest = comparison(results, "la_mri_3d", n, DEFAULT_ARM, FOREST, "test_mean_dice")
            if forest:
                gain = 100 * float(np.mean(forest))
                text += f"; vs forest {gain:+.1f} (bar: +10: {'met' if gain >= 10 else 'MISSED'})"
        lines.append(text + f"; collapsed runs: {collapsed})")
    return lines


# ------------------------------------------------------------------------------------------------ main
def _flatten(result: dict) -> list[dict]:
    return result["forest_runs"] if "forest_runs" in result else [result]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["glas", "ph2", "dsb2018"], choices=DATASETS)
    parser.add_argument("--labelled", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--subsets", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--budget-2d", type=float, default=180.0, help="CPU seconds per 2D training (default 180)")
    parser.add_argument("--budget-3d", type=float, default=360.0, help="CPU seconds per 3D training (default 360)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--variant", nargs=2, action="append", default=[], metavar=("NAME", "JSON"),
                        help="one more DiffSeg arm with these TrainConfig overrides (repeatable)")
    parser.add_argument("--no-default", action="store_true", help="skip the default DiffSeg arm")
    parser.add_argument("--paper-too", action="store_true", help="also run the paper preset as an arm")
    parser.add_argument("--ceiling", action="store_true", help="also run the ceiling (whole pool labelled)")
    parser.add_argument("--no-forest", action="store_true")
    parser.add_argument("--mirror-too", nargs="?", const="all", choices=("all", "test"), default=None,
                        help="also score every trained model with test-time mirroring: on the collection and the "
                             "test images (all, the default) or on the test images only (test; volumes take 4x "
                             "as long); collection_mirror_*, test_mirror_* in the JSON")
    parser.add_argument("--no-labels-only", action="store_true")
    parser.add_argument("--part", default="run", help="name of this part: results_<part>.json, RESULTS_<part>.md")
    parser.add_argument("--out", default=str(BENCH_DIR / "quality"))
    parser.add_argument("--merge", nargs="+", default=None, help="parts' results_*.json to merge into RESULTS.md")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        results, metas = [], []
        for path in args.merge:
            saved = json.loads(Path(path).read_text())
            if "metas" not in saved and not isinstance(saved.get("meta"), dict):
                continue
            results += saved["results"]
            metas += saved.get("metas", [saved["meta"]])
        text = report(results, metas)
        print(text)
        (out / "RESULTS.md").write_text(text)
        return 0
    args.variants = [(name, json.loads(overrides)) for name, overrides in args.variant]
    jobs = plan(args)
    meta = {"command": "python benchmarks/quality.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine(),
            "versions": versions(), "load_start": [round(v, 2) for v in load_average()], "part": args.part}
    began = time.perf_counter()
    results: list[dict] = []
    with ProcessPoolExecutor(args.workers) as pool:
        for result in pool.map(run_job, jobs):
            for run in _flatten(result):
                results.append(run)
                print(f"[{(time.perf_counter() - began) / 60:5.1f} min] {run['method']} {run['dataset']} K={run['n']} "
                      f"subset {run['subset']} seed {run['seed']}: collection {run.get('collection_mean_dice', math.nan):.3f}, "
                      f"test {run.get('test_mean_dice', math.nan):.3f}, {run['steps']} steps", flush=True)
            meta.update(wall_minutes=(time.perf_counter() - began) / 60, load_end=[round(v, 2) for v in load_average()])
            (out / f"results_{args.part}.json").write_text(
                json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    text = report(results, [meta])
    print(text)
    (out / f"RESULTS_{args.part}.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
