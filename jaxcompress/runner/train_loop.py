"""The training loop every training stage shares: resumable, data parallel, optionally vmapped.

A :class:`Job` describes one training run (the student :class:`~jaxcompress.model.Model` with its
initial params and model state, transform builder, traced hyperparameters ``hp``, optionally a
teacher Model). :func:`step_fn` turns it into one pure function
``step(state, batch, hp, aux) -> (state, metrics)`` built on :func:`jaxcompress.train.make_train_step`
(cross-entropy) or :func:`jaxcompress.distillation.make_distill_step` (``aux`` = the teacher's
``(params, state)``), with the optimizer and the transform built *inside* from the traced ``hp`` -
so :func:`run` (one job, jitted, batch sharded over a device mesh, checkpointed) and
:func:`run_vectorized` (several jobs stacked and ``jax.vmap``-ed into one program) execute the
same code. The model's state (BatchNorm statistics) is ``state.model_state``: threaded through
every step, checkpointed and resumed with the rest of the state.

>>> import jax, flax.linen as nn, numpy as np
>>> from types import SimpleNamespace
>>> from jaxcompress.model import from_linen
>>> from jaxcompress.transform import identity
>>> class Net(nn.Module):
...     @nn.compact
...     def __call__(self, x, train: bool = False):
...         return nn.Dense(2)(nn.BatchNorm(not train)(x))
>>> model = from_linen(Net(), Net().init(jax.random.key(0), np.zeros((1, 3), np.float32)))
>>> job = Job(model, lambda hp: identity(), {"lr": 1e-2}, steps=2, batch_size=4, seed=0)
>>> state = init_state(job)
>>> x, y = np.ones((4, 3), np.float32), np.zeros(4, np.int32)
>>> state, _ = jax.jit(step_fn(job))(state, (x, y), hp_arrays(job.hp), ())
>>> int(state.step), sorted(state.model_state)
(1, ['batch_stats'])
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcompress import data as jdata
from jaxcompress import train
from jaxcompress.model import Model
from jaxcompress.runner.checkpoint import Checkpointer
from jaxcompress.runner.metrics_log import MetricsLogger
from jaxcompress.transform import Transform, finalize, identity

TRACES = {"step": 0}  # how often a step function was traced (tests: "compiles once")


class Job(NamedTuple):
    """One training run. ``model`` is the student: its forward, initial ``params`` and ``state``."""

    model: Model
    make_transform: Callable[[dict], Transform]
    hp: dict  # name -> float; always has "lr"
    steps: int
    batch_size: int
    seed: int
    teacher: Model | None = None  # frozen, run in eval mode with its own params and state
    sample_shape: tuple = ()


def teacher_args(job: Job):
    """The teacher's un-donated program argument ``(params, state)`` (``()`` without a teacher)."""
    return () if job.teacher is None else (job.teacher.params, job.teacher.state)


def optimizer(lr) -> optax.GradientTransformation:
    """Adam with a (possibly traced) learning rate; identical to ``optax.adam(lr)``."""
    return optax.chain(optax.scale_by_adam(), optax.scale(-jnp.asarray(lr, jnp.float32)))


def hp_arrays(hp: dict) -> dict:
    return {k: jnp.asarray(v, jnp.float32) for k, v in sorted(hp.items())}


def _distill_step(job: Job, opt, t, loss):
    from jaxcompress import distillation

    return distillation.make_distill_step(job.model, job.teacher, opt, loss, t, donate=False, jit=False)


def _kd():
    from jaxcompress import distillation

    return distillation.kd()  # temperature / alpha defaults; the real values are traced in the state


def step_fn(job: Job) -> Callable:
    """``step(state, batch, hp, aux) -> (state, metrics)`` (not jitted); ``aux`` = :func:`teacher_args`.

    Cross-entropy jobs use :func:`jaxcompress.train.make_train_step`; jobs with a teacher use
    :func:`jaxcompress.distillation.make_distill_step` (temperature and alpha are traced in its state).
    """

    kd = _kd() if job.teacher is not None else None  # built outside any trace (it validates values)

    def step(state, batch, hp, aux):
        TRACES["step"] += 1
        opt, t = optimizer(hp["lr"]), job.make_transform(hp)
        if job.teacher is None:
            return train.make_train_step(job.model, opt, t, jit=False)(state, batch)
        return _distill_step(job, opt, t, kd).raw(state, batch, aux)

    return step


def init_state(job: Job):
    """The initial ``TrainState`` (or ``DistillState`` for a job with a teacher), built by one compiled program."""
    hp = hp_arrays(job.hp)
    opt, t = optimizer(hp["lr"]), job.make_transform(hp)
    if job.teacher is None:
        make = lambda params, ms: train.create_train_state(params, opt, t, job.seed, model_state=ms)
    else:
        dstep = _distill_step(job, opt, t, _kd())
        x = np.zeros((1, *job.sample_shape), np.float32)
        make = lambda params, ms: dstep.init(params, x, seed=job.seed, model_state=ms,
                                             temperature=job.hp["temperature"], alpha=job.hp["alpha"])
    init = (job.model.params, job.model.state)
    try:
        return jax.jit(make)(*init)  # a fresh copy: the step donates it, the job's arrays survive
    except jax.errors.ConcretizationTypeError:  # a transform whose init needs concrete values
        return make(*jax.tree.map(jnp.copy, init))


_SHIP_FNS: dict = {}


def shipped(job: Job, state: train.TrainState):
    """The weights the model ships with after training: ``finalize(params, tstate, transform)``."""
    if job.make_transform not in _SHIP_FNS:
        _SHIP_FNS.clear()
        _SHIP_FNS[job.make_transform] = jax.jit(lambda p, ts, hp: finalize(p, ts, job.make_transform(hp)))
    return _SHIP_FNS[job.make_transform](state.params, state.tstate, hp_arrays(job.hp))


_EVAL_FNS: dict = {}


def evaluate(model: Model, params, x, y, model_state=None) -> dict:
    """Eval-mode test loss and accuracy of ``params`` with ``model_state`` (default the model's own);
    one compiled eval program per model forward."""
    if model.forward not in _EVAL_FNS:
        _EVAL_FNS[model.forward] = train.make_eval_fn(model)
    ms = model.state if model_state is None else model_state
    return _EVAL_FNS[model.forward](params, identity().init(params), x, y, ms)


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
    hp, aux = hp_arrays(job.hp), teacher_args(job)
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
                ev = evaluate(job.model, shipped(job, state), ds.x_test, ds.y_test, state.model_state)
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
    aux = _stack([teacher_args(j) for j in jobs]) if first.teacher is not None else ()
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
