"""Quality benchmark: does the semi-supervised default beat labels-only and the random forest? (issue: quality)

For each dataset of ../shared/data, K labelled images (the first K of split.json's ``train``, the rest of
``train`` unlabelled), scored on ``test``:
- DiffSeg: what ``diffseg train POOL --labels LABELS --out M --budget B --seed S`` then ``diffseg predict M TEST``
  do with the default settings (the same functions: ``_common.train_model`` / ``score_model``);
- labels only: the same with ``--labels-only`` (the same network, augmentation, working scale, schedule and
  threshold rule, trained on the K images alone);
- random forest: the suite's pixel classifier (``_common.random_forest_scores``) on the same K images.
Budgets are optimisation seconds (B = 180 s 2D, 360 s 3D by default); the two trainings of one dataset and seed run
side by side in two worker processes with the default thread count (cores - 1), so both see the same load. Each run
also reports its steps, steps per second, the seconds spent outside the budget (pseudo-labels, checkpoints, final
model) and, for DiffSeg, how well the image-level uncertainty of its pseudo-labels ranks them: the Spearman
correlation between the score that orders the review queue and the true Dice of each pseudo-label (negative =
the queue shows bad masks first).

    python benchmarks/quality.py                                    # K = 2, 3 seeds, all datasets (~1 h)
    python benchmarks/quality.py --labelled 1 2 5 --datasets glas   # more label counts
    python benchmarks/quality.py --variant "no pretraining" '{"pretrain_fraction": 0}' --datasets glas ph2
    python benchmarks/quality.py --variant pretrained '{}' --pretrain-seconds 180 --default-too  # stage 1 first
    python benchmarks/quality.py --from-json benchmarks/quality/results.json   # re-render the report

Prints the markdown tables and writes benchmarks/quality/RESULTS.md (or ``--out``) and results.json.
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

from _common import (DEFAULT_DATA, load_average, load_split, machine, random_forest_scores, score_model, train_model,
                     versions)

BENCH_DIR = Path(__file__).resolve().parent
DATASETS = ("glas", "ph2", "isbi2012_em", "la_mri_3d", "dsb2018")
THREE_D = ("la_mri_3d",)
BAR_DATASETS = ("glas", "ph2", "isbi2012_em", "la_mri_3d")  # +3 points over both baselines
BAR_MARGIN, DSB_TOLERANCE = 0.03, 0.01


def pseudo_label_ranking(model_dir: Path, train_pairs, labelled: int, scores: dict[str, float]) -> dict:
    """True Dice of each final pseudo-label against the ground truth, and its Spearman correlation with the
    image-level uncertainty score that orders the review queue."""
    from scipy.stats import spearmanr
    from napari_diffseg.core.io import read_mask
    from napari_diffseg.core.metrics import dice

    from napari_diffseg.core.io import read_image
    from napari_diffseg.core.io import UNCERTAINTY_SUFFIX

    truth = {name: mask for _, mask, name in train_pairs[labelled:]}
    folder = model_dir / "pseudo_labels"
    masks = {name: read_mask(folder / f"{name}.tif") for name in scores}
    dices = {name: dice(masks[name], truth[name]) for name in scores}
    names = sorted(dices)

    def rank_correlation(values: dict[str, float]) -> float:
        if len(names) < 3 or len({values[n] for n in names}) < 2:
            return float("nan")
        return float(spearmanr([values[n] for n in names], [dices[n] for n in names]).statistic)

    # other image-level scores from what the pseudo-label pass writes (entropy map of the twins' mean + mask),
    # reported beside the queue's score to compare them
    alternatives: dict[str, dict[str, float]] = {"mean entropy": {}, "entropy per foreground pixel": {},
                                                 "foreground fraction": {}, "expected Dice error": {}}
    # two classes: the normalised entropy h(p) gives back the confidence max(p, 1 - p) of the twins' mean
    confidence = np.linspace(0.5, 1.0, 2001)
    with np.errstate(divide="ignore", invalid="ignore"):
        binary_entropy = np.nan_to_num(-(confidence * np.log2(confidence)
                                         + (1 - confidence) * np.log2(1 - confidence)))
    for name in names:
        entropy = np.asarray(read_image(folder / f"{name}{UNCERTAINTY_SUFFIX}.tif"), np.float64)
        foreground = masks[name] > 0
        alternatives["mean entropy"][name] = float(entropy.mean())
        alternatives["entropy per foreground pixel"][name] = float(entropy.sum() / (foreground.sum() + 1.0))
        alternatives["foreground fraction"][name] = float(foreground.mean())
        # the Dice the mask would score if the twins' mean probabilities were the truth: 1 - E[Dice] as a score
        sure = np.interp(entropy, binary_entropy[::-1], confidence[::-1])
        probability = np.where(foreground, sure, 1 - sure)
        overlap = float((probability * foreground).sum())
        denominator = float(probability.sum() + foreground.sum())
        alternatives["expected Dice error"][name] = 0.0 if denominator < 1e-6 else 1 - 2 * overlap / denominator
    return {"pseudo_dice": dices, "uncertainty": scores, "spearman": rank_correlation(scores),
            "alternative_spearman": {key: rank_correlation(values) for key, values in alternatives.items()},
            "mean_pseudo_dice": float(np.mean(list(dices.values()))) if dices else float("nan")}


def pretrain_teacher(train_pairs, config, out_dir: Path) -> dict:
    """Stage 1 alone on every train image, no label (as ``diffseg project pretrain`` and the Train panel's background
    pretraining run it while the user labels), for ``config``'s budget; outside the co-training budget."""
    from napari_diffseg.core.data import training_data_from_arrays
    from napari_diffseg.core.device import configure_threads
    from napari_diffseg.core.training import pretrain, pretraining_info

    configure_threads(config.runtime.threads)
    data = training_data_from_arrays([p[0] for p in train_pairs], {}, [p[2] for p in train_pairs],
                                     config.network.num_classes, require_labels=False)
    for _ in pretrain(data, config, out_dir):
        pass
    info = pretraining_info(out_dir)
    return {"pretrain_seconds_done": info["seconds"], "pretrain_steps": info["steps"]}


def job_train(params: dict) -> dict:
    """One training + test scoring, as ``diffseg train`` / ``diffseg predict`` do with default settings."""
    from napari_diffseg.core.training import TrainConfig

    train_pairs, test_pairs = load_split(Path(params["root"]))
    n = params["n"]
    config = TrainConfig(budget_seconds=params["budget"], labels_only=params["labels_only"], seed=params["seed"],
                         **params["overrides"])
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        warm_start, pretrained = None, {}
        if params.get("pretrain_seconds"):
            warm_start = out / "pretrain"
            pretrained = pretrain_teacher(train_pairs, config.replace(budget_seconds=params["pretrain_seconds"]),
                                          warm_start)
            out = out / "model"
        trained = train_model(train_pairs, list(range(n)), config, out, warm_start=warm_start)
        card = json.loads((out / "model_card.json").read_text())
        result = {**params, **score_model(out, test_pairs), **trained,
                  "optimisation_seconds": card["training"]["elapsed_seconds"],
                  "overhead_seconds": card["training"]["overhead_seconds"],
                  "working_scale": card.get("working_scale"), "patch_size": card.get("patch_size"),
                  "threads": card["environment"]["threads"]}
        if not params["labels_only"] and trained["mean_uncertainty"]:
            result.update(pseudo_label_ranking(out, train_pairs, n, trained["mean_uncertainty"]))
    result.update(pretrained)
    result["wall_seconds"] = time.perf_counter() - began
    result["steps_per_second"] = result["steps"] / max(1e-9, result["optimisation_seconds"])
    return result


def job_forest(params: dict) -> dict:
    return {**params, **random_forest_scores(Path(params["root"]), params["n"], params["seeds"])}


def run_job(job: tuple[str, dict]) -> dict:
    kind, params = job
    return job_forest(params) if kind == "rf" else job_train(params)


def plan(args) -> list[tuple[str, dict]]:
    """Training jobs in pairs (DiffSeg and labels-only of one dataset/K/seed next to each other, so the two workers
    run them side by side; with ``--default-too`` three arms share the two workers), then the forests. The report
    tables show the variant and labels-only; the default arm is in results.json."""
    jobs, forests = [], []
    for dataset in args.datasets:
        root = str(Path(args.data_root) / dataset)
        budget = args.budget_3d if dataset in THREE_D else args.budget_2d
        for n in args.labelled:
            forests.append(("rf", {"dataset": dataset, "root": root, "n": n, "seeds": list(args.seeds),
                                   "method": "random forest"}))
            for seed in args.seeds:
                arms = [(args.variant_name, False, args.variant)]
                if args.default_too:
                    arms.append(("DiffSeg (default)", False, {}))
                if not args.no_labels_only:
                    arms.append(("labels only", True, args.variant_labels_only))
                for method, labels_only, overrides in arms:
                    pretraining = args.pretrain_seconds if method == args.variant_name else 0.0
                    jobs.append(("train", {"dataset": dataset, "root": root, "n": n, "seed": seed, "budget": budget,
                                           "labels_only": labels_only, "method": method, "overrides": overrides,
                                           "pretrain_seconds": pretraining}))
    return jobs + forests


def _mean_sd(values) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _cell(values, digits=3) -> str:
    mean, sd = _mean_sd(values)
    return "n/a" if math.isnan(mean) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def report(results: list[dict], meta: dict) -> str:
    lines = ["# Quality benchmark: semi-supervised default vs labels-only vs random forest", "",
             f"Generated by `{meta['command']}` on {meta['date']}; wall time {meta['wall_minutes']:.1f} min.", "",
             f"- Machine: {meta['machine']}", f"- Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}",
             f"- Load average at start / end: {meta['load_start']} / {meta['load_end']}",
             f"- Budgets: {meta['budget_2d']:.0f} s (2D), {meta['budget_3d']:.0f} s (3D) of optimisation per run; "
             "the two trainings of one dataset and seed ran side by side (one torch thread each, the default "
             "cores - 1). Seeds: " + ", ".join(map(str, meta["seeds"])) + ".",
             f"- Variant: {meta['variant_name']} {json.dumps(meta['variant']) if meta['variant'] else '(defaults)'}"
             + (f", after {meta['pretrain_seconds']:.0f} s of stage 1 outside the budget (its wall s include them)"
                if meta.get("pretrain_seconds") else ""),
             "", "Dice: mean over test images per run, then mean ± sd over seeds. HD95 in pixels (voxels), mean "
             "over the test images where it is defined. Margins are DiffSeg minus the baseline, in Dice points.", ""]
    trained = [r for r in results if "seed_results" not in r]
    forests = [r for r in results if "seed_results" in r]
    method = meta["variant_name"]
    lines += ["| dataset | K | DiffSeg Dice | labels only | random forest | vs labels only | vs forest | "
              "DiffSeg HD95 | labels-only HD95 | forest HD95 | bar |", "|" + "---|" * 11]
    verdicts = []
    for dataset in meta["datasets"]:
        for n in meta["labelled"]:
            ours = [r for r in trained if r["dataset"] == dataset and r["n"] == n and r["method"] == method]
            base = [r for r in trained if r["dataset"] == dataset and r["n"] == n and r["labels_only"]]
            forest = [s for r in forests if r["dataset"] == dataset and r["n"] == n for s in r["seed_results"]]
            if not ours:
                continue
            d, b, f = (_mean_sd([r["mean_dice"] for r in rs])[0] for rs in (ours, base, forest))
            vs_b, vs_f = 100 * (d - b), 100 * (d - f)
            if n == 2 and dataset in BAR_DATASETS:
                met = vs_b >= 100 * BAR_MARGIN and vs_f >= 100 * BAR_MARGIN
                bar = "met" if met else "MISSED"
            elif n == 2 and dataset == "dsb2018":
                met = vs_b >= -100 * DSB_TOLERANCE and vs_f >= -100 * DSB_TOLERANCE
                bar = "met" if met else "MISSED"
            else:
                bar = "(not part of the bar)"
            if n == 2:
                verdicts.append((dataset, bar))
            lines.append(f"| {dataset} | {n} | {_cell([r['mean_dice'] for r in ours])} | "
                         f"{_cell([r['mean_dice'] for r in base])} | {_cell([r['mean_dice'] for r in forest])} | "
                         f"{vs_b:+.1f} | {vs_f:+.1f} | {_cell([r['mean_hd95'] for r in ours], 1)} | "
                         f"{_cell([r['mean_hd95'] for r in base], 1)} | {_cell([r['mean_hd95'] for r in forest], 1)} | "
                         f"{bar} |")
    lines += ["", "## Steps, time outside the budget, working scale", "",
              "| dataset | K | method | steps | steps/s | optimisation s | outside the budget s | wall s | "
              "working scale | patch |", "|" + "---|" * 10]
    for dataset in meta["datasets"]:
        for n in meta["labelled"]:
            for label, rows in ((method, [r for r in trained if r["dataset"] == dataset and r["n"] == n
                                          and r["method"] == method]),
                                ("labels only", [r for r in trained if r["dataset"] == dataset and r["n"] == n
                                                 and r["labels_only"]])):
                if not rows:
                    continue
                lines.append(f"| {dataset} | {n} | {label} | {_cell([r['steps'] for r in rows], 0)} | "
                             f"{_cell([r['steps_per_second'] for r in rows], 2)} | "
                             f"{_cell([r['optimisation_seconds'] for r in rows], 0)} | "
                             f"{_cell([r['overhead_seconds'] for r in rows], 1)} | "
                             f"{_cell([r['wall_seconds'] for r in rows], 0)} | {rows[0]['working_scale']} | "
                             f"{'x'.join(map(str, rows[0]['patch_size'] or []))} |")
    ratios = []
    for dataset in meta["datasets"]:
        for n in meta["labelled"]:
            ours = [r["steps_per_second"] for r in trained if r["dataset"] == dataset and r["n"] == n
                    and r["method"] == method]
            base = [r["steps_per_second"] for r in trained if r["dataset"] == dataset and r["n"] == n
                    and r["labels_only"]]
            if ours and base:
                ratios.append(f"{dataset} K={n}: {np.mean(ours) / np.mean(base):.2f}")
    lines += ["", "Steps per second of DiffSeg / labels only (one DiffSeg step trains two mask pathways, and every "
              "4th step one pseudo-label round through the image pathway): " + "; ".join(ratios) + ".", ""]
    lines += ["## Does the uncertainty point at bad pseudo-labels?", "",
              "Spearman correlation, over the unlabelled train images, between the image-level uncertainty score "
              "that orders the review queue and the true Dice of the final pseudo-label (negative = most uncertain "
              "are the worst; the bar asks <= -0.4 on at least 3 of the 5 sets).", "",
              "| dataset | K | Spearman (mean ± sd over seeds) | mean pseudo-label Dice |", "|---|---|---|---|"]
    passing = 0
    for dataset in meta["datasets"]:
        for n in meta["labelled"]:
            rows = [r for r in trained if r["dataset"] == dataset and r["n"] == n and r["method"] == method
                    and "spearman" in r]
            if rows:
                rho = _mean_sd([r["spearman"] for r in rows])[0]
                passing += int(n == 2 and rho <= -0.4)
                lines.append(f"| {dataset} | {n} | {_cell([r['spearman'] for r in rows], 2)} | "
                             f"{_cell([r['mean_pseudo_dice'] for r in rows])} |")
    lines += ["", f"Sets with Spearman <= -0.4 at K = 2: {passing}.", ""]
    alternative_rows = [r for r in trained if r["method"] == method and r.get("alternative_spearman")]
    if alternative_rows:
        keys = list(alternative_rows[0]["alternative_spearman"])
        lines += ["Other image-level scores, for comparison (Spearman with the true pseudo-label Dice, from the "
                  "entropy map and mask that the pseudo-label pass writes):", "",
                  "| dataset | K | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
        for dataset in meta["datasets"]:
            for n in meta["labelled"]:
                rows = [r for r in alternative_rows if r["dataset"] == dataset and r["n"] == n]
                if rows:
                    lines.append(f"| {dataset} | {n} | " + " | ".join(
                        _cell([r["alternative_spearman"][key] for r in rows], 2) for key in keys) + " |")
        lines.append("")
    if verdicts:
        lines += ["## The bar at K = 2", ""] + [f"- {dataset}: {bar}" for dataset, bar in verdicts] + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--labelled", nargs="+", type=int, default=[2])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget-2d", type=float, default=180.0)
    parser.add_argument("--budget-3d", type=float, default=360.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data-root", default=str(DEFAULT_DATA))
    parser.add_argument("--variant", nargs=2, metavar=("NAME", "JSON"), default=None,
                        help="TrainConfig overrides for the DiffSeg runs (an ablation); default: the defaults")
    parser.add_argument("--labels-only-too", action="store_true",
                        help="apply the variant's overrides to the labels-only runs as well")
    parser.add_argument("--pretrain-seconds", type=float, default=0.0,
                        help="the variant's teacher first pretrains this long without labels (stage 1, outside the "
                             "budget, as the Train panel does in the background while the user labels)")
    parser.add_argument("--default-too", action="store_true",
                        help="also run the default settings as a third arm, side by side (for an ablation)")
    parser.add_argument("--no-forest", action="store_true", help="skip the random forest")
    parser.add_argument("--no-labels-only", action="store_true", help="skip the labels-only runs (ablations)")
    parser.add_argument("--out", default=str(BENCH_DIR / "quality"))
    parser.add_argument("--from-json", default=None, help="re-render the report from a results.json")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        text = report(saved["results"], saved["meta"])
        print(text)
        out.mkdir(parents=True, exist_ok=True)
        (out / "RESULTS.md").write_text(text + "\n")
        return 0
    args.variant_name, args.variant = ("DiffSeg", {}) if args.variant is None else (args.variant[0],
                                                                                    json.loads(args.variant[1]))
    args.variant_labels_only = args.variant if args.labels_only_too else {}
    jobs = plan(args)
    if args.no_forest:
        jobs = [job for job in jobs if job[0] != "rf"]
    meta = {"command": "python benchmarks/quality.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine(),
            "versions": versions(), "load_start": [round(v, 2) for v in load_average()],
            "budget_2d": args.budget_2d, "budget_3d": args.budget_3d, "seeds": args.seeds,
            "datasets": args.datasets, "labelled": args.labelled, "variant_name": args.variant_name,
            "variant": args.variant, "pretrain_seconds": args.pretrain_seconds, "default_too": args.default_too}
    began = time.perf_counter()
    results = []
    out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(args.workers) as pool:
        for result in pool.map(run_job, jobs):
            results.append(result)
            if "seed_results" in result:
                print(f"[{(time.perf_counter() - began) / 60:5.1f} min] forest {result['dataset']} K={result['n']}: "
                      + ", ".join(f"{s['mean_dice']:.3f}" for s in result["seed_results"]), flush=True)
            else:
                print(f"[{(time.perf_counter() - began) / 60:5.1f} min] {result['method']} {result['dataset']} "
                      f"K={result['n']} seed {result['seed']}: Dice {result['mean_dice']:.3f}, {result['steps']} "
                      f"steps, {result['overhead_seconds']:.0f} s outside the budget"
                      + (f", Spearman {result['spearman']:+.2f}" if "spearman" in result else ""), flush=True)
            meta.update(wall_minutes=(time.perf_counter() - began) / 60,
                        load_end=[round(v, 2) for v in load_average()])
            (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    text = report(results, meta)
    print(text)
    (out / "RESULTS.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
