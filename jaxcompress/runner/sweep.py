"""Sweeps: products and lists over config fields, one run directory per point, shards, vmapped groups.

A sweep config is a config file that also defines ``get_sweep(arg)`` returning a list of override
dicts, built with :func:`product` / :func:`zipped` / :func:`axis`. Point ``k`` runs in
``<workdir>/points/<k>-<slug>/`` with its resolved ``config.json``; a point whose ``run.json``
exists is skipped. ``shard=(i, n)`` runs points ``i, i+n, i+2n, ...`` so workers of a TPU pod
slice (or a cluster job array) split one sweep; ``report`` merges their run directories.
``vectorize=True`` groups points that differ only in traced fields (:data:`~.schema.TRACED`) and
trains each group's stages as one ``jax.vmap``-ed program.

>>> product(axis("prune.sparsity", [0.8, 0.9]), axis("seed", [0, 1]))[1]
{'prune.sparsity': 0.8, 'seed': 1}
>>> zipped(axis("a", [1, 2]), axis("b", [3, 4]))
[{'a': 1, 'b': 3}, {'a': 2, 'b': 4}]
"""

from __future__ import annotations

import itertools
import json
import os
import re

from jaxcompress.runner import config as cfglib
from jaxcompress.runner import pipeline, stages
from jaxcompress.runner.checkpoint import atomic_write_json
from jaxcompress.runner.config import ConfigError, to_plain
from jaxcompress.runner.schema import TRACED, TRAINING


def axis(key: str, values) -> list[dict]:
    """One field taking each of ``values``."""
    if not list(values):
        raise ValueError(f"sweep axis {key!r} has no values")
    return [{key: v} for v in values]


def product(*axes: list[dict]) -> list[dict]:
    """The Cartesian product of axes (last axis fastest)."""
    return [dict(kv for d in combo for kv in d.items()) for combo in itertools.product(*axes)]


def zipped(*axes: list[dict]) -> list[dict]:
    """Axes taken together element by element (all the same length)."""
    if len({len(a) for a in axes}) > 1:
        raise ValueError(f"zipped axes differ in length: {[len(a) for a in axes]}")
    return [dict(kv for d in combo for kv in d.items()) for combo in zip(*axes)]


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"1/4" -> (1, 4)``; ConfigError unless ``0 <= i < n``."""
    if text is None:
        return 0, 1
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ConfigError(f"--shard must be I/N with 0 <= I < N, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _slug(overrides: dict) -> str:
    s = "_".join(f"{k}={v}" for k, v in overrides.items())
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", s)[:80] or "base"


def points(spec: str, extra_overrides=()) -> list[tuple[str, dict, object]]:
    """``[(name, overrides, resolved config), ...]`` for every point of a sweep config."""
    path, arg = cfglib.split_spec(spec)
    module = cfglib.load_module(path)
    if not callable(getattr(module, "get_sweep", None)):
        raise ConfigError(f"config file {path!r} has no get_sweep(arg) function (needed by `sweep`)")
    try:
        grid = module.get_sweep(arg)
    except (ConfigError, ValueError):
        raise
    except Exception as e:
        raise ConfigError(f"get_sweep({arg!r}) of {path!r} failed: {type(e).__name__}: {e}") from None
    out = []
    for k, ov in enumerate(grid):
        sets = list(extra_overrides) + [f"{key}={json.dumps(v) if isinstance(v, str) else v!r}" for key, v in ov.items()]
        out.append((f"{k:03d}-{_slug(ov)}", ov, cfglib.get_config(spec, sets)))
    if not out:
        raise ConfigError(f"get_sweep of {path!r} returned no points")
    return out


def _structure_key(cfg) -> str:
    """The config with traced fields removed: points with equal keys can share one compiled program."""

    def strip(node, top):
        if isinstance(node, dict):
            return {k: strip(v, False) for k, v in node.items() if k not in TRACED}
        return node

    return json.dumps(strip(to_plain(cfg), True), sort_keys=True)


def run_sweep(spec: str, workdir: str, shard: tuple[int, int] = (0, 1), vectorize: bool = False,
              overrides=(), force: bool = False, progress: bool | None = None, log=print) -> list[dict]:
    """Run this shard's points of a sweep; returns their ``run.json`` summaries."""
    pts = points(spec, overrides)
    mine = pts[shard[0] :: shard[1]]
    workdir = os.path.abspath(workdir)
    todo, results = [], []
    for name, ov, cfg in mine:
        d = os.path.join(workdir, "points", name)
        pipeline.check_workdir(cfg, d, force)
        done = os.path.join(d, "run.json")
        if os.path.exists(done) and not force:
            with open(done) as f:
                results.append(json.load(f))
            if log:
                log(f"[sweep] {name}: finished, skipped")
            continue
        todo.append((name, ov, cfg, d))
    atomic_write_json(os.path.join(workdir, f"sweep_shard{shard[0]}of{shard[1]}.json"),
                      {"spec": spec, "points": [p[0] for p in pts], "mine": [p[0] for p in mine]})
    if vectorize:
        groups: dict[str, list] = {}
        for item in todo:
            groups.setdefault(_structure_key(item[2]), []).append(item)
        for group in groups.values():
            if log:
                log(f"[sweep] vectorized group of {len(group)}: {[g[0] for g in group]}")
            results.extend(run_group([g[2] for g in group], [g[3] for g in group], force, progress))
    else:
        for name, ov, cfg, d in todo:
            if log:
                log(f"[sweep] {name}: {ov}")
            results.append(pipeline.run(cfg, d, force=force, progress=progress, log=None))
    return results


def run_group(cfgs: list, run_dirs: list[str], force: bool = False, progress: bool | None = None) -> list[dict]:
    """Run points whose configs differ only in traced fields; training stages run as one vmapped program."""
    import time

    from jaxcompress.runner import train_loop

    ctxs = [pipeline.prepare(c, d, force, progress) for c, d in zip(cfgs, run_dirs)]
    for ctx in ctxs:
        atomic_write_json(os.path.join(ctx.run_dir, "config.json"), to_plain(ctx.cfg))
    t0 = time.perf_counter()
    outs: list[dict] = [{} for _ in ctxs]
    for name in cfgs[0].pipeline:
        todo = []
        for i, ctx in enumerate(ctxs):
            if stages.is_done(ctx, name):
                outs[i][name] = pipeline._load(ctx, name)
            else:
                todo.append(i)
        if cfgs[0][name].type in TRAINING and len(todo) > 1:
            for i in todo:
                for u in stages._upstream(ctxs[i].cfg, name):
                    outs[i].setdefault(u, pipeline._load(ctxs[i], u))
            jobs = [stages.make_job(ctxs[i], name, outs[i]) for i in todo]
            for i, job, (state, info) in zip(todo, jobs, train_loop.run_vectorized(jobs, ctxs[0].ds)):
                outs[i][name] = stages.finish_training(ctxs[i], name, job, state, info)
        else:
            for i in todo:
                outs[i][name] = pipeline.run_stage(ctxs[i], name, outs[i])
    secs = (time.perf_counter() - t0) / len(ctxs)
    return [pipeline.finalize_run(ctx, out, secs) for ctx, out in zip(ctxs, outs)]
