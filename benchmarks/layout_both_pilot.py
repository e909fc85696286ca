"""Pilot of layout "both" on la_mri_3d, K = 2, 360 CPU-s, seed 0: trained as quality.py's job_train trains (the whole pool as
unlabelled images), scored on the 4 test volumes only (the collection's 72 volumes are left out to fit the session).

    cd benchmarks && python layout_both_pilot.py SUBSET OUT.json
"""
import json, sys, time
from pathlib import Path
import tempfile
import quality as q
from _common import load_split, train_model
from quality_stats import labelled_subset
from napari_diffseg.core.method.config import TrainConfig
subset = int(sys.argv[1])
pool, test = load_split(q.dataset_root("la_mri_3d"))
labelled = labelled_subset(len(pool), 2, subset)
config = TrainConfig(budget_seconds=360, budget_clock="cpu", threads=1, labels_only=False, seed=0, layout="both")
cpu, wall = time.process_time(), time.perf_counter()
with tempfile.TemporaryDirectory() as folder:
    out = Path(folder)
    trained = train_model(pool, labelled, config, out)
    train_cpu = time.process_time() - cpu
    card = json.loads((out / "model_card.json").read_text())
    result = {"dataset": "la_mri_3d", "labelled": labelled, "subset": subset, "seed": 0, "arm": "both layouts",
              "steps": trained["steps"], "collapse": trained["collapse"], "train_cpu_seconds": train_cpu,
              "members": card["training"]["members"], "fit": card["metrics"]}
    result.update(q._scores("test", q._predict_all(out, [p[0] for p in test]), [p[1] for p in test]))
    result["wall_seconds"] = time.perf_counter() - wall
json.dump(result, open(sys.argv[2], "w"), indent=1, default=str)
print({k: v for k, v in result.items() if k.startswith("test") or k in ("steps", "wall_seconds")})
