"""The ``jaxcompress`` command line.

``jaxcompress demo`` trains the default models on both built-in datasets over several
seeds and prints the accuracy table (dataset, model, params, test accuracy, train time).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

DEMO_RUNS = (("digits", "mlp"), ("digits", "cnn2d"), ("digits", "nnx_mlp"), ("mnist1d", "cnn1d"), ("mnist1d", "mlp"))


def _demo(args) -> int:
    from jaxcompress.baselines import train_dense

    if args.seeds <= 0:
        print("error: --seeds must be positive", file=sys.stderr)
        return 2
    rows = []
    print(f"{'dataset':8s} {'model':8s} {'params':>7s} {'test accuracy':>16s} {'train s':>8s}", flush=True)
    for dataset, model in DEMO_RUNS:
        accs, secs = [], []
        for seed in range(args.seeds):
            r = train_dense(dataset, model, seed=seed)
            accs.append(r["accuracy"])
            secs.append(r["seconds"])
        row = {"dataset": dataset, "model": model, "params": r["params_count"],
               "acc_mean": float(np.mean(accs)), "acc_std": float(np.std(accs)), "accs": accs,
               "train_seconds": float(np.mean(secs))}
        rows.append(row)
        print(f"{dataset:8s} {model:8s} {row['params']:7d} {100 * row['acc_mean']:8.2f} ± {100 * row['acc_std']:4.2f} "
              f"{row['train_seconds']:8.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="jaxcompress", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train the default models on the built-in datasets")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--json", default=None, help="write the table as JSON to this path")
    p.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
