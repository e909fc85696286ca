"""The annotation-effort section of the report: the simulated annotator's Dice by round and strategy."""

from __future__ import annotations


import numpy as np

from suite_lib.report_common import fmt, mean_sd
from suite_lib.settings import STRATEGIES


class EffortSection:
    """A section of the Report (suite_lib/report.py): methods that read ``self.runs`` and add to ``self.lines``."""

    def effort(self) -> dict:
        s = self.settings
        curves: dict[str, list[list[dict]]] = {}
        for strategy in STRATEGIES:
            runs = self.runs(kind="effort", strategy=strategy)
            if runs:
                curves[strategy] = [r["rounds"] for r in runs]
        if not curves:
            return {}
        self.lines += ["## Annotation effort: which pseudo-labels to correct", "",
                       f"{s.ablation_dataset}: a project of the train split with the first {s.effort_start} image(s) "
                       f"labelled and its round 1 trained for {s.effort_budget * self.meta['scale']:g} s (round 0 "
                       f"below, shared by the strategies of a seed). Each round a simulated annotator corrects "
                       f"{s.effort_per_round} pseudo-labels (their ground truth is accepted into the project): the "
                       "first of the review queue (most uncertain first, the Review panel's order) or random ones"
                       + (", or none (the same extra training without corrections)" if "none" in curves else "")
                       + "; then "
                       f"the next round trains for {s.effort_budget * self.meta['scale']:g} s warm-started from the last "
                       f"(Next round's path: Project.next_round, core.project.rounds.train_round). Seeds {', '.join(map(str, s.effort_seeds))}; test-split Dice "
                       "(mean over seeds); round seconds = training incl. pseudo-labels.", "",
                       "| strategy | round | corrected images | Dice | HD95 | round seconds |", "|---|---|---|---|---|---|"]
        for strategy, seeds in curves.items():
            for index in range(len(seeds[0])):
                rows = [rounds[index] for rounds in seeds if index < len(rounds)]
                dice_ = mean_sd([r["mean_dice"] for r in rows])
                hd = mean_sd([r["mean_hd95"] for r in rows])
                self.lines.append(f"| {strategy} | {index} | {rows[0]['corrected']} | "
                                  f"{fmt(*dice_) if len(rows) > 1 else fmt(dice_[0], None)} | "
                                  f"{fmt(hd[0], None, 1)} | {np.mean([r['seconds'] for r in rows]):.0f} |")
        self.lines.append("")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, 2, figsize=(10, 4))
        for strategy, seeds in curves.items():
            length = min(len(r) for r in seeds)
            xs = [seeds[0][i]["corrected"] if strategy != "none" else i * s.effort_per_round for i in range(length)]
            ys = [np.mean([rounds[i]["mean_dice"] for rounds in seeds]) for i in range(length)]
            axes[0].plot(xs, ys, marker="o", label=strategy)
            axes[1].plot(range(length), [np.mean([rounds[i]["seconds"] for rounds in seeds]) for i in range(length)],
                         marker="o", label=strategy)
        axes[0].set_xlabel("corrected images (for 'none': same rounds, no corrections)")
        axes[0].set_ylabel("test Dice")
        axes[0].legend()
        axes[1].set_xlabel("round")
        axes[1].set_ylabel("seconds per round")
        axes[1].set_ylim(bottom=0)
        from matplotlib.ticker import MaxNLocator

        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        figure.tight_layout()
        self.save(figure, "effort.png", "Dice vs corrected images")
        return {strategy: [np.mean([rounds[-1]["mean_dice"] for rounds in seeds]), seeds[0][-1]["corrected"]]
                for strategy, seeds in curves.items()}
