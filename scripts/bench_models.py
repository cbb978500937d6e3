"""Your own model: a linen CNN with BatchNorm + Dropout on MNIST-1D, compressed through the model contract.

    .venv/bin/python scripts/bench_models.py --json results/bench_models.json        # full (3 seeds)
    .venv/bin/python scripts/bench_models.py --quick --json /tmp/bench_models_quick.json

The model is defined here, as a user would write it (``BNCNN``: 3 x (Conv k=5, padding 1, strides 1, 2, 2
-> BatchNorm -> ReLU) -> Dropout -> Dense), and plugs in with ``jaxcompress.model.from_linen``: BatchNorm
statistics are threaded through the step, dropout gets a fresh key per step, the layout comes from
``jaxcompress.layout.trace``.

* ``bn_masked_step_ratio``: train step with 2:4 pruning (along the input channels; Conv_0's single input
  channel does not divide by 4, so it stays dense) chained with int8 per-output-channel fake quantization,
  over the plain train step of the same model, batch 100; steps timed one at a time in interleaved
  rounds in this one process, median over all timed steps. Goal <= 1.15.
* ``bn_prune_qat_kd_acc_drop``: dense protocol of shared/BENCHMARKS.md (adam 1e-2, batch 100, 6000
  steps); then from the dense weights and statistics, 4000 steps of KD from the dense model (T=4,
  alpha=0.9, fresh adam 1e-3) with 90 % ERK magnitude pruning (cubic schedule every 50 steps from step 0
  to 60 % of the fine-tune) chained with int8 QAT; test accuracy of the shipped weights (pruned and on the
  int8 grid) with the trained running statistics. Drop = dense - compressed in points, mean of 3 seeds.
  Goal <= 1.0. Ablations in the same run (same dense models): without QAT (``erk90_kd``), without KD
  (``erk90_int8_ce``, cross-entropy only) and with a uniform 90 % instead of ERK (``uniform90_int8_kd``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from _results import cpu_name, write_results  # noqa: E402  (scripts/_results.py)

import jaxcompress.pruning as jp  # noqa: E402
import jaxcompress.quantization as jq  # noqa: E402
from jaxcompress import data, distillation, layout, train, tree  # noqa: E402
from jaxcompress.model import from_linen  # noqa: E402
from jaxcompress.transform import chain, finalize  # noqa: E402

DENSE_STEPS, FINETUNE_STEPS, BATCH = 6000, 4000, 100


class BNCNN(nn.Module):
    """The MNIST-1D CNN with BatchNorm after every conv and Dropout before the classifier."""

    channels: tuple = (32, 32, 32)
    strides: tuple = (1, 2, 2)
    dropout: float = 0.1

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape((x.shape[0], -1))[..., None]
        for c, s in zip(self.channels, self.strides):
            x = nn.Conv(c, (5,), strides=(s,), padding=((1, 1),))(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x.reshape((x.shape[0], -1)))
        return nn.Dense(10)(x)




def make_model(ds, seed: int):
    mod = BNCNN()
    return from_linen(mod, mod.init(jax.random.key(seed), jnp.zeros((1, *ds.input_shape), jnp.float32)))


def divisible_by_4(lay):
    """Weights whose input (group) axis divides by 4: the ones 2:4 applies to."""
    return lambda path, leaf: path in lay and leaf.shape[lay[path].group_axis] % 4 == 0


# ---------------------------------------------------------------- step time -----------------
def step_times(ds, rounds: int, per_round: int) -> dict:
    m = make_model(ds, 0)
    lay = layout.trace(m, ds.x_train[:BATCH])
    opt = optax.adam(1e-3)
    batch = (jnp.asarray(ds.x_train[:BATCH]), jnp.asarray(ds.y_train[:BATCH]))
    variants = {
        "plain": None,
        "nm_int8": chain(jp.magnitude(nm=(2, 4), layout=lay, where=divisible_by_4(lay)),
                         jq.quantize_weights(jq.QuantSpec(8), layout=lay)),
    }
    steps, states = {}, {}
    for name, t in variants.items():
        steps[name] = train.make_train_step(m, opt, t)
        states[name] = train.create_train_state(m, opt, t)
        for _ in range(5):  # compile + warm up
            states[name], _ = steps[name](states[name], batch)
        jax.block_until_ready(states[name].params)
    times = {n: [] for n in variants}
    for _ in range(rounds):
        for name in variants:
            st = states[name]
            for _ in range(per_round):
                t0 = time.perf_counter()
                st, _ = steps[name](st, batch)
                jax.block_until_ready(st.params)
                times[name].append(time.perf_counter() - t0)
            states[name] = st
    med = {n: statistics.median(v) for n, v in times.items()}
    nm_paths = sorted(p for p in lay if divisible_by_4(lay)(p, dict(tree.named_leaves(m.params))[p]))
    return {"plain_step_ms": 1e3 * med["plain"], "nm_int8_step_ms": 1e3 * med["nm_int8"],
            "bn_masked_step_ratio": med["nm_int8"] / med["plain"], "timed_steps_per_variant": rounds * per_round,
            "nm_paths": nm_paths}


# ---------------------------------------------------------------- accuracy ------------------
def accuracy(m, params, model_state, ds) -> float:
    return 100 * train.make_eval_fn(m)(params, (), ds.x_test, ds.y_test, model_state)["accuracy"]


# the headline variant, then two ablations that say where the loss comes from
VARIANTS = {
    "erk90_int8_kd": dict(distribution="erk", qat=True, kd=True),
    "erk90_kd": dict(distribution="erk", qat=False, kd=True),        # no QAT: the quantization's share
    "erk90_int8_ce": dict(distribution="erk", qat=True, kd=False),   # no KD (alpha 0): what KD adds
    "uniform90_int8_kd": dict(distribution="uniform", qat=True, kd=True),  # the distribution's share
}


def compress(m, teacher, lay, ds, seed: int, finetune_steps: int, distribution: str, qat: bool, kd: bool) -> dict:
    schedule = jp.polynomial(begin=0, end=int(0.6 * finetune_steps), frequency=50)
    parts = [jp.magnitude(0.9, schedule=schedule, distribution=distribution, layout=lay)]
    if qat:
        parts.append(jq.quantize_weights(jq.QuantSpec(8), layout=lay))
    t = chain(*parts)
    loss = distillation.kd(4.0, 0.9 if kd else 0.0)  # alpha = 0: cross-entropy only
    step = distillation.make_distill_step(teacher, teacher, optax.adam(1e-3), loss, t)
    state = step.init(teacher, ds.x_train[:1], seed=seed)
    batches = data.BatchIterator(ds.x_train, ds.y_train, BATCH, seed)
    for _ in range(finetune_steps):
        state, _ = step(state, next(batches))
    shipped = finalize(state.params, state.tstate, t)
    kernels = {p: np.asarray(w) for p, w in tree.named_leaves(shipped) if p in lay}
    nonzero = sum(int(np.count_nonzero(w)) for w in kernels.values())
    return {"acc": accuracy(m, shipped, state.model_state, ds),
            "kernel_sparsity": 1 - nonzero / sum(w.size for w in kernels.values()),
            "per_leaf_sparsity": {p: round(1 - np.count_nonzero(w) / w.size, 4) for p, w in kernels.items()}}


def run_seed(ds, seed: int, dense_steps: int, finetune_steps: int, variants) -> dict:
    m = make_model(ds, seed)
    t0 = time.perf_counter()
    dense, _ = train.fit(m, None, optax.adam(1e-2), ds.x_train, ds.y_train, steps=dense_steps, batch_size=BATCH,
                         seed=seed)
    dense_acc = accuracy(m, dense.params, dense.model_state, ds)
    teacher = m.replace(params=dense.params, state=dense.model_state)
    lay = layout.trace(teacher, ds.x_train[:BATCH])
    out = {"seed": seed, "dense_acc": dense_acc}
    for name in variants:
        r = compress(m, teacher, lay, ds, seed, finetune_steps, **VARIANTS[name])
        out[name] = {**r, "drop": dense_acc - r["acc"]}
    out["seconds"] = time.perf_counter() - t0
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="1 seed, 300 + 300 steps, few timing rounds")
    args = ap.parse_args()
    ds = data.load("mnist1d")
    seeds = (0,) if args.quick else (0, 1, 2)
    dense_steps, ft_steps = (300, 300) if args.quick else (DENSE_STEPS, FINETUNE_STEPS)
    t0 = time.perf_counter()
    res = {"cpu": cpu_name(), "devices": jax.device_count(), "quick": args.quick, "dense_steps": dense_steps,
           "finetune_steps": ft_steps, "batch_size": BATCH,
           "params": tree.count_params(make_model(ds, 0).params)}
    res.update(step_times(ds, rounds=5 if args.quick else 30, per_round=20))
    variants = ["erk90_int8_kd"] if args.quick else list(VARIANTS)
    runs = [run_seed(ds, s, dense_steps, ft_steps, variants) for s in seeds]
    drops = [r["erk90_int8_kd"]["drop"] for r in runs]
    res.update({
        "runs": runs,
        "dense_acc_mean": float(np.mean([r["dense_acc"] for r in runs])),
        "compressed_acc_mean": float(np.mean([r["erk90_int8_kd"]["acc"] for r in runs])),
        "bn_prune_qat_kd_acc_drop": float(np.mean(drops)),
        "bn_prune_qat_kd_acc_drop_std": float(np.std(drops)),
        "variant_drop_mean": {v: float(np.mean([r[v]["drop"] for r in runs])) for v in variants},
        "goals": {"bn_masked_step_ratio": 1.15, "bn_prune_qat_kd_acc_drop": 1.0},
        "seconds": time.perf_counter() - t0,
    })
    res["goals_met"] = {k: res[k] <= v for k, v in res["goals"].items()}
    write_results(res, args.json)


if __name__ == "__main__":
    main()
