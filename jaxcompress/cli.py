"""The ``jaxcompress`` command line.

``jaxcompress demo`` trains the default models on both built-in datasets over several
seeds and prints the accuracy table (dataset, model, params, test accuracy, train time).
``jaxcompress run CONFIG --workdir DIR`` runs (or resumes) an experiment pipeline,
``jaxcompress sweep CONFIG --workdir DIR [--shard I/N] [--vectorize]`` runs a sweep (or one shard
of it), ``jaxcompress report DIR [--json PATH]`` prints the table and writes results.csv,
results.jsonl and pareto.png. Bad input: one ``error:`` line on stderr and exit code 2.
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
        spread = f"± {100 * row['acc_std']:4.2f}" if args.seeds > 1 else " " * 6
        print(f"{dataset:8s} {model:8s} {row['params']:7d} {100 * row['acc_mean']:8.2f} {spread} "
              f"{row['train_seconds']:8.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def _maybe_distributed(args) -> None:
    if getattr(args, "distributed", False):
        import jax

        jax.distributed.initialize()


def _run(args) -> int:
    from jaxcompress.runner import config, pipeline

    cfg = config.get_config(args.config, args.set)
    _maybe_distributed(args)
    pipeline.run(cfg, args.workdir, force=args.force)
    return 0


def _sweep(args) -> int:
    from jaxcompress.runner import sweep

    shard = sweep.parse_shard(args.shard)
    _maybe_distributed(args)
    res = sweep.run_sweep(args.config, args.workdir, shard=shard, vectorize=args.vectorize, overrides=args.set,
                          force=args.force)
    print(f"[sweep] shard {shard[0]}/{shard[1]}: {len(res)} points finished in {args.workdir}")
    return 0


def _report(args) -> int:
    from jaxcompress.runner import report

    report.report(args.dir, args.json)
    return 0


def _add_runner(sub) -> None:
    for name, fn, help_ in (("run", _run, "run or resume an experiment config's pipeline"),
                            ("sweep", _sweep, "run a sweep config (or one shard of it)")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("config", help="path/to/config.py[:key=val,...]")
        p.add_argument("--workdir", required=True)
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
        p.add_argument("--force", action="store_true", help="reuse a workdir that holds a different config")
        p.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() first")
        if name == "sweep":
            p.add_argument("--shard", default=None, metavar="I/N", help="run points I, I+N, I+2N, ...")
            p.add_argument("--vectorize", action="store_true",
                           help="train points that differ only in traced hyperparameters as one vmapped program")
        p.set_defaults(func=fn)
    p = sub.add_parser("report", help="table, results.csv/.jsonl and pareto.png of the runs under DIR")
    p.add_argument("dir")
    p.add_argument("--json", default=None, help="write demo_seconds, compression_ratio, acc_drop_points here")
    p.set_defaults(func=_report)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="jaxcompress", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train the default models on the built-in datasets")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--json", default=None, help="write the table as JSON to this path")
    p.set_defaults(func=_demo)
    _add_runner(sub)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return args.func(args)
    try:
        return args.func(args)
    except ValueError as e:  # ConfigError and the library's argument checks: one line, exit code 2
        msg = str(e).strip().splitlines()
        print(f"error: {msg[0] if msg else type(e).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
