"""Quantization benchmark: QAT step cost, artifact sizes, PTQ / QAT / LSQ accuracy, observers.

    .venv/bin/python scripts/bench_quant.py --json results/bench_quant.json          # full (3 seeds)
    .venv/bin/python scripts/bench_quant.py --quick --json /tmp/bench_quant_quick.json

Protocols: shared/BENCHMARKS.md (dense training via jaxcompress.baselines.train_dense; QAT and
LSQ fine-tune 1000 steps from the float weights with a fresh adam(1e-3), task batch size).
PTQ activations: 8-bit symmetric per-tensor, static ranges from 8 training batches (min/max).
"Group" int4: per output channel and per group along the input axis, the group size being the
largest divisor <= 32 of each layer's input axis (the layers' widths have no common divisor).
Every figure is measured in this one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from _results import write_results  # noqa: E402  (scripts/_results.py)

import jaxcompress.quantization as jq  # noqa: E402
from jaxcompress import baselines, data, layout, models, train, tree  # noqa: E402
from jaxcompress.model import from_apply  # noqa: E402
from jaxcompress.quantization.spec import QuantSpec  # noqa: E402

ACT = QuantSpec(bits=8, granularity="tensor")


# ---------------------------------------------------------------- step time -----------------
def _time(step, state, batch, n):
    state, _ = step(state, batch)
    jax.block_until_ready(state.params)
    t0 = time.perf_counter()
    for _ in range(n):
        state, _ = step(state, batch)
    jax.block_until_ready(state.params)
    return (time.perf_counter() - t0) / n, state


def step_times(n: int, rounds: int) -> dict:
    """w8a8 QAT step / float step on MLP 784-512-512-10, batch 256 (interleaved rounds, medians)."""
    m = models.create("mlp", (784,), 10, rng=0, features=(512, 512))
    rng = np.random.default_rng(0)
    batch = (jnp.asarray(rng.normal(size=(256, 784)), jnp.float32), jnp.asarray(rng.integers(0, 10, 256), jnp.int32))
    ranges = jq.calibrate(m, m.params, [batch[0]])
    opt = optax.adam(1e-3)
    variants = {
        "float": (train.make_train_step(m.apply_fn, opt), None),
        "fake": (train.make_train_step(jq.quantize_activations(m, ACT, ranges), opt,
                                       jq.quantize_weights(QuantSpec(8))), jq.quantize_weights(QuantSpec(8))),
        "int": (train.make_train_step(jq.int_qat_apply(m, QuantSpec(8), ACT, ranges), opt), None),
    }
    try:
        import qwix

        rule = qwix.QtRule(module_path=".*", weight_qtype=jnp.int8, act_qtype=jnp.int8)
        qmod = qwix.quantize_model(m.module, qwix.QtProvider([rule]))
        variants["qwix"] = (train.make_train_step(models.linen_apply(qmod), opt), None)
    except Exception as e:  # noqa: BLE001 - report why qwix is missing
        print(f"qwix not measured: {type(e).__name__}: {e}")
    states = {k: train.create_train_state(jax.tree.map(jnp.copy, m.params), opt, t) for k, (_, t) in variants.items()}
    times = {k: [] for k in variants}
    for _ in range(rounds):
        for k, (step, _) in variants.items():
            dt, states[k] = _time(step, states[k], batch, n)
            times[k].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {f"step_ms_{k}": 1e3 * v for k, v in med.items()}
    out["qat_step_ratio_fake"] = med["fake"] / med["float"]
    out["qat_step_ratio_int"] = med["int"] / med["float"]
    out["qat_step_ratio"] = min(out["qat_step_ratio_fake"], out["qat_step_ratio_int"])
    out["qat_step_impl"] = "fake" if med["fake"] <= med["int"] else "int"
    if "qwix" in med:
        out["qwix_qat_step_ratio"] = med["qwix"] / med["float"]
    return out


# ---------------------------------------------------------------- sizes ---------------------
def size_ratios() -> dict:
    m = models.create("mlp", (784,), 10, rng=0, features=(512, 512))
    fbytes = tree.nbytes(m.params)
    out = {"float32_bytes": fbytes}
    with tempfile.TemporaryDirectory() as d:
        for bits in (8, 4):
            art = jq.convert(m.params, QuantSpec(bits=bits))
            size = jq.save(os.path.join(d, f"int{bits}.npz"), art)
            back = jq.load(os.path.join(d, f"int{bits}.npz"), like=m.params)
            same = all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(jq.dequantize_tree(art)),
                                                                     jax.tree.leaves(jq.dequantize_tree(back))))
            out[f"int{bits}_bytes"] = size
            out[f"int{bits}_size_ratio"] = fbytes / size
            out[f"int{bits}_roundtrip_exact"] = same
    return out


# ---------------------------------------------------------------- accuracy ------------------
def _group_overrides(params, bits, lay):
    ov = {}
    for p, w in tree.named_leaves(params):
        if p in lay:
            n = w.shape[lay[p].group_axis]
            g = max(d for d in range(1, 33) if n % d == 0)
            ov["^" + p + "$"] = QuantSpec(bits=bits, granularity="group", group_size=g)
    return ov


def _finetune(apply_fn, params, transform, ds, seed, steps, batch_size):
    opt = optax.adam(1e-3)
    params = jax.tree.map(jnp.copy, params)  # the train step donates its state
    state, _ = train.fit(apply_fn, params, opt, ds.x_train, ds.y_train, steps=steps, batch_size=batch_size,
                         seed=seed + 1000, transform=transform)
    return state


def accuracy_one(name: str, seed: int, dense_steps, qat_steps: int) -> dict:
    ds = data.load(name)
    model = models.DEFAULT_MODEL[name]
    proto = baselines.PROTOCOLS[name]
    r = baselines.train_dense(name, model, seed=seed, steps=dense_steps)
    m = models.create(model, ds.input_shape, ds.num_classes, rng=seed)
    params = r["params"]
    lay = layout.trace(from_apply(m.apply_fn, params), ds.x_train[:1])  # conv kernels: axes from the model
    ev = lambda apply_fn, p, t=None, s=(): 100 * train.make_eval_fn(apply_fn, t)(p, s, ds.x_test, ds.y_test)["accuracy"]  # noqa: E731
    res = {"float": 100 * r["accuracy"]}
    # PTQ w8a8: per-channel weights, per-tensor static activations
    ranges = jq.calibrate(m, params, jq.calibration_batches(ds.x_train, 128, 8), ACT)
    t8 = jq.quantize_weights(QuantSpec(8), layout=lay)
    fq_apply = jq.quantize_activations(m, ACT, ranges)
    res["ptq_int8"] = ev(fq_apply, params, t8, t8.init(params))
    art = jq.convert(params, QuantSpec(8), layout=lay)
    logits_int = jq.integer_apply(m, art, ranges)(ds.x_test)
    logits_fq = jax.jit(fq_apply)(t8.apply(params, t8.init(params)), ds.x_test)
    res["int8_integer"] = 100 * float(train.accuracy(logits_int, ds.y_test))
    res["int8_argmax_agree"] = 100 * float(jnp.mean((logits_int.argmax(-1) == logits_fq.argmax(-1)).astype(jnp.float32)))
    res["int8_max_abs_logit_diff"] = float(jnp.max(jnp.abs(logits_int - logits_fq)))
    # PTQ weight-only int4 per-channel / group; observer table 4-bit and 3-bit
    for bits in (4, 3):
        for obs in ("minmax", "percentile", "mse", "entropy"):
            t = jq.quantize_weights(QuantSpec(bits), observer=obs, layout=lay)
            res[f"ptq_w{bits}_{obs}"] = ev(m.apply_fn, params, t, t.init(params))
    res["ptq_int4"] = res["ptq_w4_minmax"]
    tg = jq.quantize_weights(QuantSpec(4), overrides=_group_overrides(params, 4, lay), layout=lay)
    res["ptq_int4_group"] = ev(m.apply_fn, params, tg, tg.init(params))
    # QAT weight-only int4/3/2, w4a8, LSQ int4/int2
    for bits, obs in ((4, "minmax"), (3, "minmax"), (2, "minmax"), (3, "mse"), (2, "mse")):
        t = jq.quantize_weights(QuantSpec(bits), observer=obs, layout=lay)
        st = _finetune(m.apply_fn, params, t, ds, seed, qat_steps, proto.batch_size)
        res[f"qat_int{bits}" + ("" if obs == "minmax" else f"_{obs}")] = ev(m.apply_fn, st.params, t, st.tstate)
    t = jq.quantize_weights(QuantSpec(4), layout=lay)
    st = _finetune(fq_apply, params, t, ds, seed, qat_steps, proto.batch_size)
    res["qat_w4a8"] = ev(fq_apply, st.params, t, st.tstate)
    for bits in (4, 2):
        t = jq.lsq_weights(QuantSpec(bits), layout=lay)
        st = _finetune(m.apply_fn, jq.lsq_init_params(params, QuantSpec(bits), layout=lay), t, ds, seed, qat_steps, proto.batch_size)
        res[f"lsq_int{bits}"] = ev(m.apply_fn, st.params, t, st.tstate)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--quick", action="store_true", help="1 seed, short training (development)")
    ap.add_argument("--timing-only", action="store_true", help="only the step-time and size ratios (no training)")
    args = ap.parse_args(argv)
    seeds = (0,) if args.quick else (0, 1, 2)
    out = {"quick": args.quick, "seeds": list(seeds), "jax": jax.__version__}
    t0 = time.time()
    out.update(step_times(n=5 if args.quick else 20, rounds=3 if args.quick else 7))
    print({k: v for k, v in out.items() if "step" in k}, flush=True)
    out.update(size_ratios())
    for name in (() if args.timing_only else ("digits", "mnist1d")):
        dense_steps = 300 if args.quick else None
        qat_steps = 100 if args.quick else 1000
        per_seed = [accuracy_one(name, s, dense_steps, qat_steps) for s in seeds]
        for k in per_seed[0]:
            vals = [r[k] for r in per_seed]
            out[f"acc_{k}_{name}" if not k.startswith("int8_") else f"{k}_{name}"] = float(np.mean(vals))
            if len(vals) > 1:
                out[f"std_{k}_{name}"] = float(np.std(vals))
        f = out[f"acc_float_{name}"]
        for k in per_seed[0]:
            if k != "float" and not k.startswith("int8_"):
                out[f"acc_drop_{k}_{name}"] = f - out[f"acc_{k}_{name}"]
        print({k: round(v, 3) for k, v in out.items() if name in k and "std" not in k}, flush=True)
    out["seconds"] = time.time() - t0
    goals = {"qat_step_ratio": out["qat_step_ratio"] <= 1.1, "int8_size_ratio": out["int8_size_ratio"] >= 3.9,
             "int4_size_ratio": out["int4_size_ratio"] >= 7.6}
    out["timing_only"] = args.timing_only
    out["load_average_1min"] = os.getloadavg()[0]
    for name in (() if args.timing_only else ("digits", "mnist1d")):
        goals[f"acc_drop_ptq_int8_{name}"] = out[f"acc_drop_ptq_int8_{name}"] <= 0.5
        goals[f"acc_drop_qat_int4_{name}"] = out[f"acc_drop_qat_int4_{name}"] <= 1.0
    out["goals_met"] = goals
    write_results(out, args.json)


if __name__ == "__main__":
    main()
