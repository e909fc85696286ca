"""Where the method loses: plain statements of every comparison DiffSeg loses in the report."""

from __future__ import annotations

import math

import numpy as np

from suite_lib.report_common import duration
from suite_lib.settings import DEFAULT_VARIANT, THREE_D_DATASETS


class VerdictSection:
    """A section of the Report (suite_lib/report.py): methods that read ``self.runs`` and add to ``self.lines``."""

    def losses(self, summary: list[tuple], ablation: dict, effort: dict) -> None:
        """Plain statements of every comparison DiffSeg loses, from the numbers in this report."""
        lines = ["## Where the method loses", ""]
        cases, dice_wins, hd_wins = [], 0, 0
        groups: dict[tuple, dict] = {}
        for dataset, n, method, mean, sd, hd, per_image in summary:
            groups.setdefault((dataset, n), {})[method] = (mean, sd, hd, per_image)
        groups = {key: methods for key, methods in groups.items()
                  if "DiffSeg" in methods and not math.isnan(methods["DiffSeg"][0])}
        for (dataset, n), methods in groups.items():
            ours = methods["DiffSeg"]
            others = {m: v for m, v in methods.items() if m != "DiffSeg" and not math.isnan(v[0])}
            beaten_by = [(m, v) for m, v in others.items() if v[0] > ours[0]]
            dice_wins += not beaten_by
            hd_wins += all(math.isnan(v[2]) or v[2] >= ours[2] for v in others.values())
            for method, (mean, sd, hd, per_image) in beaten_by:
                better = int(np.sum(per_image > ours[3]))
                cases.append(f"- {dataset}, {n} labelled: **{method}** {mean:.3f} vs DiffSeg {ours[0]:.3f} "
                             f"(Dice {ours[0] - mean:+.3f}; {method} better on {better} of {len(per_image)} test "
                             f"images; HD95 {hd:.1f} vs {ours[2]:.1f})")
        if groups:
            lines += [f"DiffSeg has the best mean Dice in **{dice_wins} of {len(groups)}** dataset / label-count "
                      f"settings and the lowest mean HD95 in **{hd_wins} of {len(groups)}**."
                      + (" It loses on Dice in these (a baseline's mean test Dice is higher):" if cases else ""), ""]
            lines += [*cases, ""] if cases else []
        budgets = ablation.get("budgets", [])
        behind = [(sec, m) for sec, m in budgets if "labels only" in m and m["labels only"][0][0] >= m["DiffSeg"][0][0]]
        if behind:
            text = ", ".join(f"{duration(sec)} ({m['DiffSeg'][0][0]:.3f} vs {m['labels only'][0][0]:.3f})"
                             for sec, m in behind)
            lines += [f"- Time budget ({self.settings.ablation_dataset}): the labels-only network is as good or "
                      f"better at {text} (DiffSeg vs labels only).", ""]
        if "uncertainty" in effort and "random" in effort and effort["uncertainty"][0] <= effort["random"][0]:
            lines += [f"- Annotation effort: correcting the most uncertain pseudo-labels was not better than "
                      f"correcting random ones (final Dice {effort['uncertainty'][0]:.3f} vs "
                      f"{effort['random'][0]:.3f} after {effort['uncertainty'][1]} corrected images"
                      + (", one seed: within run-to-run noise" if len(self.settings.effort_seeds) == 1 else "")
                      + ").", ""]
        tried = []
        if ablation.get("variants"):
            best = max(((k, v) for k, v in ablation["variants"].items() if k != DEFAULT_VARIANT),
                       key=lambda item: item[1][0], default=None)
            if best is not None and best[1][0] > ablation["default"]:
                tried.append(f"- Method variants at the same budget (table above): the best is **{best[0]}** "
                             f"(Dice {best[1][0]:.3f} vs default {ablation['default']:.3f}).")
            elif best is not None:
                tried.append(f"- Method variants at the same budget (table above): none beats the default "
                             f"({ablation['default']:.3f}; the best variant, {best[0]}, has {best[1][0]:.3f}).")
        if len(budgets) > 1:
            first, last = budgets[0], budgets[-1]
            text = (f"- More time: {duration(first[0])} -> {duration(last[0])} changes DiffSeg's Dice from "
                    f"{first[1]['DiffSeg'][0][0]:.3f} to {last[1]['DiffSeg'][0][0]:.3f}")
            theirs = [(sec, m["labels only"][0][0]) for sec, m in budgets if "labels only" in m]
            if len(theirs) > 1:
                text += (f" (labels only: {theirs[0][1]:.3f} at {duration(theirs[0][0])} -> {theirs[-1][1]:.3f} at "
                         f"{duration(theirs[-1][0])})")
            tried.append(text + ".")
        if ablation.get("sampling") and len(ablation["sampling"]) > 1:
            first, last = ablation["sampling"][0], ablation["sampling"][-1]
            tried.append(f"- Multi-step sampling: {first[0]} -> {last[0]} steps changes Dice from {first[1][0]:.3f} "
                         f"to {last[1][0]:.3f} at {last[3] / max(first[3], 1e-9):.1f}x the prediction time.")
        if effort:
            text = ", ".join(f"{k} {v[0]:.3f}" for k, v in effort.items())
            tried.append(f"- Corrections (effort section), final Dice after the last round: {text}.")
        if tried:
            lines += ["What was tried to close the gaps (all numbers in this file):", "", *tried, ""]
        if cases or behind:
            lines.append(self.step_caveat())
        self.lines += lines

    def step_caveat(self) -> str:
        """The budgets of the accuracy runs and the measured steps of each network within them."""
        s, scale = self.settings, self.meta["scale"]
        steps = {}
        for method in ("DiffSeg", "labels only"):
            runs = [r for r in self.runs(kind="train", method=method, variant=DEFAULT_VARIANT)
                    if r["budget"] == self.budget(r["dataset"])]  # the accuracy runs
            steps[method] = np.mean([r["steps"] for r in runs]) if runs else math.nan
        three_d = any(r["dataset"] in THREE_D_DATASETS for r in self.runs(kind="train"))
        budgets = f"{s.budget_2d * scale:.3g} s per 2D run" + (
            f" and {s.budget_3d * scale:.3g} s per 3D run" if three_d and s.budget_3d != s.budget_2d else "")
        ratio = steps["labels only"] / steps["DiffSeg"] if steps["DiffSeg"] else math.nan
        text = (f"Context for the accuracy comparisons: {budgets} of wall time on one core (the CLI default is "
                "300 s). A DiffSeg run trains the teacher alone on labelled patches through the first half, then two "
                "networks, makes pseudo-labels and "
                "writes the first pseudo-labels of every unlabelled image 10 s into co-training (so the GUI can show "
                "them early)")
        if not math.isnan(ratio):
            text += (f"; in these runs it made {steps['DiffSeg']:.0f} steps on average against "
                     f"{steps['labels only']:.0f} for the labels-only network ({ratio:.1f}x)")
        return text + ". The time-budget table shows what longer runs change.\n"
