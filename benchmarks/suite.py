"""Benchmark suite: how good with how few labels, how fast, and how much labelling time it saves.

One command runs the sections, prints markdown tables, writes ``benchmarks/RESULTS.md`` (tables, machine,
versions, date, load) and PNG plots in ``benchmarks/plots/`` (the quick mode: ``benchmarks/quick/``), and keeps the
raw numbers in ``<out>/results.json``:

- accuracy: Dice and HD95 on each dataset's test split vs the number of labelled images (1, 2, 5, 10 where the
  train split has more images than that) for this project's default (semi-supervised), the same network on the
  labels only, a random-forest pixel classifier on scikit-image features (what ilastik does) and Otsu;
- ablations (2 labelled; GlaS in the full mode, dsb2018 in the quick one): 25 % unsupervised pretraining, K
  pseudo-label rounds, chained rounds, network width, time budget (also for labels only), and single- vs multi-step
  sampling at prediction;
- effort (same dataset): a simulated annotator on a project (core.project.store, core.project.rounds: the napari *Next round*
  button's path) who, after each round, corrects the first N pseudo-labels of the review queue (most uncertain
  first; their ground truth is accepted) vs N random ones; the next round warm-starts from the last;
- speed: training step time and prediction throughput by patch / tile size and width, fp32 vs bf16.

The method and the labels-only baseline run through the engine the `diffseg` CLI uses (see ``_common.py``). The
parts live in ``suite_lib/``: settings (sections, modes, variants), plan (typed jobs, the cost model), jobs and
baselines (what a worker process runs), scheduler, and the report (one module per section).
Independent runs go two at a time in worker processes with one torch thread each (both see the same machine
load); the speed section runs alone afterwards with the default thread count.

    python benchmarks/suite.py --mode quick               # < 10 min on 2 cores: dsb2018, 1 seed -> quick/RESULTS.md
    python benchmarks/suite.py --mode full                # about an hour: all datasets, 3 seeds -> RESULTS.md
    python benchmarks/suite.py --mode full --sections accuracy --datasets glas ph2 --dry-run   # the plan only
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, replace
import datetime
import json
import os
from pathlib import Path
import shutil
import sys
import time

from _common import DEFAULT_DATA, cpu_model, load_average, versions
from suite_lib.plan import build_plan, describe_plan
from suite_lib.report import write_report
from suite_lib.scheduler import run_jobs
from suite_lib.settings import ALL_DATASETS, BENCH_DIR, MODES, SECTIONS, THREE_D_DATASETS, Settings


def _as_tuples(value):
    """JSON lists back to the tuples of ``Settings``."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=tuple(MODES), default="quick")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--datasets", nargs="+", help="datasets of the accuracy section (default: the mode's)")
    parser.add_argument("--seeds", nargs="+", type=int, help="override the mode's seeds (accuracy section)")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, help="raw results (results.json); default: results/ for the full mode, "
                        "quick/results/ for the quick one")
    parser.add_argument("--report", type=Path, help="the markdown report, plots in plots/ next to it; default: "
                        "RESULTS.md for the full mode, quick/RESULTS.md for the quick one (a quick run never "
                        "overwrites the full results)")
    parser.add_argument("--workers", type=int, default=2, help="training runs side by side (default 2)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every budget (a smoke test: 0.1)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    parser.add_argument("--keep-models", action="store_true", help="keep the model folders in <out>/work")
    parser.add_argument("--from-json", type=Path, help="only rewrite the report from an earlier results.json")
    args = parser.parse_args(argv)

    settings = MODES[args.mode]
    home = BENCH_DIR if args.mode == "full" else BENCH_DIR / args.mode
    args.out = args.out or home / "results"
    args.report = args.report or home / "RESULTS.md"
    if args.seeds:
        settings = replace(settings, seeds=tuple(args.seeds))
    datasets = tuple(args.datasets or settings.datasets)
    unknown = [d for d in datasets if not (args.data_root / d / "split.json").is_file()]
    if unknown:
        parser.error(f"no dataset (split.json) in {args.data_root} for: {', '.join(unknown)}")
    sections = tuple(s for s in SECTIONS if s in args.sections)
    work = args.out / "work"
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        if "settings" in saved["meta"]:  # the settings the results were measured with
            settings = Settings(**{key: _as_tuples(value) for key, value in saved["meta"]["settings"].items()})
        plan = build_plan(settings, sections, datasets, args.data_root, work, saved["meta"]["scale"])
        print(write_report(settings, plan, saved["results"], saved["meta"], args.report, datasets, sections))
        return 0
    plan = build_plan(settings, sections, datasets, args.data_root, work, args.scale)

    print(f"# {args.mode} mode: {len(plan)} jobs\n")
    print(describe_plan(plan, args.workers), flush=True)
    if args.dry_run:
        return 0
    notes = []
    if args.mode == "quick":
        skipped = [d for d in ALL_DATASETS if d not in datasets]
        if skipped:
            notes.append(f"Quick mode: accuracy on {', '.join(datasets)} only; not run: {', '.join(skipped)}"
                         + (" (3D training is slow on a CPU: left to the full mode)" if set(THREE_D_DATASETS) & set(skipped) else "") + ". `--mode full` runs them.")
        notes.append(f"Quick mode: one seed, labelled {', '.join(map(str, settings.labelled))}, "
                     f"{len(settings.variants)} ablation variants, budgets {', '.join(f'{b:g} s' for b in settings.budgets)}.")
    if args.scale != 1.0:
        notes.append(f"Budgets scaled by {args.scale:g} (a smoke test, not a measurement).")
    meta = {"mode": args.mode, "argv": " ".join(sys.argv[1:] if argv is None else argv),
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "cpu": cpu_model(), "cores": os.cpu_count(),
            "versions": versions(), "load_start": load_average(), "scale": args.scale, "notes": notes,
            "settings": asdict(settings)}
    started = time.perf_counter()
    results: dict[str, dict] = {}
    run_jobs([j for j in plan if not j.exclusive], args.workers, results, started)
    run_jobs([j for j in plan if j.exclusive], 1, results, started)
    from napari_diffseg.core.device import bf16_supported  # imports torch: only after the worker processes are gone

    meta.update(wall_seconds=time.perf_counter() - started, load_end=load_average(), bf16=bf16_supported("cpu"))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    if not args.keep_models:
        shutil.rmtree(work, ignore_errors=True)
    text = write_report(settings, plan, results, meta, args.report, datasets, sections)
    print("\n" + text)
    print(f"\nwrote {args.report}, plots in {args.report.parent / 'plots'}, raw results in {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

