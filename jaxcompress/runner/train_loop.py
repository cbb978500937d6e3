"""The training loop every training stage shares: resumable, data parallel, optionally vmapped.

A :class:`Job` describes one training run (model, initial params, transform builder, loss,
traced hyperparameters ``hp``). :func:`step_fn` turns it into one pure function
``step(state, batch, hp, aux) -> (state, metrics)`` built on :func:`jaxcompress.train.make_train_step`
(cross-entropy) or :func:`jaxcompress.distillation.make_distill_step` (``aux`` = teacher params), with the optimizer
and the transform built *inside* from the traced ``hp`` - so :func:`run` (one job, jitted,
batch sharded over a device mesh, checkpointed) and :func:`run_vectorized` (several jobs
stacked and ``jax.vmap``-ed into one program) execute the same code.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcompress import data as jdata
from jaxcompress import train
from jaxcompress.runner.checkpoint import Checkpointer
from jaxcompress.runner.metrics_log import MetricsLogger
from jaxcompress.transform import Transform, finalize, identity

TRACES = {"step": 0}  # how often a step function was traced (tests: "compiles once")


class Job(NamedTuple):
    apply_fn: Callable
    params: Any
    make_transform: Callable[[dict], Transform]
    hp: dict  # name -> float; always has "lr"
    steps: int
    batch_size: int
    seed: int
    teacher_apply: Callable | None = None
    teacher_params: Any = None
    sample_shape: tuple = ()


def optimizer(lr) -> optax.GradientTransformation:
    """Adam with a (possibly traced) learning rate; identical to ``optax.adam(lr)``."""
    return optax.chain(optax.scale_by_adam(), optax.scale(-jnp.asarray(lr, jnp.float32)))


def hp_arrays(hp: dict) -> dict:
    return {k: jnp.asarray(v, jnp.float32) for k, v in sorted(hp.items())}


def _distill_step(job: Job, opt, t, teacher_params, loss):
    from jaxcompress import distillation

    return distillation.make_distill_step(job.apply_fn, job.teacher_apply, opt, loss, t,
                                          teacher_params=teacher_params, donate=False, jit=False)


def _kd():
    from jaxcompress import distillation

    return distillation.kd()  # temperature / alpha defaults; the real values are traced in the state


def step_fn(job: Job) -> Callable:
    """``step(state, batch, hp, aux) -> (state, metrics)`` (not jitted); ``aux`` = teacher params.

    Cross-entropy jobs use :func:`jaxcompress.train.make_train_step`; jobs with a teacher use
    :func:`jaxcompress.distillation.make_distill_step` (temperature and alpha are traced in its state).
    """

    kd = _kd() if job.teacher_apply is not None else None  # built outside any trace (it validates values)

    def step(state, batch, hp, aux):
        TRACES["step"] += 1
        opt, t = optimizer(hp["lr"]), job.make_transform(hp)
        if job.teacher_apply is None:
            return train.make_train_step(job.apply_fn, opt, t, jit=False)(state, batch)
        return _distill_step(job, opt, t, aux, kd)(state, batch, aux)

    return step


def init_state(job: Job):
    """The initial ``TrainState`` (or ``DistillState`` for a job with a teacher), built by one compiled program."""
    hp = hp_arrays(job.hp)
    opt, t = optimizer(hp["lr"]), job.make_transform(hp)
    if job.teacher_apply is None:
        make = lambda params: train.create_train_state(params, opt, t, job.seed)
    else:
        dstep = _distill_step(job, opt, t, job.teacher_params, _kd())
        x = np.zeros((1, *job.sample_shape), np.float32)
        make = lambda params: dstep.init(params, x, seed=job.seed, temperature=job.hp["temperature"],
                                         alpha=job.hp["alpha"])
    try:
        return jax.jit(make)(job.params)  # a fresh copy: the step donates it, the job's params survive
    except jax.errors.ConcretizationTypeError:  # a transform whose init needs concrete values
        return make(jax.tree.map(jnp.copy, job.params))


_SHIP_FNS: dict = {}


def shipped(job: Job, state: train.TrainState):
    """The weights the model ships with after training: ``finalize(params, tstate, transform)``."""
    if job.make_transform not in _SHIP_FNS:
        _SHIP_FNS.clear()
        _SHIP_FNS[job.make_transform] = jax.jit(lambda p, ts, hp: finalize(p, ts, job.make_transform(hp)))
    return _SHIP_FNS[job.make_transform](state.params, state.tstate, hp_arrays(job.hp))


_EVAL_FNS: dict = {}


def evaluate(apply_fn, params, x, y) -> dict:
    """Test loss and accuracy of ``params`` (one compiled eval program per model)."""
    if apply_fn not in _EVAL_FNS:
        _EVAL_FNS[apply_fn] = train.make_eval_fn(apply_fn)
    return _EVAL_FNS[apply_fn](params, identity().init(params), x, y)


def run(job: Job, ds, directory: str, *, mesh=None, log_every: int = 50, checkpoint_every: int = 500,
        keep: int = 3, progress: bool | None = None, key: str = "run") -> tuple[train.TrainState, dict]:
    """Train ``job`` on ``ds`` resuming from ``directory/ckpt/<key>``; returns ``(state, info)``.

    ``key`` (the stage fingerprint) keeps checkpoints of a changed config from being resumed;
    checkpoints under other keys are deleted.
    """
    state = init_state(job)
    root = os.path.join(directory, "ckpt")
    if os.path.isdir(root):
        for old in os.listdir(root):
            if old != key:
                shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    ck = Checkpointer(os.path.join(root, key), keep=keep)
    restored = ck.restore_latest(state)
    if restored is not None:
        start, state = restored
    else:
        start = 0
    hp, aux = hp_arrays(job.hp), job.teacher_params if job.teacher_params is not None else ()
    if mesh is not None:
        state, hp, aux = jdata.replicate((state, hp, aux), mesh)
    step = jax.jit(step_fn(job), donate_argnums=(0,))
    batches = jdata.BatchIterator(ds.x_train, ds.y_train, job.batch_size, job.seed, start_step=start)
    t0, metrics = time.perf_counter(), None
    with MetricsLogger(directory, os.path.basename(directory), job.steps, start, progress=progress) as log:
        for s in range(start, job.steps):
            batch = next(batches)
            if mesh is not None:
                batch = jdata.shard_batch(batch, mesh)
            state, metrics = step(state, batch, hp, aux)
            done = s + 1
            if done % log_every == 0 or done == job.steps:
                log.write(done, metrics)
            if done % checkpoint_every == 0 and done < job.steps:
                ev = evaluate(job.apply_fn, shipped(job, state), ds.x_test, ds.y_test)
                log.write(done, ev, split="test")
                ck.save(done, state, {"accuracy": ev["accuracy"]})
        ck.close()
    jax.block_until_ready(state.params)
    info = {"train_seconds": time.perf_counter() - t0, "resumed_from": start,
            "final_train_loss": None if metrics is None else float(np.asarray(metrics["loss"]))}
    return jax.device_get(state), info


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def run_vectorized(jobs: list[Job], ds, *, log_every: int = 50) -> list[tuple[train.TrainState, dict]]:
    """Train jobs that differ only in traced values (``hp``, seed, initial params) as one vmapped program.

    Returns one ``(state, info)`` per job, equal (up to float reassociation) to :func:`run`.
    """
    first = jobs[0]
    for j in jobs[1:]:
        if (j.steps, j.batch_size, sorted(j.hp)) != (first.steps, first.batch_size, sorted(first.hp)):
            raise ValueError("vectorized jobs must share steps, batch_size and hyperparameter names")
    state = _stack([init_state(j) for j in jobs])
    hp = _stack([hp_arrays(j.hp) for j in jobs])
    aux = _stack([j.teacher_params for j in jobs]) if first.teacher_params is not None else ()
    step = jax.jit(jax.vmap(step_fn(first), in_axes=(0, 0, 0, 0 if aux != () else None)), donate_argnums=(0,))
    its = [jdata.BatchIterator(ds.x_train, ds.y_train, j.batch_size, j.seed) for j in jobs]
    t0, metrics = time.perf_counter(), None
    for _ in range(first.steps):
        batch = _stack([next(it) for it in its])
        state, metrics = step(state, batch, hp, aux)
    jax.block_until_ready(state.params)
    secs = time.perf_counter() - t0
    state = jax.device_get(state)
    out = []
    for i in range(len(jobs)):
        st = jax.tree.map(lambda x: x[i], state)
        out.append((st, {"train_seconds": secs / len(jobs), "resumed_from": 0, "vectorized": len(jobs),
                         "final_train_loss": float(np.asarray(metrics["loss"][i]))}))
    return out
