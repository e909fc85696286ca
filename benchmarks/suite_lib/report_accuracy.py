"""The accuracy section of the report: Dice and HD95 vs labelled images, labels saved, the accuracy plot."""

from __future__ import annotations

import math

import numpy as np

from _common import RF_MAX_PIXELS, RF_PIXELS_PER_IMAGE, RF_TREES
from suite_lib.report_common import aggregate, fmt
from suite_lib.settings import METHODS, THREE_D_DATASETS


class AccuracySection:
    """A section of the Report (suite_lib/report.py): methods that read ``self.runs`` and add to ``self.lines``."""

    def accuracy(self, datasets: tuple[str, ...]) -> list[tuple]:
        s = self.settings
        table = [row for row in ((d, n) for d in datasets for n in s.labelled)
                 if any(self.method_runs(row[0], row[1], m, self.budget(row[0])) for m in METHODS)]
        if not table:
            return []
        self.lines += ["## Accuracy vs number of labelled images", "",
                       f"Test-split Dice and HD95 (pixels / voxels), {self.spread_note(len(s.seeds))}; seeds "
                       f"{', '.join(map(str, s.seeds))}. Training budget per run: {s.budget_2d * self.meta['scale']:g} s "
                       f"for 2D" + (f", {s.budget_3d * self.meta['scale']:g} s for 3D" if set(THREE_D_DATASETS) & set(datasets) else "")
                       + " wall time, one torch thread (two runs side by side). DiffSeg = this project's default "
                       "(a supervised warm-up, then teacher-student co-training on all train images, the first n labelled; "
                       "no stage-1 pretraining inside the budget); "
                       "labels only = the same network and budget on the n labelled images; random forest = "
                       f"{RF_TREES} trees on scikit-image multiscale intensity / edge / texture features of up to "
                       f"{RF_PIXELS_PER_IMAGE // 1000}k balanced pixels per labelled image ({RF_MAX_PIXELS // 1000}k "
                       "in total); Otsu = one global threshold per test image, polarity chosen on the labelled "
                       "images (deterministic, no spread over seeds). HD95 is averaged over the images where it is "
                       "defined; `k/m undefined` counts the test images (over all seeds) where exactly one of the "
                       "prediction and the ground truth is empty: they are left out of that mean, so the lowest HD95 "
                       "is bold only among methods without undefined images. Best mean in bold."
                       + self.missing_counts(datasets, table), ""]
        summary = []
        for metric, better in (("dice", max), ("hd95", min)):
            title = "Dice (higher is better)" if metric == "dice" else "HD95 in pixels (lower is better)"
            self.lines += [f"**{title}**", "",
                           "| dataset | labelled | " + " | ".join(METHODS) + (" | steps (DiffSeg / labels only) |" if metric == "dice" else " |"),
                           "|---|---|" + "---|" * len(METHODS) + ("---|" if metric == "dice" else "")]
            for dataset, n in table:
                budget = self.budget(dataset)
                cells = {}
                for method in METHODS:
                    runs = self.method_runs(dataset, n, method, budget)
                    mean, sd = aggregate(runs, metric)
                    empty = (sum(r["hd95_undefined"] for r in runs), sum(len(r["hd95"]) for r in runs))
                    cells[method] = (mean, None if method == "Otsu" and len(s.seeds) > 1 else sd, empty)
                    if metric == "dice" and runs:
                        per_image = np.mean([r["dice"] for r in runs], axis=0)
                        summary.append((dataset, n, method, mean, sd, aggregate(runs, "hd95")[0], per_image))
                finite = [c[0] for c in cells.values() if not math.isnan(c[0]) and (metric == "dice" or not c[2][0])]
                best = better(finite) if finite else None
                row = []
                for method in METHODS:
                    mean, sd, empty = cells[method]
                    text = fmt(mean, sd, 3 if metric == "dice" else 1)
                    if best is not None and mean == best and (metric == "dice" or not empty[0]):
                        text = f"**{text}**"
                    if metric == "hd95" and empty[0]:
                        text += f" ({empty[0]}/{empty[1]} undefined)"
                    row.append(text)
                line = f"| {dataset} | {n} | " + " | ".join(row) + " |"
                if metric == "dice":
                    steps = [np.mean([r["steps"] for r in self.method_runs(dataset, n, m, budget)] or [math.nan])
                             for m in ("DiffSeg", "labels only")]
                    line += " " + " / ".join("-" if math.isnan(x) else f"{x:.0f}" for x in steps) + " |"
                self.lines.append(line)
            self.lines.append("")
        self.labels_saved(summary)
        self.plot_accuracy(table, summary)
        return summary

    def missing_counts(self, datasets: tuple[str, ...], table: list[tuple]) -> str:
        """Why a dataset has fewer label counts than asked: a semi-supervised run needs unlabelled images."""
        short = []
        for dataset in datasets:
            measured = [n for d, n in table if d == dataset]
            if measured and measured != list(self.settings.labelled):
                short.append(f"{dataset} {', '.join(map(str, measured))}")
        if not short:
            return ""
        return (" Label counts measured where the train split is small (a count must leave unlabelled images for "
                f"the semi-supervised run): {'; '.join(short)}.")

    def labels_saved(self, summary: list[tuple]) -> None:
        """How many labelled images each trained baseline needs to match DiffSeg's mean Dice (measured counts)."""
        means: dict[tuple[str, str], dict[int, float]] = {}
        for dataset, n, method, mean, *_ in summary:
            if not math.isnan(mean):
                means.setdefault((dataset, method), {})[n] = mean
        rivals = ("labels only", "random forest")
        rows = []
        for (dataset, method), ours in means.items():
            if method != "DiffSeg":
                continue
            for n, target in sorted(ours.items()):
                cells = []
                for rival in rivals:
                    theirs = means.get((dataset, rival), {})
                    if not theirs:
                        cells.append("n/a")
                        continue
                    enough = [m for m, value in sorted(theirs.items()) if value >= target]
                    if not enough:
                        cells.append(f"more than {max(theirs)} (never reached)")
                    elif enough[0] <= n:
                        cells.append(f"{enough[0]}: no saving")
                    else:
                        cells.append(f"{enough[0]}: **{enough[0] - n} saved**")
                rows.append(f"| {dataset} | {n} | {target:.3f} | " + " | ".join(cells) + " |")
        if rows:
            self.lines += ["**Labelling saved**: the fewest labelled images (among the counts measured) with which "
                           "each baseline reaches DiffSeg's mean Dice; `no saving` = the baseline does as well with "
                           "as many labels or fewer. Same budgets as above.", "",
                           "| dataset | DiffSeg labelled | DiffSeg Dice | labels only needs | random forest needs |",
                           "|---|---|---|---|---|", *rows, ""]

    def plot_accuracy(self, table: list[tuple], summary: list[tuple]) -> None:
        import matplotlib.pyplot as plt

        datasets = list(dict.fromkeys(d for d, _ in table))
        figure, axes = plt.subplots(2, len(datasets), figsize=(3.6 * len(datasets), 6.4), squeeze=False)
        for column, dataset in enumerate(datasets):
            for row, metric in enumerate(("dice", "hd95")):
                ax = axes[row][column]
                for method in METHODS:
                    points = []
                    for n in (n for d, n in table if d == dataset):
                        mean, sd = aggregate(self.method_runs(dataset, n, method, self.budget(dataset)), metric)
                        deterministic = method == "Otsu" and len(self.settings.seeds) > 1  # as in the table
                        points.append((n, mean, 0.0 if deterministic else sd))
                    if points:
                        xs, ys, sds = zip(*points)
                        ax.errorbar(xs, ys, yerr=sds, marker="o", capsize=3, label=method)
                ax.set_xscale("log")
                ax.minorticks_off()
                ax.set_xticks([n for d, n in table if d == dataset])
                ax.set_xticklabels([str(n) for d, n in table if d == dataset])
                ax.set_xlabel("labelled images")
                ax.set_ylabel("Dice" if metric == "dice" else "HD95 (px)")
                if row == 0:
                    ax.set_title(dataset)
        axes[0][0].legend(fontsize=8)
        figure.tight_layout()
        self.save(figure, "accuracy.png", "Dice and HD95 vs labelled images")
