"""Run a config's pipeline in a run directory: check, resume, run the stages in order.

``<run>/config.json`` holds the resolved config; a run directory that holds a different one is
refused unless ``force`` (then only the stages whose fingerprint changed run again). Finished
stages are skipped, an interrupted training stage resumes from its latest readable checkpoint.
"""

from __future__ import annotations

import json
import os
import time

import jax

from jaxcompress import data
from jaxcompress.runner import stages, text_stages
from jaxcompress.runner.checkpoint import atomic_write_json, read_json
from jaxcompress.runner.config import ConfigError, to_plain
from jaxcompress.runner.schema import TEXT, TEXT_DATASETS, TRAINING


def make_mesh(cfg):
    """The data-parallel mesh for ``cfg.num_devices`` (0 = all local devices); None for one device."""
    if cfg.dataset in TEXT_DATASETS:
        return None  # one-shot text stages run on one device
    n = cfg.num_devices or jax.local_device_count()
    if n > jax.local_device_count():
        raise ConfigError(f"config key 'num_devices' is {n} but only {jax.local_device_count()} devices exist")
    for name in cfg.pipeline:
        s = cfg[name]
        if s.type in TRAINING and s.batch_size % n:
            raise ConfigError(f"config key '{name}.batch_size' ({s.batch_size}) must be divisible by the {n} devices")
    return None if n == 1 else data.make_mesh(n)


def check_workdir(cfg, run_dir: str, force: bool) -> None:
    """Refuse a run directory that belongs to a different config (unless ``force``)."""
    path = os.path.join(run_dir, "config.json")
    if os.path.exists(path) and not force:
        try:
            old = read_json(path)
        except (OSError, json.JSONDecodeError):
            old = None
        if old != json.loads(json.dumps(to_plain(cfg))):
            raise ConfigError(f"workdir {run_dir!r} belongs to a different config; use another --workdir or --force")


def check_inputs(ctx: stages.Context) -> None:
    """Every stage's upstream is an earlier stage of the pipeline or finished on disk."""
    earlier: set[str] = set()
    for name in ctx.cfg.pipeline:
        for u in stages._upstream(ctx.cfg, name):
            if u not in earlier and not stages.is_done(ctx, u):
                raise ConfigError(f"stage {name!r} needs the output of stage {u!r}, which is neither an earlier "
                                  f"stage of the pipeline nor finished in {ctx.run_dir!r}")
        earlier.add(name)


def prepare(cfg, run_dir: str, force: bool = False, progress: bool | None = None) -> stages.Context:
    """All checks that can fail on bad input, before anything is written."""
    run_dir = os.path.abspath(run_dir)
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(f"workdir {run_dir!r} exists and is not a directory")
    check_workdir(cfg, run_dir, force)
    mesh = make_mesh(cfg)
    ds = data.stdlib_corpus() if cfg.dataset in TEXT_DATASETS else data.load(cfg.dataset)
    ctx = stages.Context(cfg, run_dir, ds, mesh, progress)
    check_inputs(ctx)
    return ctx


def _load(ctx, name):
    if ctx.cfg[name].type == "evaluate":
        return stages.Output(None, read_json(os.path.join(stages.stage_dir(ctx, name), "result.json")))
    if ctx.cfg[name].type in TEXT:
        return text_stages.load_output(ctx, name)
    return stages.load_output(ctx, name)


def run_stage(ctx: stages.Context, name: str, outputs: dict) -> stages.Output:
    from jaxcompress.runner import train_loop

    for u in stages._upstream(ctx.cfg, name):
        if u not in outputs:
            outputs[u] = _load(ctx, u)
    if stages.is_done(ctx, name):
        return _load(ctx, name)
    if ctx.cfg[name].type in TEXT:
        return text_stages.run(ctx, name, outputs)
    if ctx.cfg[name].type in TRAINING:
        job = stages.make_job(ctx, name, outputs)
        cfg = ctx.cfg
        state, info = train_loop.run(job, ctx.ds, stages.stage_dir(ctx, name), mesh=ctx.mesh, log_every=cfg.log_every,
                                     checkpoint_every=cfg.checkpoint_every, keep=cfg.keep_checkpoints,
                                     progress=ctx.progress, key=stages.fingerprint(cfg, name))
        return stages.finish_training(ctx, name, job, state, info)
    if ctx.cfg[name].type == "evaluate":
        for p in ctx.cfg.pipeline:
            if p not in outputs and ctx.cfg[p].type != "evaluate":
                outputs[p] = _load(ctx, p)
        if ctx.cfg.dataset in TEXT_DATASETS:
            return text_stages.evaluate(ctx, name, outputs)
    return stages.run_other(ctx, name, outputs)


def run(cfg, run_dir: str, force: bool = False, progress: bool | None = None, log=print) -> dict:
    """Run (or resume) ``cfg``'s pipeline in ``run_dir``; returns ``{stage: result}`` and writes ``run.json``."""
    ctx = prepare(cfg, run_dir, force, progress)
    atomic_write_json(os.path.join(ctx.run_dir, "config.json"), to_plain(cfg))
    t0, outputs = time.perf_counter(), {}
    for name in cfg.pipeline:
        ts = time.perf_counter()
        outputs[name] = run_stage(ctx, name, outputs)
        r = outputs[name].result
        if log and "rows" not in r and "cosine" in r:
            log(f"[{name}] {r['type']}: cosine {r['cosine']:.4f}  nn agree {r['nn_agree']:.3f}  "
                f"bytes {r['artifact_bytes']}  ({time.perf_counter() - ts:.1f} s)")
        elif log and "rows" not in r:
            log(f"[{name}] {r['type']}: accuracy {100 * r['accuracy']:.2f}  sparsity {r['sparsity']:.3f}  "
                f"bits {r['bits']}  bytes {r['artifact_bytes']}  ({time.perf_counter() - ts:.1f} s)")
    summary = finalize_run(ctx, outputs, time.perf_counter() - t0)
    if log and summary.get("rows"):
        text = "cosine" in summary["rows"][0]
        log((text_stages.format_table if text else stages.format_table)(summary["rows"]))
    return summary


def finalize_run(ctx, outputs: dict, seconds: float) -> dict:
    """Write ``<run>/run.json``: the final result, the evaluate table, wall time and the config."""
    cfg = ctx.cfg
    last = outputs[cfg.pipeline[-1]].result
    summary = {"name": cfg.name, "run_dir": ctx.run_dir, "seconds": seconds,
               "devices": 1 if ctx.mesh is None else int(ctx.mesh.size),
               "stages": {k: {kk: vv for kk, vv in v.result.items() if kk != "rows"} for k, v in outputs.items()},
               "final": {"stage": last.get("final_stage", last.get("stage")),
                         **{k: last.get(k) for k in ("accuracy", "sparsity", "bits", "artifact_bytes",
                                                  "compression_ratio", "acc_drop_points")},
                         **{k: last[k] for k in ("cosine", "nn_agree") if k in last}},
               "rows": last.get("rows", []), "config": to_plain(cfg)}
    prev = os.path.join(ctx.run_dir, "run.json")
    if os.path.exists(prev):
        summary["seconds_total"] = read_json(prev).get("seconds_total", 0.0) + seconds
    else:
        summary["seconds_total"] = seconds
    atomic_write_json(prev, summary)
    return summary
