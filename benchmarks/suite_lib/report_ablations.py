"""The ablations section of the report: variants, time budgets, sampling steps."""

from __future__ import annotations


import numpy as np

from suite_lib.report_common import aggregate, duration, fmt, mean_sd
from suite_lib.settings import DEFAULT_VARIANT


class AblationsSection:
    """A section of the Report (suite_lib/report.py): methods that read ``self.runs`` and add to ``self.lines``."""

    def ablations(self) -> dict:
        s = self.settings
        dataset, n = s.ablation_dataset, s.ablation_labelled
        budget = s.budget_2d * self.meta["scale"]

        def ablation_runs(**match) -> list[dict]:  # the accuracy section may have more seeds of the same runs
            return [r for r in self.runs(kind="train", dataset=dataset, n=n, **match) if r["seed"] in s.ablation_seeds]

        default = ablation_runs(method="DiffSeg", variant=DEFAULT_VARIANT, budget=budget)
        if not default:
            return {}
        note = self.spread_note(len(s.ablation_seeds))
        d_mean, _ = aggregate(default, "dice")
        self.lines += ["## Ablations of the method", "",
                       f"{dataset}, {n} labelled images, seeds {', '.join(map(str, s.ablation_seeds))}; {note}. "
                       f"Every variant changes one setting of the default (no pretraining, a supervised warm-up of the "
                       f"teacher alone through the first half of co-training, then its copy as the student, one "
                       f"independent pseudo-label round every 4th co-training step, width 16) and trains for the "
                       f"same {budget:g} s.", "",
                       "| variant | Dice | HD95 | steps | Dice vs default |", "|---|---|---|---|---|"]
        found = {}
        for variant in (DEFAULT_VARIANT, *s.variants):
            runs = ablation_runs(method="DiffSeg", variant=variant, budget=budget)
            if not runs:
                continue
            mean, sd = aggregate(runs, "dice")
            hd = aggregate(runs, "hd95")
            found[variant] = (mean, sd)
            name = "default (K = 1, independent, width 16, warm-up, no pretraining)" if variant == DEFAULT_VARIANT else variant
            delta = "" if variant == DEFAULT_VARIANT else f"{mean - d_mean:+.3f}"
            self.lines.append(f"| {name} | {fmt(mean, sd)} | {fmt(*hd, 1)} | "
                              f"{np.mean([r['steps'] for r in runs]):.0f} | {delta} |")
        labels_only = ablation_runs(method="labels only", variant=DEFAULT_VARIANT, budget=budget)
        if labels_only:
            mean, sd = aggregate(labels_only, "dice")
            self.lines.append(f"| (labels only, for reference) | {fmt(mean, sd)} | "
                              f"{fmt(*aggregate(labels_only, 'hd95'), 1)} | "
                              f"{np.mean([r['steps'] for r in labels_only]):.0f} | {mean - d_mean:+.3f} |")
        self.lines.append("")
        budget_rows = []  # (seconds, {method: (dice mean/sd, hd95 mean/sd, steps)})
        for seconds in sorted(set(b * self.meta["scale"] for b in s.budgets) | {budget}):
            by_method = {}
            for method in ("DiffSeg", "labels only"):
                runs = ablation_runs(method=method, variant=DEFAULT_VARIANT, budget=seconds)
                if runs:
                    by_method[method] = (aggregate(runs, "dice"), aggregate(runs, "hd95"),
                                         np.mean([r["steps"] for r in runs]))
            if "DiffSeg" in by_method:
                budget_rows.append((seconds, by_method))
        if len(budget_rows) > 1:
            self.lines += ["**Time budget**: both networks with longer runs (same settings; wall time on one core). "
                           "Does the semi-supervised run pay off with more time?", "",
                           "| budget | DiffSeg Dice | labels only Dice | DiffSeg HD95 | labels only HD95 | steps "
                           "(DiffSeg / labels only) |", "|---|---|---|---|---|---|"]
            for seconds, by_method in budget_rows:
                ours, theirs = by_method["DiffSeg"], by_method.get("labels only")
                self.lines.append(
                    f"| {duration(seconds)} | {fmt(*ours[0])} | {fmt(*theirs[0]) if theirs else 'n/a'} | "
                    f"{fmt(*ours[1], 1)} | {fmt(*theirs[1], 1) if theirs else 'n/a'} | "
                    f"{ours[2]:.0f} / {f'{theirs[2]:.0f}' if theirs else '-'} |")
            self.lines.append("")
        sampling_rows = []
        for steps in s.sampling_steps:
            values = [r["sampling"].get(str(steps)) for r in default if str(steps) in r.get("sampling", {})]
            if values:
                sampling_rows.append((steps, mean_sd([v["mean_dice"] for v in values]),
                                      mean_sd([v["mean_hd95"] for v in values]),
                                      np.mean([v["predict_seconds_per_image"] for v in values])))
        if sampling_rows:
            spread = "; ± over seeds" if len(default) > 1 else ", one seed"
            self.lines += [f"**Sampling at prediction** (the default model(s) above{spread}; more steps sample the "
                           "mask DDIM-style from noise, `diffseg predict --sampling-steps`)", "",
                           "| sampling steps | Dice | HD95 | seconds per test image |", "|---|---|---|---|"]
            single = len(default) == 1
            self.lines += [f"| {steps} | {fmt(dice_[0], None if single else dice_[1])} | "
                           f"{fmt(hd[0], None if single else hd[1], 1)} | {sec:.3f} |"
                           for steps, dice_, hd, sec in sampling_rows]
            self.lines.append("")
        self.plot_ablations(found, budget_rows, sampling_rows)
        return {"variants": found, "budgets": budget_rows, "sampling": sampling_rows, "default": d_mean}

    def plot_ablations(self, found: dict, budget_rows: list, sampling_rows: list) -> None:
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, 3, figsize=(14, 4))
        names = list(found)
        axes[0].barh(names, [found[v][0] for v in names], xerr=[found[v][1] for v in names], capsize=3)
        axes[0].invert_yaxis()
        axes[0].set_xlabel("Dice")
        axes[0].set_title("variants at equal budget")
        for method in ("DiffSeg", "labels only"):
            points = [(sec / 60, *by_method[method][0]) for sec, by_method in budget_rows if method in by_method]
            if points:
                xs, ys, sds = zip(*points)
                axes[1].errorbar(xs, ys, yerr=sds, marker="o", capsize=3, label=method)
        if budget_rows:
            axes[1].legend(fontsize=8)
        axes[1].set_xlabel("budget (min)")
        axes[1].set_ylabel("Dice")
        axes[1].set_title("time budget")
        if sampling_rows:
            axes[2].plot([r[0] for r in sampling_rows], [r[1][0] for r in sampling_rows], marker="o")
        axes[2].set_xlabel("sampling steps")
        axes[2].set_ylabel("Dice")
        axes[2].set_title("sampling at prediction")
        figure.tight_layout()
        self.save(figure, "ablations.png", "Ablations")
