"""A GPT trained on the Python stdlib's own source: perplexity of every one-shot method (+ KD recovery).

Command:
  .venv/bin/python scripts/bench_lm.py --json results/bench_lm.json            # full (see README)
  .venv/bin/python scripts/bench_lm.py --quick --json /tmp/lm_quick.json        # smoke run, minutes

1. Float model: ``jaxcompress.models.gpt`` (4 pre-LN blocks, d=256, 4 heads, context 128, untied
   4096-token byte-level BPE trained on the train split of ``jaxcompress.data.code.stdlib_code``),
   trained with AdamW on non-overlapping 128-token windows of the train split; checkpoints every
   ``--checkpoint-every`` steps under ``--workdir`` (a rerun resumes, a finished model is reused).
2. One-shot variants on the calibration engine (``jaxcompress.calibration.methods``, blocks
   ``blocks_<i>``; embeddings, positions and the LM head stay float, as in the GPTQ paper):
   RTN / GPTQ W4 and W3 g128, AWQ W4 g128, SmoothQuant W8A8 (static per-tensor, int8 x int8 ->
   int32), magnitude / Wanda / SparseGPT at 50 % and 2:4, SparseGPT 2:4 + GPTQ-style W4 jointly.
   Calibration: ``--calib`` windows of the train split.
3. KD recovery from the float model (token-level KD, ``--kd-steps`` steps): the SparseGPT 2:4 model
   with its mask fixed, and the GPTQ W3 model under W3 g128 fake quantization (STE).

Perplexity: test split, context 128, stride 64 (each token scored once, with >= 64 tokens of
context after the first window), first ``--eval-tokens`` tokens. Keys ``ppl_<variant>``,
``bytes_<variant>`` (stored bytes of the block weights at their bit width, + the float rest),
``float_train_seconds``, ``tokens_train``, ...
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from _results import cpu_name, write_results  # noqa: E402

from jaxcompress import lm, train  # noqa: E402
from jaxcompress import tree as jtree  # noqa: E402
from jaxcompress.calibration import methods as cm  # noqa: E402
from jaxcompress.data.code import stdlib_code  # noqa: E402
from jaxcompress.distillation import kd, make_distill_step  # noqa: E402
from jaxcompress.models import gpt  # noqa: E402
from jaxcompress.pruning import fixed  # noqa: E402
from jaxcompress.quantization import QuantSpec, quantize_weights  # noqa: E402
from jaxcompress.runner.checkpoint import Checkpointer, to_flat  # noqa: E402
from jaxcompress.transform import finalize  # noqa: E402

CONTEXT, STRIDE = 128, 64




def train_float(a, corpus, log):
    """Train (or resume, or reuse) the float GPT; returns (Model, info)."""
    model = gpt.create(corpus.vocab_size, CONTEXT, rng=0, **a.arch)
    x, y = lm.windows(corpus.tokens["train"], CONTEXT)
    sched = optax.warmup_cosine_decay_schedule(0.0, a.lr, max(a.steps // 20, 1), a.steps, a.lr / 10)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=0.01))
    state = train.create_train_state(model, opt, seed=0)
    ck = Checkpointer(os.path.join(a.workdir, "float_ckpt"), keep=2, best_metric="neg_loss")
    restored = ck.restore_latest({"state": state, "seconds": np.zeros((), np.float64)})
    start, seconds = 0, 0.0
    if restored is not None:
        start, tree = restored
        state, seconds = tree["state"], float(tree["seconds"])
        log(f"float: resumed at step {start}")
    step_fn = train.make_train_step(model, opt)
    # deterministic order: a permutation of the windows per epoch, seeded by the epoch
    per_epoch = len(x) // a.batch_size
    t0 = time.perf_counter()
    loss = float("nan")
    for s in range(start, a.steps):
        epoch, i = divmod(s, per_epoch)
        perm = np.random.default_rng(epoch).permutation(len(x))[i * a.batch_size:(i + 1) * a.batch_size]
        state, m = step_fn(state, (x[perm], y[perm]))
        if (s + 1) % a.log_every == 0 or s + 1 == a.steps:
            loss = float(m["loss"])
            log(f"float: step {s + 1}/{a.steps} loss {loss:.4f} ({seconds + time.perf_counter() - t0:.0f} s)")
        if (s + 1) % a.checkpoint_every == 0 or s + 1 == a.steps:
            ck.save(s + 1, {"state": state, "seconds": np.asarray(seconds + time.perf_counter() - t0)},
                    {"neg_loss": -float(m["loss"])})
    ck.wait()
    seconds += time.perf_counter() - t0
    ck.close()
    np.savez(os.path.join(a.workdir, "float_params.npz"), **to_flat(state.params))
    return model.replace(params=state.params), {"float_train_seconds": round(seconds, 1), "float_steps": a.steps,
                                                "float_train_tokens_seen": a.steps * a.batch_size * CONTEXT}


def block_bytes(model, result: cm.Compressed | None = None, sparse: bool = False) -> int:
    """Stored bytes: block kernels at their bit width (+ scales/zeros), or bitmask+values when pruned."""
    total = 0
    for path, leaf in jtree.named_leaves(model.params):
        q = None if result is None else result.quantized.get(path)
        mask = None if result is None else result.masks.get(path)
        if q is not None:
            n = int(np.prod(leaf.shape))
            kept = n if mask is None else int(np.asarray(mask).sum())
            total += (kept * q.spec.bits + 7) // 8 + q.scale.size * 4 + (0 if q.zero_point is None else q.zero_point.size)
            total += 0 if mask is None else (n + 7) // 8
        elif mask is not None:
            total += int(np.asarray(mask).sum()) * 4 + (leaf.size + 7) // 8
        else:
            total += leaf.size * 4
    return total


def recover(a, teacher, params, transform, x, y, log, name):
    """``a.kd_steps`` of token-level KD from the float teacher; returns the finalized params."""
    opt = optax.adamw(optax.cosine_decay_schedule(a.kd_lr, a.kd_steps), weight_decay=0.0)
    student = teacher.replace(params=params)
    step = make_distill_step(student, teacher, opt, kd(temperature=1.0, alpha=0.0), transform)
    st = step.init(student, x[:a.kd_batch])
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    for s in range(a.kd_steps):
        idx = rng.integers(0, len(x), a.kd_batch)
        st, m = step(st, (x[idx], y[idx]))
    log(f"{name}: KD {a.kd_steps} steps, last loss {float(m['loss']):.4f} ({time.perf_counter() - t0:.0f} s)")
    return finalize(st.params, st.tstate, transform)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workdir", default="runs/gpt_stdlib")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--calib", type=int, default=128)
    p.add_argument("--eval-tokens", type=int, default=65536)
    p.add_argument("--kd-steps", type=int, default=150)
    p.add_argument("--kd-batch", type=int, default=16)
    p.add_argument("--kd-lr", type=float, default=3e-4)
    p.add_argument("--train-only", action="store_true")
    a = p.parse_args()
    a.arch = dict(d_model=256, n_layers=4, n_heads=4)
    if a.quick:
        for k, v in dict(steps=20, calib=16, eval_tokens=4096, kd_steps=5, checkpoint_every=10).items():
            if getattr(a, k) == p.get_default(k):  # what the command line sets wins
                setattr(a, k, v)
        a.workdir = a.workdir.rstrip("/") + "_quick"
        a.arch = dict(d_model=128, n_layers=2, n_heads=2)
    log = lambda s: print(s, flush=True)  # noqa: E731
    t_all = time.perf_counter()
    corpus = stdlib_code(vocab_size=4096)
    res = {"cpu": cpu_name(), "devices": str(jax.devices()), "context": CONTEXT, "stride": STRIDE,
           "vocab_size": corpus.vocab_size, "corpus_fingerprint": corpus.fingerprint, **corpus.counts(),
           "eval_tokens_cap": a.eval_tokens, "steps": a.steps, "batch_size": a.batch_size, "arch": a.arch}
    model, info = train_float(a, corpus, log)
    res.update(info)
    res["params"] = jtree.count_params(model.params)
    if a.train_only:
        return write_results(res, a.json)
    test = corpus.tokens["test"]

    def ppl(apply_or_model, params, name):
        t = time.perf_counter()
        r = lm.perplexity(apply_or_model, params, test, context=CONTEXT, stride=STRIDE, max_tokens=a.eval_tokens)
        res[f"ppl_{name}"] = round(r["perplexity"], 3)
        log(f"{name}: ppl {r['perplexity']:.3f} ({time.perf_counter() - t:.0f} s)")
        res["eval_tokens"] = r["tokens"]

    lm.check_vocab(model, corpus.vocab_size, CONTEXT)
    ppl(model, model.params, "float")
    res["bytes_float"] = block_bytes(model)
    xc, _ = lm.windows(corpus.tokens["train"], CONTEXT)
    calib = [jnp.asarray(xc[i:i + 16]) for i in range(0, a.calib, 16)]
    blocks_only = lambda path: path.startswith("blocks_")  # noqa: E731 - the LM head stays float
    E = dict(blocks=gpt.BLOCKS, where=blocks_only)
    variants = {
        "rtn_w4_g128": lambda: cm.rtn(model, calib, bits=4, group_size=128, where=blocks_only),
        "gptq_w4_g128": lambda: cm.gptq(model, calib, bits=4, group_size=128, **E),
        "rtn_w3_g128": lambda: cm.rtn(model, calib, bits=3, group_size=128, where=blocks_only),
        "gptq_w3_g128": lambda: cm.gptq(model, calib, bits=3, group_size=128, **E),
        "awq_w4_g128": lambda: cm.awq(model, calib, bits=4, group_size=128, **E),
        "smoothquant_w8a8": lambda: cm.smoothquant(model, calib, alpha=0.5, **E),
        "magnitude_sp50": lambda: cm.magnitude(model, calib, sparsity=0.5, where=blocks_only),
        "wanda_sp50": lambda: cm.wanda(model, calib, sparsity=0.5, **E),
        "sparsegpt_sp50": lambda: cm.sparsegpt(model, calib, sparsity=0.5, **E),
        "magnitude_24": lambda: cm.magnitude(model, calib, nm=(2, 4), where=blocks_only),
        "wanda_24": lambda: cm.wanda(model, calib, nm=(2, 4), **E),
        "sparsegpt_24": lambda: cm.sparsegpt(model, calib, nm=(2, 4), **E),
        "sparsegpt_24_w4": lambda: cm.sparsegpt(model, calib, nm=(2, 4), bits=4, group_size=128, **E),
    }
    results = {}
    for name, fn in variants.items():
        t = time.perf_counter()
        r = fn()
        res[f"calib_seconds_{name}"] = round(time.perf_counter() - t, 1)
        results[name] = r
        if name == "smoothquant_w8a8":
            ppl(cm.integer_apply(model, r), r.params, name)
        else:
            ppl(model, r.params, name)
        res[f"bytes_{name}"] = block_bytes(model, r)

    x, y = lm.windows(corpus.tokens["train"], CONTEXT)
    sp = results["sparsegpt_24"]
    masks = jtree.map_with_path(lambda path, w: sp.masks.get(path), model.params)
    rec = recover(a, model, sp.params, fixed(masks), x, y, log, "sparsegpt_24_kd")
    ppl(model, rec, "sparsegpt_24_kd")
    res["bytes_sparsegpt_24_kd"] = res["bytes_sparsegpt_24"]
    g3 = results["gptq_w3_g128"]
    spec = QuantSpec(bits=3, symmetric=False, granularity="group", group_size=128)
    qt = quantize_weights(spec, where=lambda path, leaf: path in g3.quantized)
    rec = recover(a, model, g3.params, qt, x, y, log, "gptq_w3_g128_kd")
    ppl(model, rec, "gptq_w3_g128_kd")
    res["bytes_gptq_w3_g128_kd"] = res["bytes_gptq_w3_g128"]
    res["kd_steps"] = a.kd_steps

    f = res["ppl_float"]
    inc = lambda k: res[f"ppl_{k}"] - f  # noqa: E731
    res["goals"] = {
        "gptq_w3_increase_le_third_of_rtn_w3": inc("gptq_w3_g128") <= inc("rtn_w3_g128") / 3,
        "gptq_w4_lt_rtn_w4": res["ppl_gptq_w4_g128"] < res["ppl_rtn_w4_g128"],
        "awq_w4_lt_rtn_w4": res["ppl_awq_w4_g128"] < res["ppl_rtn_w4_g128"],
        "sparsegpt24_lt_wanda24_lt_magnitude24": res["ppl_sparsegpt_24"] < res["ppl_wanda_24"] < res["ppl_magnitude_24"],
        "smoothquant_w8a8_increase_le_1pct": res["ppl_smoothquant_w8a8"] <= 1.01 * f,
        "kd_closes_half_gap_sparsegpt24": inc("sparsegpt_24_kd") <= 0.5 * inc("sparsegpt_24"),
        "kd_closes_half_gap_gptq_w3": inc("gptq_w3_g128_kd") <= 0.5 * inc("gptq_w3_g128"),
    }
    res["total_seconds"] = round(time.perf_counter() - t_all, 1)
    write_results(res, a.json)


if __name__ == "__main__":
    main()
