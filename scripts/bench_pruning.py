"""Pruning benchmark: masked / re-mask / STE step cost, exact global threshold vs sort, accuracy.

    .venv/bin/python scripts/bench_pruning.py --json results/bench_pruning.json        # full (3 seeds)
    .venv/bin/python scripts/bench_pruning.py --quick --json /tmp/bench_pruning_quick.json

Step times: MLP 784-300-100-10, batch 128, adam, random inputs; dense, masked (90 % mask
fixed), re-mask (90 % layer-wise magnitude mask recomputed in that step) and STE (mask
recomputed in every forward pass) steps timed one at a time in interleaved rounds in this
one process; ratios are medians over all timed steps.
Threshold: exact global 90 % cut over 50M float32 weights in 10 leaves (jaxcompress counting
selection, returning the masks) vs jnp.sort of the same data (threshold only).
Accuracy (shared/BENCHMARKS.md): dense weights from baselines.train_dense; fine-tune with a fresh
adam(1e-3) for 3000 (digits) / 4000 (MNIST-1D) steps, task batch size, cubic schedule updated
every 50 steps from step 0 to 60 % of the fine-tune. Drop = dense - pruned, in points.
Every figure is measured in this one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from _results import write_results  # noqa: E402  (scripts/_results.py)

import jaxcompress.pruning as jp  # noqa: E402
from jaxcompress import baselines, data, layout, models, train  # noqa: E402
from jaxcompress.pruning.surgery import flops  # noqa: E402

FINETUNE = {"digits": 3000, "mnist1d": 4000}
MODEL = {"digits": "mlp", "mnist1d": "cnn1d"}


# ---------------------------------------------------------------- step time -----------------
def step_times(rounds: int, per_round: int) -> dict:
    m = models.create("mlp", (784,), 10, rng=0)
    rng = np.random.default_rng(0)
    batch = (jnp.asarray(rng.normal(size=(128, 784)), jnp.float32), jnp.asarray(rng.integers(0, 10, 128), jnp.int32))
    opt = optax.adam(1e-3)
    transforms = {
        "dense": None,
        "masked": jp.magnitude(0.9, schedule=jp.one_shot(0)),  # mask fixed after init
        "remask": jp.magnitude(0.9, schedule=jp.every_step()),  # re-mask in every timed step
        "ste": jp.magnitude(0.9, ste=True),
    }
    steps, states = {}, {}
    for name, t in transforms.items():
        steps[name] = train.make_train_step(m.apply_fn, opt, t)
        states[name] = train.create_train_state(jax.tree.map(jnp.copy, m.params), opt, t)
        for _ in range(5):  # compile + warm up
            states[name], _ = steps[name](states[name], batch)
        jax.block_until_ready(states[name].params)
    times = {n: [] for n in transforms}
    cpu = {n: [] for n in transforms}  # process CPU time: less sensitive to other jobs on the machine
    for _ in range(rounds):
        for name in transforms:
            st = states[name]
            for _ in range(per_round):
                t0, c0 = time.perf_counter(), time.process_time()
                st, _ = steps[name](st, batch)
                jax.block_until_ready(st.params)
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
            states[name] = st
    med = {n: statistics.median(v) for n, v in times.items()}
    cmed = {n: statistics.median(v) for n, v in cpu.items()}
    assert int(states["remask"].tstate.count) >= rounds * per_round  # every timed step re-masked
    return {
        "dense_step_ms": med["dense"] * 1e3, "masked_step_ms": med["masked"] * 1e3,
        "remask_step_ms": med["remask"] * 1e3, "ste_step_ms": med["ste"] * 1e3,
        "masked_step_ratio": med["masked"] / med["dense"], "remask_step_ratio": med["remask"] / med["dense"],
        "ste_step_ratio": med["ste"] / med["dense"], "timed_steps_per_variant": rounds * per_round,
        "cpu_time_ratios": {n: cmed[n] / cmed["dense"] for n in ("masked", "remask", "ste")},
        "load_average_1min": os.getloadavg()[0],
    }


# ---------------------------------------------------------------- threshold -----------------
def threshold_times(total: int, leaves: int, reps: int) -> dict:
    n = total // leaves
    xs = [jax.random.normal(jax.random.key(i), (n,)) for i in range(leaves)]
    jax.block_until_ready(xs)
    k = total - round(0.9 * total)
    ours = jax.jit(lambda xs: jp.topk_masks([jnp.abs(x) for x in xs], k))
    ref = jax.jit(lambda xs: jnp.sort(jnp.concatenate([jnp.abs(x) for x in xs]))[total - k])

    def timed(f, r):
        out = f(xs)
        jax.block_until_ready(out)
        ts = []
        for _ in range(r):
            t0 = time.perf_counter()
            out = f(xs)
            jax.block_until_ready(out)
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts), out

    t_ours, masks = timed(ours, reps)
    t_sort, thr = timed(ref, max(1, reps // 3))
    kept = sum(int(m.sum()) for m in masks)
    smallest_kept = min(float(jnp.min(jnp.where(m, jnp.abs(x), jnp.inf))) for m, x in zip(masks, xs))
    return {"global_threshold_s": t_ours, "sort_threshold_s": t_sort, "global_vs_sort_speedup": t_sort / t_ours,
            "threshold_weights": total, "threshold_leaves": leaves, "threshold_kept_exact": kept == k,
            "threshold_matches_sort": smallest_kept == float(thr)}


# ---------------------------------------------------------------- accuracy ------------------
def variants(ds_name: str, steps: int, lay: dict) -> dict:
    end = int(0.6 * steps)
    cubic = jp.polynomial(begin=0, end=end, frequency=50)
    hidden = r"Dense_[01]/kernel" if ds_name == "digits" else r"Conv_\d/kernel"
    nm_where = r"Dense_0/kernel" if ds_name == "mnist1d" else None  # conv in-channels (1, 25) not divisible by 4
    v = {f"{int(s * 100)}_uniform": jp.magnitude(s, schedule=cubic) for s in (0.5, 0.75, 0.9, 0.95)}
    v["90_global"] = jp.magnitude(0.9, schedule=cubic, scope="global", normalize=True)
    v["2:4"] = jp.magnitude(nm=(2, 4), schedule=jp.one_shot(0), where=nm_where)
    v["50_structured"] = jp.magnitude(0.5, schedule=cubic, structured=1, where=hidden, layout=lay)  # conv: needs axes
    return v


def accuracy(datasets, seeds, steps_override: int | None) -> dict:
    out = {}
    for ds_name in datasets:
        ds = data.load(ds_name)
        proto = baselines.PROTOCOLS[ds_name]
        steps = steps_override or FINETUNE[ds_name]
        rows: dict[str, list] = {}
        extra: dict[str, list] = {}
        for seed in seeds:
            t0 = time.perf_counter()
            dense = baselines.train_dense(ds_name, MODEL[ds_name], seed=seed)
            rows.setdefault("dense", []).append(100 * dense["accuracy"])
            m = models.create(MODEL[ds_name], ds.input_shape, ds.num_classes, rng=seed)
            lay = layout.trace(m.apply_fn, ds.x_test[:1], params=m.params)
            for name, t in variants(ds_name, steps, lay).items():
                opt = optax.adam(1e-3)
                state, _ = train.fit(m.apply_fn, jax.tree.map(jnp.copy, dense["params"]), opt, ds.x_train,
                                     ds.y_train, steps=steps, batch_size=proto.batch_size, seed=seed, transform=t)
                ev = train.make_eval_fn(m.apply_fn, t)(state.params, state.tstate, ds.x_test, ds.y_test)
                rows.setdefault(name, []).append(100 * ev["accuracy"])
                extra.setdefault(f"sparsity_{name}", []).append(jp.params_sparsity(state.params))
                if name == "50_structured":
                    small, sp, info = jp.shrink(m.module, state.params, state.tstate.masks)
                    small_apply = models.linen_apply(small)
                    ev2 = train.make_eval_fn(small_apply)(sp, (), ds.x_test, ds.y_test)
                    x1 = ds.x_test[:100]
                    diff = float(jnp.max(jnp.abs(small_apply(sp, x1) - m.apply_fn(t.apply(state.params, state.tstate), x1))))
                    extra.setdefault("structured_after_surgery", []).append(100 * ev2["accuracy"])
                    extra.setdefault("structured_surgery_max_abs_diff", []).append(diff)
                    extra.setdefault("structured_params_ratio", []).append(info["params_after"] / info["params_before"])
                    extra.setdefault("structured_flops_ratio", []).append(
                        flops(small_apply, sp, x1) / flops(m.apply_fn, state.params, x1))
                    extra.setdefault("structured_widths", []).append(list(info["widths_after"]))
            print(f"[{ds_name} seed {seed}] {time.perf_counter() - t0:.0f}s "
                  + " ".join(f"{k}={v[-1]:.2f}" for k, v in rows.items()), flush=True)
        dense_mean = float(np.mean(rows["dense"]))
        table = {}
        for name, accs in rows.items():
            table[name] = {"mean": float(np.mean(accs)), "std": float(np.std(accs)),
                           "drop": dense_mean - float(np.mean(accs))}
            if f"sparsity_{name}" in extra:
                table[name]["sparsity"] = float(np.mean(extra[f"sparsity_{name}"]))
        for key in ("structured_after_surgery", "structured_surgery_max_abs_diff", "structured_params_ratio",
                    "structured_flops_ratio"):
            if key in extra:
                table.setdefault("50_structured", {})[key] = float(np.mean(extra[key]))
        if "structured_widths" in extra:
            table["50_structured"]["widths_after"] = extra["structured_widths"][0]
        out[f"table_{ds_name}"] = table
        out[f"acc_dense_{ds_name}"] = dense_mean
        out[f"acc_90_{ds_name}"] = table["90_uniform"]["mean"]
        out[f"acc_drop_90_{ds_name}"] = table["90_uniform"]["drop"]
        out[f"finetune_steps_{ds_name}"] = steps
    out["seeds"] = list(seeds)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--quick", action="store_true", help="reduced run: 1 seed, 300 fine-tune steps, 5M weights")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--steps", type=int, default=None, help="fine-tune steps (default: the protocol's)")
    ap.add_argument("--datasets", nargs="+", default=["digits", "mnist1d"])
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    args = ap.parse_args()
    res = {"quick": args.quick, "jax": jax.__version__, "devices": str(jax.devices()[0].platform)}
    t0 = time.perf_counter()
    if not args.skip_timing:
        res.update(step_times(rounds=4 if args.quick else 20, per_round=25))
        print({k: round(v, 3) for k, v in res.items() if k.endswith(("ratio", "_ms"))}, flush=True)
        res.update(threshold_times(5_000_000 if args.quick else 50_000_000, 10, 3 if args.quick else 5))
        print({k: res[k] for k in res if "threshold" in k or "speedup" in k}, flush=True)
    if not args.skip_accuracy:
        seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
        steps = args.steps or (300 if args.quick else None)
        res.update(accuracy(args.datasets, seeds, steps))
    res["seconds"] = time.perf_counter() - t0
    goals = {"masked_step_ratio": ("<=", 1.03), "remask_step_ratio": ("<=", 2.0), "ste_step_ratio": ("<=", 2.0),
             "global_vs_sort_speedup": (">=", 20.0)}
    res["goals"] = {k: (res[k] <= g if op == "<=" else res[k] >= g) for k, (op, g) in goals.items() if k in res}
    for ds in ("digits", "mnist1d"):
        if f"acc_drop_90_{ds}" in res:
            res["goals"][f"acc_drop_90_{ds}"] = res[f"acc_drop_90_{ds}"] <= 1.0
    write_results(res, args.json)


if __name__ == "__main__":
    main()
