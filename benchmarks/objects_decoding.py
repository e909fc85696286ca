"""How objects mode's decoding was chosen (#28): train objects models once, keep their class probabilities, then
score decodings of the *same* probabilities (no training noise between them).

    python benchmarks/objects_decoding.py train --arm objects --seed 0 --out /tmp/objprobs
    python benchmarks/objects_decoding.py train --arm labels-only --seed 1 --out /tmp/objprobs
    python benchmarks/objects_decoding.py train --data ../shared/data_large/glas --collection 20 --out /tmp/objprobs
    python benchmarks/objects_decoding.py decode /tmp/objprobs/*.npz --where collection test \
        --json benchmarks/objects/decoding.json

``train``: benchmarks/objects.py's training (``train_arm``: K labelled = subset ``--subset`` of the pool, 180 CPU-s,
one torch thread, boundary width 1), the test images' and the first ``--collection`` unlabelled pool images' probabilities saved as float16.
``decode``: AP@0.5 (pooled, StarDist's definition) of each decoding below; "oracle split" gives the network's own
extent the true objects' ids, the ceiling of any seed rule. Choose on the collection, read the test images after.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import tempfile

import numpy as np

from objects import DEFAULT_DATA, LABELS_ONLY, OBJECTS, load_instances, train_arm
from quality_stats import labelled_subset


def _collection(pool_size: int, labelled: int, subset: int, size: int) -> tuple[list[int], list[int]]:
    chosen = labelled_subset(pool_size, labelled, subset)
    return chosen, [i for i in range(pool_size) if i not in set(chosen)][:size]


def train(args) -> None:
    root = Path(args.data)
    pool, test = load_instances(root)
    labelled, collection = _collection(len(pool), args.labelled, args.subset, args.collection)
    with tempfile.TemporaryDirectory() as folder:
        model, facts = train_arm(pool, labelled, LABELS_ONLY if args.arm == "labels-only" else OBJECTS, args.budget,
                                 args.seed, Path(folder))
        saved = {}
        for where, chosen in (("test", test), ("collection", [pool[i] for i in collection])):
            for k, (image, _, _) in enumerate(chosen):
                saved[f"{where}_{k}"] = model.predict(image).probabilities.astype(np.float16)
    name = f"{root.name}_{args.arm}_bw1_s{args.seed}_sub{args.subset}.npz"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"data": root.name, "arm": args.arm, "seed": args.seed, "subset": args.subset,
                       "labelled": args.labelled, "collection": args.collection, "steps": facts["steps"]})
    np.savez_compressed(Path(args.out) / name, meta=meta, **saved)
    print(name, "steps", facts["steps"], flush=True)


def decoders() -> dict:
    """name -> function (probabilities, true instances) -> instances."""
    from napari_diffseg.core.objects import decode

    def with_depth(depth):
        def run(probabilities, truth):
            kept = decode.SPLIT_DEPTH
            decode.SPLIT_DEPTH = depth
            try:
                return decode.probabilities_to_instances(probabilities)
            finally:
                decode.SPLIT_DEPTH = kept
        return run

    def oracle(probabilities, truth):
        return decode.relabel_sequential(np.where(probabilities[0] < 0.5, truth, 0))

    table = {"no split, specks from 4 px (before)": lambda p, t: decode.probabilities_to_instances(p, split=False,
                                                                                                      min_size=4),
             "no split": lambda p, t: decode.probabilities_to_instances(p, split=False)}
    for depth in (0.05, 0.1, 0.15, 0.2, 0.3):
        table[f"split, depth {depth}"] = with_depth(depth)
    table["oracle split"] = oracle
    return table


def decode_saved(args) -> None:
    from napari_diffseg.core.objects.metrics import pooled_scores

    rows, cache = [], {}
    table = decoders()
    print("| model | where | " + " | ".join(table) + " |")
    print("|---|---|" + "---|" * len(table))
    for path in args.files:
        saved = np.load(path)
        meta = json.loads(str(saved["meta"]))
        root = Path(args.data_root) / meta["data"]
        if root not in cache:
            cache[root] = load_instances(root)
        pool, test = cache[root]
        _, collection = _collection(len(pool), meta["labelled"], meta["subset"], meta["collection"])
        for where in args.where:
            truth = [p[1] for p in test] if where == "test" else [pool[i][1] for i in collection]
            probabilities = [saved[f"{where}_{k}"].astype(np.float32) for k in range(len(truth))]
            scores = {name: pooled_scores([(t, run(p, t)) for p, t in zip(probabilities, truth)])["ap50"]
                      for name, run in table.items()}
            rows.append({**meta, "where": where, "ap50": scores})
            print(f"| {Path(path).stem} ({meta['steps']} steps) | {where} | "
                  + " | ".join(f"{v:.3f}" for v in scores.values()) + " |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"command": "python benchmarks/objects_decoding.py decode ...",
                                               "rows": rows}, indent=1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", default=str(DEFAULT_DATA))
    t.add_argument("--arm", choices=("objects", "labels-only"), default="objects")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--subset", type=int, default=0)
    t.add_argument("--labelled", type=int, default=2)
    t.add_argument("--collection", type=int, default=40)
    t.add_argument("--budget", type=float, default=180.0)
    t.add_argument("--out", required=True)
    d = sub.add_parser("decode")
    d.add_argument("files", nargs="+")
    d.add_argument("--where", nargs="+", default=["collection", "test"])
    d.add_argument("--data-root", default=str(DEFAULT_DATA.parent))
    d.add_argument("--json")
    args = parser.parse_args(argv)
    train(args) if args.command == "train" else decode_saved(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
