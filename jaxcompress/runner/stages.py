"""The stages of a pipeline: train, distill, prune, qat (training), ptq, convert, evaluate.

A training stage becomes a :class:`~jaxcompress.runner.train_loop.Job` (:func:`make_job`) and,
once trained, is written by :func:`finish_training`; the others run directly (:func:`run_other`).
Every stage writes ``<run>/stages/<name>/``: ``output/`` (orbax: the weights the model ships
with), ``model_state/`` (orbax, only for a model with state: its BatchNorm statistics ...),
``state/`` (orbax: params + transform state + model state, training stages), ``result.json``
(atomically, last) and for ``convert`` the artifact ``model.jxc``. A stage is done when its
``result.json`` exists with the same fingerprint (hash of its config and of its upstream stages).

Every stage sees its model through the contract of :mod:`jaxcompress.model` (:func:`fresh_model`)
and hands the transforms the layout traced from it once (:func:`stage_layout`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxcompress import export, models, tree
from jaxcompress import layout as jlayout
from jaxcompress.model import Model
from jaxcompress.runner import methods
from jaxcompress.runner.checkpoint import atomic_write_json, load_tree, read_json, save_tree
from jaxcompress.runner.config import ConfigError, to_plain
from jaxcompress.runner.schema import TRAINING
from jaxcompress.runner.train_loop import Job, evaluate, shipped
from jaxcompress.transform import identity


class Output(NamedTuple):
    """A finished stage as later stages see it: ``model.params`` are the shipped float weights,
    ``model.state`` the model state they run with."""

    model: Model | None
    result: dict

    @property
    def params(self) -> Any:
        return None if self.model is None else self.model.params


class Context(NamedTuple):
    cfg: Any
    run_dir: str
    ds: Any
    mesh: Any = None
    progress: bool | None = None


def stage_dir(ctx: Context, name: str) -> str:
    return os.path.join(ctx.run_dir, "stages", name)


def _upstream(cfg, name: str) -> list[str]:
    s = cfg[name]
    return [s[k] for k in ("input", "teacher", "init", "reference") if k in s and s[k]]


def fingerprint(cfg, name: str) -> str:
    """Hash of everything a stage's result depends on (its section, globals, upstream fingerprints)."""
    parts = {"stage": to_plain(cfg[name]), "dataset": cfg.dataset, "seed": cfg.seed,
             "up": [fingerprint(cfg, u) for u in _upstream(cfg, name)]}
    if cfg[name].type == "evaluate":
        parts["pipeline"] = [fingerprint(cfg, p) for p in cfg.pipeline if p != name and cfg[p].type != "evaluate"]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def is_done(ctx: Context, name: str) -> bool:
    path = os.path.join(stage_dir(ctx, name), "result.json")
    return os.path.exists(path) and read_json(path).get("fingerprint") == fingerprint(ctx.cfg, name)


def _arch(cfg, name: str) -> tuple[str, dict]:
    s = cfg[name]
    while "model" not in s:
        s = cfg[s.input]
    kw = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in to_plain(s.model_kw).items()}
    return s.model, kw


@functools.lru_cache(maxsize=64)
def _create(model: str, kw: tuple, input_shape: tuple, num_classes: int, seed: int) -> Model:
    if model == "nnx_mlp":  # an NNX module would capture tracers; build it eagerly
        return models.create(model, input_shape, num_classes, rng=seed, **dict(kw))
    held = {}

    def init():  # linen init as one compiled program instead of op by op
        held["m"] = models.create(model, input_shape, num_classes, rng=seed, **dict(kw))
        return held["m"].params

    params = jax.jit(init)()
    return held["m"].replace(params=params)


_LAYOUTS: dict = {}


def stage_layout(ctx: Context, name: str) -> dict:
    """The weight layout of stage ``name``'s model (``layout.trace`` once per model)."""
    m = fresh_model(ctx, name)
    if m.forward not in _LAYOUTS:
        _LAYOUTS[m.forward] = jlayout.trace(m, jax.ShapeDtypeStruct((1, *ctx.ds.input_shape), np.float32))
    return _LAYOUTS[m.forward]


def fresh_model(ctx: Context, name: str, seed: int | None = None) -> Model:
    """The freshly initialised model of stage ``name`` (cached: same forward object, no re-init)."""
    model, kw = _arch(ctx.cfg, name)
    seed = ctx.cfg.seed if seed is None else seed
    try:
        return _create(model, tuple(sorted(kw.items())), tuple(ctx.ds.input_shape), ctx.ds.num_classes, seed)
    except TypeError as e:
        raise ConfigError(f"config key '{name}.model_kw' does not fit model {model!r}: {e}") from None


def require_done(ctx: Context, name: str) -> None:
    """A ConfigError unless stage ``name`` has a finished output in the run directory."""
    if not is_done(ctx, name):
        raise ConfigError(f"stage {name!r} has no finished output in {ctx.run_dir!r}; run it first "
                          "(put it earlier in the pipeline)")


def load_output(ctx: Context, name: str) -> Output:
    """The output of an earlier stage; a ConfigError when it has not been produced."""
    require_done(ctx, name)
    m, d = fresh_model(ctx, name), stage_dir(ctx, name)
    params = load_tree(os.path.join(d, "output"), m.params)
    ms = load_tree(os.path.join(d, "model_state"), m.state) if jax.tree.leaves(m.state) else m.state
    return Output(m.replace(params=params, state=ms), read_json(os.path.join(d, "result.json")))


def _hp(s, teacher: bool) -> dict:
    hp = {"lr": s.lr}
    if teacher:
        hp.update(temperature=s.temperature, alpha=s.alpha)
    return hp


def make_job(ctx: Context, name: str, outputs: dict) -> Job:
    """The training job of stage ``name`` (``outputs``: finished upstream stages by name)."""
    s, cfg = ctx.cfg[name], ctx.cfg
    m = fresh_model(ctx, name)
    src = s.get("input") or s.get("init")
    if src:
        tree.check_same_structure(outputs[src].params, m.params, f"output of stage {src!r}", f"model of stage {name!r}")
        m = m.replace(params=outputs[src].params, state=outputs[src].model.state)
    teacher = outputs[s.teacher].model if s.get("teacher") else None
    lay = stage_layout(ctx, name)
    if s.type in ("train", "distill"):
        t = identity()
    elif s.type == "prune":
        t = methods.prune_transform(s, s.steps, layout=lay)
    else:
        t = methods.quant_transform(s, m.params, layout=lay)
    make_t = lambda hp: t  # traced values (sparsity, bits) live in the transform state
    return Job(m, make_t, _hp(s, teacher is not None), s.steps, s.batch_size, cfg.seed, teacher,
               tuple(ctx.ds.input_shape))


def _write(ctx: Context, name: str, params, result: dict, model_state, state=None) -> Output:
    d = stage_dir(ctx, name)
    save_tree(os.path.join(d, "output"), params)
    if jax.tree.leaves(model_state):
        save_tree(os.path.join(d, "model_state"), model_state)
    if state is not None:
        save_tree(os.path.join(d, "state"), {"params": state.params, "tstate": state.tstate,
                                             "model_state": state.model_state})
    result = {"stage": name, "type": ctx.cfg[name].type, "fingerprint": fingerprint(ctx.cfg, name),
              "params_count": tree.count_params(params), **result}
    atomic_write_json(os.path.join(d, "result.json"), result)
    return Output(fresh_model(ctx, name).replace(params=params, state=model_state), result)


def finish_training(ctx: Context, name: str, job: Job, state, info: dict) -> Output:
    s = ctx.cfg[name]
    params = jax.device_get(shipped(job, state))
    ev = evaluate(job.model, params, ctx.ds.x_test, ctx.ds.y_test, state.model_state)
    bits = s.bits if s.type == "qat" else 32
    result = {"accuracy": ev["accuracy"], "loss": ev["loss"], "sparsity": methods.sparsity(params), "bits": bits,
              "artifact_bytes": 4 * tree.count_params(params), "steps": s.steps, **info}
    return _write(ctx, name, params, result, jax.device_get(state.model_state), state)


def run_other(ctx: Context, name: str, outputs: dict) -> Output:
    """Run a non-training stage (ptq, convert, evaluate)."""
    s = ctx.cfg[name]
    t0 = time.perf_counter()
    if s.type == "evaluate":
        return _evaluate(ctx, name, outputs)
    src = outputs[s.input]
    lay = stage_layout(ctx, name)
    if s.type == "ptq":
        params = jax.device_get(methods.ptq(src.params, s.bits, layout=lay))
        size, bits = 4 * tree.count_params(params), s.bits
    else:  # convert: real bytes on disk, evaluated from what is read back
        path = os.path.join(stage_dir(ctx, name), "model.jxc")
        size, _ = export.save(path, src.params, bits=s.bits, codec=s.codec, float_dtype=s.float_dtype, layout=lay)
        params, bits = export.load(path, like=src.params), s.bits
    ev = evaluate(src.model, params, ctx.ds.x_test, ctx.ds.y_test)
    result = {"accuracy": ev["accuracy"], "loss": ev["loss"], "sparsity": methods.sparsity(params), "bits": bits,
              "artifact_bytes": int(size), "train_seconds": time.perf_counter() - t0}
    return _write(ctx, name, params, result, src.model.state)


def latency(model: Model, inputs, repeats: int) -> float:
    """Median seconds of one jitted eval-mode forward pass of ``model`` (its params and state) on ``inputs``."""
    f = jax.jit(model.apply_fn)
    jax.block_until_ready(f(model.params, inputs, model.state))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(model.params, inputs, model.state))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _evaluate(ctx: Context, name: str, outputs: dict) -> Output:
    s, cfg = ctx.cfg[name], ctx.cfg
    order = [p for p in cfg.pipeline if p in outputs and cfg[p].type != "evaluate"]
    ref = s.reference or order[0]
    ref_bytes, ref_acc = 4 * outputs[ref].result["params_count"], outputs[ref].result["accuracy"]
    x = np.resize(ctx.ds.x_test, (s.latency_batch, *ctx.ds.x_test.shape[1:]))
    rows = []
    for p in order:
        r = outputs[p].result
        rows.append({"stage": p, "type": r["type"], "accuracy": r["accuracy"], "sparsity": r["sparsity"],
                     "bits": r["bits"], "artifact_bytes": r["artifact_bytes"],
                     "compression": ref_bytes / r["artifact_bytes"],
                     "acc_drop_points": 100 * (ref_acc - r["accuracy"]),
                     "latency_ms": 1e3 * latency(outputs[p].model, x, repeats=s.latency_repeats)})
    final = rows[-1]
    result = {"rows": rows, "reference": ref, "accuracy": final["accuracy"], "sparsity": final["sparsity"],
              "bits": final["bits"], "artifact_bytes": final["artifact_bytes"], "compression_ratio": final["compression"],
              "acc_drop_points": final["acc_drop_points"], "final_stage": final["stage"]}
    d = stage_dir(ctx, name)
    result = {"stage": name, "type": "evaluate", "fingerprint": fingerprint(cfg, name), **result}
    atomic_write_json(os.path.join(d, "result.json"), result)
    return Output(outputs[final["stage"]].model, result)


def format_table(rows: list[dict]) -> str:
    """The demo table: stage, accuracy, sparsity, bits, artifact bytes, compression, latency."""
    head = f"{'stage':10s} {'type':8s} {'accuracy':>8s} {'drop':>6s} {'sparsity':>8s} {'bits':>4s} " \
           f"{'bytes':>9s} {'vs f32':>7s} {'ms/batch':>8s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['stage']:10s} {r['type']:8s} {100 * r['accuracy']:8.2f} {r['acc_drop_points']:+6.2f} "
                     f"{r['sparsity']:8.3f} {r['bits']:4d} {r['artifact_bytes']:9d} {r['compression']:6.1f}x "
                     f"{r['latency_ms']:8.3f}")
    return "\n".join(lines)


__all__ = ["Context", "Output", "TRAINING", "make_job", "finish_training", "run_other", "load_output", "is_done",
           "fingerprint", "format_table", "stage_dir", "latency", "require_done", "fresh_model", "stage_layout"]
