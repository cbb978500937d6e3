"""The stages of a sentence-encoder pipeline (``dataset = "stdlib_text"``): one-shot BERT compression.

Stage types (fields in :data:`jaxcompress.runner.schema.STAGES`), each a thin call of the
calibration engine's methods (:mod:`jaxcompress.calibration.methods`) on the encoder, whose blocks
are ``layer_<i>`` and whose token mask is the attention mask:

* ``encoder`` - the starting model: ``weights="minilm"`` (the pretrained all-MiniLM-L6-v2) or
  ``"random"`` (a freshly initialised BERT of shape ``model_kw``; for tests). It also fixes the
  evaluation and calibration sentences (``n_eval``, ``n_calib``, ``calib_length``) for every
  stage downstream of it.
* ``w8a8`` - int8 weights x int8 activations (``activations="token"`` or ``"tensor"`` with an
  ``observer``, or ``"smoothquant"``: static per-tensor after alpha-migration, ``smooth_alpha``), run
  as int8 x int8 -> int32 (:func:`~jaxcompress.calibration.methods.integer_apply`);
* ``weight_quant`` - weight-only ``method="rtn"|"gptq"|"awq"``, ``bits``, ``group_size`` (0 = per channel);
* ``oneshot_prune`` - ``score="magnitude"|"wanda"|"sparsegpt"``, ``sparsity`` or ``nm=(2, 4)``;
* ``layer_distill`` - a student from teacher blocks ``layers``, trained to match the input
  stage's embeddings on the calibration split (its first ``n_sentences``; 0 = all of it;
  ``steps``, ``lr``, ``batch_size``, ``max_length``);
* ``evaluate`` - the table: cosine and nearest-neighbour agreement with the reference stage's
  embeddings, artifact bytes and compression, latency of one batch.

Quantizing stages also store the word-embedding table as int8, one scale per row (the position
and token-type tables stay float)
(:func:`~jaxcompress.calibration.methods.embeddings`). Every stage writes
``<run>/stages/<name>/artifact.npz`` (the stored model:
:meth:`~jaxcompress.calibration.methods.Compressed.save`) and ``result.json``; later stages and
the quality figures use the model read back from that file. Text stages run on one device.
"""

from __future__ import annotations

import functools
import io
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import text_metrics, tree
from jaxcompress.calibration import methods as cm
from jaxcompress.distillation.targets import fit_targets
from jaxcompress.model import Model, from_apply, from_linen
from jaxcompress.models import bert
from jaxcompress.quantization.convert import QArray
from jaxcompress.runner.checkpoint import atomic_write_bytes, atomic_write_json, read_json
from jaxcompress.runner.config import ConfigError, to_plain

TEXT_STAGES = ("encoder", "w8a8", "weight_quant", "oneshot_prune", "layer_distill")
TEXT_DATASETS = ("stdlib_text",)
ACTIVATIONS = ("token", "tensor", "smoothquant")
METHODS = ("rtn", "gptq", "awq")
SCORES = ("magnitude", "wanda", "sparsegpt")
#: how the calibration engine sees the encoder: its blocks, and which activation rows are real tokens
ENGINE = dict(blocks=r"layer_\d+", token_mask=lambda inputs: inputs[1])


def _stages():
    from jaxcompress.runner import stages  # noqa: PLC0415 - stages imports this module's users

    return stages


def root(cfg, name: str) -> str:
    """The ``encoder`` stage that ``name`` descends from (following ``input``)."""
    seen = set()
    while cfg[name].type != "encoder":
        if name in seen:
            raise ConfigError(f"config key '{name}.input' forms a cycle")
        seen.add(name)
        name = cfg[name].input
    return name


@functools.lru_cache(maxsize=4)
def _base(weights: str, kw: tuple, seed: int):
    """``(module, params, tokenizer)`` of an encoder stage (cached per process)."""
    if weights == "minilm":
        m = bert.load_minilm()
        return m.module, m.params, m.tokenizer
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bert.model_dir() / "tokenizer.json"))
    try:
        config = bert.BertConfig(vocab_size=tok.get_vocab_size(), **dict(kw))
    except TypeError as e:
        raise ConfigError(f"encoder model_kw does not fit BertConfig: {e}") from None
    module = bert.BertEncoder(config)
    ids = jnp.ones((1, 8), jnp.int32)
    params = jax.jit(lambda: module.init(jax.random.key(seed), ids, ids)["params"])()
    return module, params, tok


def base(ctx, name: str):
    """``(module, params, tokenizer)`` of the encoder that stage ``name`` descends from."""
    r = root(ctx.cfg, name)
    s = ctx.cfg[r]
    kw = tuple(sorted((k, v) for k, v in to_plain(s.model_kw).items()))
    try:
        return _base(s.weights, kw, ctx.cfg.seed)
    except (ImportError, FileNotFoundError) as e:  # the weights package: say how to install it
        raise ConfigError(f"config key '{r}.weights' ({s.weights!r}): {e}") from None


def module_for(ctx, name: str, params) -> bert.BertEncoder:
    """The encoder that runs ``params`` (a student has fewer blocks than its teacher)."""
    module = base(ctx, name)[0]
    return bert.BertEncoder(module.config._replace(num_layers=sum(k.startswith("layer_") for k in params)))


def sentences(ctx, name: str) -> tuple[list[str], list[str]]:
    """``(eval, calib)`` sentences of the stage's encoder (disjoint splits of the corpus)."""
    s = ctx.cfg[root(ctx.cfg, name)]
    return ctx.ds.eval[: s.n_eval], ctx.ds.calib[: s.n_calib]


def calib_batches(ctx, name: str):
    """The calibration sentences of the stage's encoder as fixed-shape token batches."""
    s = ctx.cfg[root(ctx.cfg, name)]
    tok = base(ctx, name)[2]
    return bert.calibration_batches(tok, sentences(ctx, name)[1], batch_size=32, max_length=s.calib_length)


def embed(ctx, name: str, params, apply_fn=None) -> np.ndarray:
    """Embeddings of the evaluation sentences (at most 128 tokens, or the position table's size).

    ``apply_fn(params, (ids, mask))`` runs the model (default: the float encoder).
    """
    module, _, tok = base(ctx, name)
    enc = bert.Pretrained(module_for(ctx, name, params), params, tok)
    return bert.embed(enc, sentences(ctx, name)[0], params=params, apply_fn=apply_fn,
                      max_length=min(128, module.config.max_position))


def _save_npy(path: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


def reference_embeddings(ctx, name: str) -> np.ndarray:
    """Embeddings of the evaluation sentences by the stage's encoder (written by the encoder stage)."""
    r = root(ctx.cfg, name)
    path = os.path.join(_stages().stage_dir(ctx, r), "eval_embeddings.npy")
    if not os.path.exists(path):
        _save_npy(path, embed(ctx, r, load_result(ctx, r).params))
    return np.load(path)


def load_result(ctx, name: str) -> cm.Compressed:
    """The compressed model of a finished stage, read back from its artifact."""
    return cm.Compressed.load(os.path.join(_stages().stage_dir(ctx, name), "artifact.npz"))


def model(ctx, name: str, result: cm.Compressed) -> Model:
    """The encoder of stage ``name`` running ``result`` as a Model (inputs ``(ids, mask)``).

    A ``w8a8`` stage runs its int8 weights as int8 x int8 -> int32; every other stage runs the
    (dequantized) float params.
    """
    module = module_for(ctx, name, result.params)
    s = ctx.cfg[name]
    float_model = from_linen(module, {"params": result.params})
    if s.type != "w8a8":
        return float_model
    fn = cm.integer_apply(float_model, result, activations="token" if s.activations == "token" else None)
    return from_apply(fn, result.params, module)


def load_output(ctx, name: str):
    stages = _stages()
    stages.require_done(ctx, name)
    out = model(ctx, name, load_result(ctx, name))
    return stages.Output(out, read_json(os.path.join(stages.stage_dir(ctx, name), "result.json")))


def _compress(ctx, name: str, outputs: dict) -> tuple[cm.Compressed, dict]:
    """The :class:`~jaxcompress.calibration.methods.Compressed` that stage ``name`` produces, and extra result fields."""
    s = ctx.cfg[name]
    if s.type == "encoder":
        return cm.Compressed(base(ctx, name)[1], {}, {}, {}), {}
    src = outputs[s.input].params
    module = module_for(ctx, s.input, src)
    m = from_linen(module, {"params": src})
    try:
        if s.type == "layer_distill":  # match the input stage's embeddings on the calibration split
            smod, sp = bert.student(module, src, s.layers)
            tok = base(ctx, name)[2]
            calib = ctx.ds.calib[: s.n_sentences or None]
            ids, mask = bert.tokenize(tok, calib, max_length=s.max_length, pad_to=s.max_length)
            teacher = bert.embed(bert.Pretrained(module, src, tok), calib, params=src, max_length=s.max_length)
            before = float(text_metrics.mean_cosine(embed(ctx, name, sp), reference_embeddings(ctx, name)))
            sm = bert.student_model(smod, sp)
            trained = fit_targets(sm, (ids, mask), teacher, s.steps, batch_size=s.batch_size, lr=s.lr,
                                  seed=ctx.cfg.seed)
            return cm.Compressed({**sm.state, **trained}, {}, {}, {}), {
                "cosine_before_training": before, "steps": s.steps, "train_sentences": len(calib)}
        batches = calib_batches(ctx, name)
        if s.type == "oneshot_prune":
            kw = dict(sparsity=s.sparsity, nm=tuple(s.nm) or None)
            if s.score == "magnitude":
                return cm.magnitude(m, batches, **kw), {}
            return getattr(cm, s.score)(m, batches, **kw, **ENGINE), {}
        if s.type == "w8a8":
            if s.activations == "smoothquant":
                r = cm.smoothquant(m, batches, alpha=s.smooth_alpha, **ENGINE)
            else:
                r = cm.w8a8(m, batches, activations=s.activations, observer=s.observer,
                            token_mask=ENGINE["token_mask"])
        else:  # weight_quant
            kw = dict(bits=s.bits, group_size=s.group_size or None)
            if s.method == "rtn":
                r = cm.rtn(m, batches, **kw)
            elif s.method == "gptq":
                r = cm.gptq(m, batches, damp=s.damp, **kw, **ENGINE)
            else:
                r = cm.awq(m, batches, **kw, **ENGINE)
        return cm.embeddings(m, batches[0], r, where=lambda p: p.startswith("word_embeddings/")), {}
    except ValueError as e:
        raise ConfigError(f"stage {name!r}: {e}") from None


def _linear_bytes(result: cm.Compressed) -> int:
    """Stored bytes of the blocks' weight matrices (codes + scales, or float values) and biases."""
    lin = {p: result.quantized.get(p, w) for p, w in tree.named_leaves(result.params)
           if p.startswith("layer_") and "_norm/" not in p}
    return sum(q.nbytes if isinstance(q, QArray) else int(np.asarray(q).nbytes) for q in lin.values())


def run(ctx, name: str, outputs: dict):
    """Run text stage ``name``: compress, write the artifact, measure it as read back."""
    stages = _stages()
    t0 = time.perf_counter()
    result, extra = _compress(ctx, name, outputs)
    d = stages.stage_dir(ctx, name)
    os.makedirs(d, exist_ok=True)
    size = result.save(os.path.join(d, "artifact.npz"))
    result = load_result(ctx, name)
    out = model(ctx, name, result)
    emb = embed(ctx, name, result.params, out.apply_fn)
    if ctx.cfg[name].type == "encoder":  # the reference of every stage downstream (rewritten on a rerun)
        _save_npy(os.path.join(d, "eval_embeddings.npy"), emb)
    ref = reference_embeddings(ctx, name)
    n_blocks = sum(k.startswith("layer_") for k in result.params)
    res = {"stage": name, "type": ctx.cfg[name].type, "fingerprint": stages.fingerprint(ctx.cfg, name),
           "cosine": float(text_metrics.mean_cosine(emb, ref)), "nn_agree": float(text_metrics.nn_agreement(emb, ref)),
           "artifact_bytes": int(size), "linear_bytes": _linear_bytes(result), "blocks": n_blocks,
           "seconds": time.perf_counter() - t0, **extra}
    atomic_write_json(os.path.join(d, "result.json"), res)
    return stages.Output(out, res)


def evaluate(ctx, name: str, outputs: dict):
    """The table of every stage: cosine, nn agreement, bytes, compression vs the reference, latency."""
    stages, s, cfg = _stages(), ctx.cfg[name], ctx.cfg
    order = [p for p in cfg.pipeline if p in outputs and cfg[p].type != "evaluate"]
    ref = s.reference or order[0]
    ref_bytes = outputs[ref].result["artifact_bytes"]
    tok = base(ctx, ref)[2]
    evals = sentences(ctx, ref)[0]
    ids, mask = bert.tokenize(tok, (evals * (s.latency_batch // max(1, len(evals)) + 1))[: s.latency_batch],
                              max_length=s.latency_length, pad_to=s.latency_length)
    mask[:] = 1  # every position is a real token
    rows = []
    for p in order:
        r = outputs[p].result
        rows.append({"stage": p, "type": r["type"], "cosine": r["cosine"], "nn_agree": r["nn_agree"],
                     "artifact_bytes": r["artifact_bytes"], "compression": ref_bytes / r["artifact_bytes"],
                     "latency_ms": 1e3 * stages.latency(outputs[p].model, (ids, mask), repeats=s.latency_repeats)})
    final = rows[-1]
    result = {"stage": name, "type": "evaluate", "fingerprint": stages.fingerprint(cfg, name), "rows": rows,
              "reference": ref, "cosine": final["cosine"], "nn_agree": final["nn_agree"],
              "artifact_bytes": final["artifact_bytes"], "compression_ratio": final["compression"],
              "final_stage": final["stage"]}
    atomic_write_json(os.path.join(stages.stage_dir(ctx, name), "result.json"), result)
    return stages.Output(outputs[final["stage"]].model, result)


def format_table(rows: list[dict]) -> str:
    """The text pipeline's table: stage, cosine, nn agreement, bytes, compression, latency."""
    head = f"{'stage':14s} {'type':13s} {'cosine':>7s} {'nn agree':>8s} {'bytes':>10s} {'vs ref':>7s} {'ms/batch':>9s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['stage']:14s} {r['type']:13s} {r['cosine']:7.4f} {r['nn_agree']:8.3f} "
                     f"{r['artifact_bytes']:10d} {r['compression']:6.2f}x {r['latency_ms']:9.1f}")
    return "\n".join(lines)


__all__ = ["TEXT_STAGES", "TEXT_DATASETS", "run", "evaluate", "load_output", "format_table", "root"]
