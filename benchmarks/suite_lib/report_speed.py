"""The speed section of the report: training step time and prediction throughput."""

from __future__ import annotations


import numpy as np



class SpeedSection:
    """A section of the Report (suite_lib/report.py): methods that read ``self.runs`` and add to ``self.lines``."""

    def speed(self) -> dict:
        s = self.settings
        rows = []
        for width, patch in s.speed_configs:
            for bf16 in (False, True):
                result = self.results.get(f"speed_train/w{width}/p{patch}/{'bf16' if bf16 else 'fp32'}")
                if result and "error" not in result:
                    rows.append((width, patch, bf16, result))
        predictions = []
        for width in sorted({w for w, _ in s.speed_configs}):
            result = self.results.get(f"speed_predict/w{width}")
            if result and "error" not in result:
                predictions += [(width, row) for row in result["rows"]]
        if not rows and not predictions:
            return {}
        threads = rows[0][3]["threads"] if rows else predictions[0][1]["threads"]
        counted = [(r.get("pretrain_intervals"), r.get("cotrain_intervals")) for *_, r in rows]
        intervals = ("pretraining / co-training intervals timed: " + ", ".join(sorted({f"{a} / {b}" for a, b in counted}))
                     if counted and None not in counted[0] else "step intervals not recorded by this run")
        self.lines += ["## Speed", "",
                       f"Alone on the machine (after the other sections), {threads} torch thread(s) (the default: "
                       f"cores - 1), dsb2018 images. Training: batch 8, mean seconds per step over the step intervals "
                       f"of a {s.speed_steps}-step run ({intervals}; the first co-training step, with kernel "
                       "warm-up, left out; one pseudo-label round every 4th co-training step as by default, so a "
                       "short run may hold one round more or less than the default's share); patch megapixels per "
                       "second = ""8 x patch pixels / co-training step. Prediction: one deterministic step on a "
                       f"{s.speed_mosaic}x{s.speed_mosaic} mosaic, overlapping Gaussian-blended tiles.", ""]
        if rows:
            self.lines += ["| width | patch | precision | pretraining s/step | co-training s/step | patch Mpx/s |",
                           "|---|---|---|---|---|---|"]
            for width, patch, bf16, r in rows:
                self.lines.append(f"| {width} | {patch} | {'bf16' if bf16 else 'fp32'} | {r['pretrain_step']:.2f} | "
                                  f"{r['cotrain_step']:.2f} | {r['patch_mp_per_s']:.3f} |")
            self.lines.append("")
        if predictions:
            self.lines += ["| width | tile | precision | seconds | megapixels/s |", "|---|---|---|---|---|"]
            for width, r in predictions:
                self.lines.append(f"| {width} | {r['tile']} | {'bf16' if r['bf16'] else 'fp32'} | {r['seconds']:.2f} | "
                                  f"{r['mp_per_s']:.2f} |")
            self.lines.append("")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, 2, figsize=(11, 4))
        labels = sorted({f"w{w} p{p}" for w, p, _, _ in rows}, key=lambda t: [int(x[1:]) for x in t.split()])
        for offset, bf16 in ((-0.2, False), (0.2, True)):
            values = {f"w{w} p{p}": r["cotrain_step"] for w, p, b, r in rows if b == bf16}
            axes[0].bar(np.arange(len(labels)) + offset, [values.get(l, np.nan) for l in labels], width=0.4,
                        label="bf16" if bf16 else "fp32")
        axes[0].set_xticks(np.arange(len(labels)), labels)
        axes[0].set_ylabel("seconds per co-training step")
        axes[0].set_yscale("log")
        axes[0].legend()
        keys = sorted({(w, r["tile"]) for w, r in predictions})
        for offset, bf16 in ((-0.2, False), (0.2, True)):
            values = {(w, r["tile"]): r["mp_per_s"] for w, r in predictions if r["bf16"] == bf16}
            axes[1].bar(np.arange(len(keys)) + offset, [values.get(k, np.nan) for k in keys], width=0.4,
                        label="bf16" if bf16 else "fp32")
        axes[1].set_xticks(np.arange(len(keys)), [f"w{w} t{t}" for w, t in keys])
        axes[1].set_ylabel("prediction megapixels / s")
        axes[1].legend()
        figure.tight_layout()
        self.save(figure, "speed.png", "Training and prediction speed")
        return {"train": rows, "predict": predictions}
