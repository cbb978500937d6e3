"""One jit-compiled distillation step: teacher forward, student forward + backward, optimizer update.

:func:`make_distill_step` returns a :class:`DistillStep` ``step`` with
``step(state, batch) -> (state, metrics)``. ``batch`` is ``(inputs, labels)`` - or
``(inputs, labels, teacher_logits)`` with ``teacher=None`` (train from logits cached once by
:func:`precompute_teacher_logits`); ``inputs`` is any pytree (``x``, ``(ids, mask)``, a
dict). Labels ``< 0`` mark unlabeled transfer inputs.

Student and teacher follow the model contract of :mod:`jaxcompress.model`: each is a
:class:`~jaxcompress.model.Model` (``from_linen`` / ``from_nnx``: BatchNorm, dropout) or a plain
``apply(params, x)`` (``features.with_features`` for feature losses).

* The student runs in train mode with the key ``train.model_rng(state.rng)`` (fresh every
  step); its model state (BatchNorm statistics) is ``state.model_state``, updated and
  returned; the optimizer sees ``state.params`` only.
* The teacher runs in eval mode (deterministic) on its own state. Its params - for a teacher
  Model the pair ``(params, state)`` - are an argument of the compiled program that is never
  differentiated (its outputs pass through ``stop_gradient``): no teacher gradient exists
  in the program, and the teacher's buffers are not donated.
* The student's state (a :class:`DistillState`, the fields of ``train.TrainState`` plus
  traced ``hparams`` and learned loss params such as FitNets projections) is donated.
* The transform seam is the one of ``jaxcompress.train``: the forward pass sees
  ``transform.apply(params, tstate)``; ``transform.update`` and ``reset_opt_state`` run
  after the optimizer step - so prune+KD and QAT+KD are one step.
* ``temperature``/``alpha``/weights live in ``state.hparams`` as float32 arrays: a sweep
  that changes only them compiles once (``step.set_hparams(state, temperature=8.0)``);
  ``jax.vmap(step.raw, in_axes=(0, None, None))`` runs stacked states (one per
  temperature/alpha) as one program. ``hparams`` are an un-donated argument of the compiled
  program, not one of its outputs.

>>> import jax.numpy as jnp, optax
>>> from jaxcompress import models
>>> from jaxcompress.distillation.losses import kd
>>> t = models.create("mlp", (8,), 3, rng=0, features=(16,))
>>> s = models.create("mlp", (8,), 3, rng=1, features=(4,))
>>> step = make_distill_step(s.apply_fn, t.apply_fn, optax.adam(1e-2), kd(4.0, 0.5), teacher_params=t.params)
>>> state = step.init(s.params, jnp.zeros((2, 8)))
>>> state, metrics = step(state, (jnp.ones((2, 8)), jnp.array([0, 1], jnp.int32)))
>>> int(state.step), sorted(metrics)
(1, ['accuracy', 'ce', 'kd', 'loss'])

Models with BatchNorm and dropout (the teacher's params and statistics travel together):

>>> import jax, flax.linen as nn
>>> from jaxcompress.model import from_linen
>>> class Net(nn.Module):
...     width: int
...     @nn.compact
...     def __call__(self, x, train: bool = False):
...         x = nn.relu(nn.BatchNorm(not train)(nn.Dense(self.width)(x)))
...         return nn.Dense(3)(nn.Dropout(0.2, deterministic=not train)(x))
>>> x = jnp.ones((4, 8))
>>> teacher = from_linen(Net(16), Net(16).init(jax.random.key(0), x))
>>> student = from_linen(Net(4), Net(4).init(jax.random.key(1), x))
>>> step = make_distill_step(student, teacher, optax.adam(1e-2), kd(4.0, 0.5))
>>> state = step.init(student, x)
>>> state, metrics = step(state, (x, jnp.array([0, 1, 2, 0], jnp.int32)))
>>> sorted(state.model_state)          # the student's updated batch_stats
['batch_stats']
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxcompress.distillation.losses import DistillLoss, Outputs, kd
from jaxcompress.model import Model, as_model, from_apply
from jaxcompress.train import TrainState, apply_gradients, create_train_state, model_rng
from jaxcompress.transform import Transform, identity


class DistillState(NamedTuple):
    """``train.TrainState``'s fields plus traced ``hparams`` and learned loss params; ``model_state``
    (last, as in ``TrainState``) is the student's non-trainable state (``{}`` for a stateless one)."""

    step: jax.Array
    params: Any
    opt_state: Any
    tstate: Any
    rng: jax.Array
    hparams: dict
    loss_params: Any
    loss_opt_state: Any
    model_state: Any = {}


def _as_outputs(out, feature_paths: Sequence[str], who: str) -> Outputs:
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
        logits, feats = out
    else:
        logits, feats = out, {}
    missing = [p for p in feature_paths if p not in feats]
    if missing:
        raise ValueError(f"the loss needs {who} feature(s) {missing} but the {who} returned "
                         f"{sorted(feats)}; build it with features.with_features(module, paths)")
    return Outputs(logits, feats)


def _hparams_arrays(hparams: dict) -> dict:
    return {k: jnp.asarray(v, jnp.float32) for k, v in hparams.items()}


def _is_stateful(teacher) -> bool:
    """A teacher given as a Model (or module): its program argument is ``(params, state)``."""
    return isinstance(teacher, (Model, nnx.Module, nn.Module))


def _teacher_model(teacher, given, who: str = "teacher") -> tuple[Model, Any]:
    """``(Model, program argument)`` of one teacher: ``given`` params (an ``apply``), or for a
    Model its own ``(params, state)``, ``given`` params with its state, or a given ``(params, state)``."""
    if not _is_stateful(teacher):
        if given is None:
            raise ValueError(f"teacher_params is required for {who} (a plain apply function) unless the "
                             "teacher is None (cached logits) or a jaxcompress.model.Model")
        return from_apply(teacher, None), given
    m = as_model(teacher, given if isinstance(teacher, nn.Module) else None)
    if given is None or isinstance(teacher, nn.Module):
        return m, (m.params, m.state)
    want = jax.tree.structure(m.params)
    if jax.tree.structure(given) == want:
        return m, (given, m.state)
    if isinstance(given, tuple) and len(given) == 2 and jax.tree.structure(given[0]) == want:
        return m, given
    raise ValueError(f"teacher_params of {who} do not fit the teacher Model: pass its params (the structure of "
                     f"model.params) or (params, state)")


class DistillStep:
    """The callable :func:`make_distill_step` returns; see the module docstring."""

    def __init__(self, student, teacher, optimizer, loss, transform, teacher_params, donate, jit):
        self.student = as_model(student)
        self.optimizer, self.loss = optimizer, loss
        self.transform = transform or identity()
        self.cached = teacher is None
        self.teacher = teacher
        self.multi = isinstance(teacher, (list, tuple))
        if self.cached and loss.teacher_features:
            raise ValueError(f"cached teacher logits carry no features, but the loss needs teacher features "
                             f"{list(loss.teacher_features)}; pass a teacher")
        if self.multi and teacher_params is not None and (
                not isinstance(teacher_params, (list, tuple)) or len(teacher_params) != len(teacher)):
            raise ValueError("with several teachers, teacher_params must be a sequence of equal length (or None "
                             "when every teacher is a Model)")
        self.teachers: list[Model] = []
        self.teacher_params = None  # the teachers' program argument(s)
        if not self.cached:
            self.teachers, self.teacher_params = self._teacher_args(teacher_params)
        self.raw = self._build()  # (state, batch, teacher_params) -> (state, metrics), un-jitted

        def core(state, hparams, batch, teacher_params):  # hparams travel beside the donated state
            new, metrics = self.raw(state._replace(hparams=hparams), batch, teacher_params)
            return new._replace(hparams=None), metrics

        self.jitted = jax.jit(core, donate_argnums=(0,) if donate else ()) if jit else core

    def _teacher_args(self, teacher_params):
        """``(teacher Models, program argument)`` for ``teacher_params`` (``None``: the Models' own)."""
        teachers = list(self.teacher) if self.multi else [self.teacher]
        given = list(teacher_params) if self.multi and teacher_params is not None else [teacher_params] * len(teachers)
        pairs = [_teacher_model(t, g, f"teacher {i}" if self.multi else "the teacher")
                 for i, (t, g) in enumerate(zip(teachers, given))]
        args = [a for _, a in pairs]
        return [m for m, _ in pairs], (args if self.multi else args[0])

    # -- forward pieces -------------------------------------------------------------------------
    def teacher_outputs(self, teacher_params, batch) -> list[Outputs]:
        """The frozen teachers' eval-mode outputs for ``batch`` (``stop_gradient``-ed).

        ``teacher_params`` is the program argument (``step.teacher_params``): per teacher its
        params, or ``(params, state)`` for a teacher Model."""
        if self.cached:
            if len(batch) != 3:
                raise ValueError("with teacher=None the batch must be (inputs, labels, teacher_logits)")
            return [Outputs(jax.lax.stop_gradient(batch[2]), {})]
        x = batch[0]
        args = teacher_params if self.multi else [teacher_params]
        teachers = self.teacher if self.multi else [self.teacher]
        outs = []
        for t, m, a in zip(teachers, self.teachers, args):
            p, s = a if _is_stateful(t) else (a, {})
            out = m.apply_fn(p, x, s)
            outs.append(_as_outputs(out, () if self.multi else self.loss.teacher_features, "teacher"))
        return jax.lax.stop_gradient(outs)

    def student_outputs(self, params, tstate, x, model_state=None, rng=None, train: bool = True):
        """``(Outputs, new_model_state)`` of the student on ``transform.apply(params, tstate)``."""
        out, new_ms = self.student.forward(self.transform.apply(params, tstate),
                                           {} if model_state is None else model_state, x, train=train, rng=rng)
        return _as_outputs(out, self.loss.student_features, "student"), new_ms

    def _build(self):
        loss, optimizer, transform = self.loss, self.optimizer, self.transform

        def step(state: DistillState, batch, teacher_params):
            teachers = self.teacher_outputs(teacher_params, batch)
            rng = model_rng(state.rng)

            def objective(params, loss_params):
                s, model_state = self.student_outputs(params, state.tstate, batch[0], state.model_state, rng)
                value, metrics = loss.apply(loss_params, state.hparams, s, teachers, batch[1])
                return value, (metrics, s.logits, model_state)

            (value, (metrics, logits, model_state)), (grads, lgrads) = jax.value_and_grad(
                objective, argnums=(0, 1), has_aux=True)(state.params, state.loss_params)
            student = TrainState(state.step, state.params, state.opt_state, state.tstate, state.rng, state.model_state)
            ts = apply_gradients(student, grads, optimizer, transform, model_state)
            if jax.tree.leaves(state.loss_params):
                # optax's Adam computes `float ** int32`, which strict dtype promotion rejects.
                with jax.numpy_dtype_promotion("standard"):
                    lupd, loss_opt_state = optimizer.update(lgrads, state.loss_opt_state, state.loss_params)
                loss_params = optax.apply_updates(state.loss_params, lupd)
            else:
                loss_params, loss_opt_state = state.loss_params, state.loss_opt_state
            labels = batch[1]
            labeled = (labels >= 0).astype(jnp.float32)
            hit = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
            sums = jnp.sum(jnp.stack([hit * labeled, labeled]), axis=tuple(range(1, labels.ndim + 1)))
            metrics = {"loss": value, "accuracy": sums[0] / jnp.maximum(sums[1], 1.0), **metrics}
            new = DistillState(ts.step, ts.params, ts.opt_state, ts.tstate, ts.rng, state.hparams, loss_params,
                               loss_opt_state, ts.model_state)
            return new, metrics

        return step

    # -- public API -----------------------------------------------------------------------------
    def _args(self, teacher_params):
        return self.teacher_params if teacher_params is None else self._teacher_args(teacher_params)[1]

    def __call__(self, state: DistillState, batch, teacher_params=None):
        """One step; ``teacher_params`` overrides the ones given at construction."""
        new, metrics = self.jitted(state._replace(hparams=None), state.hparams, tuple(batch),
                                   self._args(teacher_params))
        return new._replace(hparams=state.hparams), metrics

    def lower(self, state: DistillState, batch, teacher_params=None):
        """``jax.jit(...).lower`` of the step (inspect its HLO / cost)."""
        return self.jitted.lower(state._replace(hparams=None), state.hparams, tuple(batch),
                                 self._args(teacher_params))

    def init(self, params, sample_x, *, seed: int = 0, tstate=None, model_state=None, **hparams) -> DistillState:
        """The initial :class:`DistillState` for the student.

        Args:
          params: the student's params (linen dict or ``nnx.State``) or a
            :class:`~jaxcompress.model.Model` (its params and state); copied, so the caller's
            arrays survive the step's donation.
          sample_x: one input batch (any pytree); only its shapes are used (to size learned projections).
          seed: rng seed (transform rng, dropout keys, projection init).
          tstate: transform state (default ``transform.init(params)``).
          model_state: the student's model state (default: the Model's own, ``{}`` for an apply function).
          **hparams: overrides of the loss's hyperparameters (``temperature=8.0`` ...).
        """
        if isinstance(params, Model):
            model_state = params.state if model_state is None else model_state
            params = params.params
        model_state = self.student.state if model_state is None else model_state
        to_jax = lambda a: jnp.asarray(a) if isinstance(a, np.ndarray) else a  # noqa: E731
        params, model_state = jax.tree.map(to_jax, (params, model_state))
        ts = create_train_state(params, self.optimizer, self.transform, seed, tstate, model_state)
        h = self._merge_hparams(dict(self.loss.hparams), hparams)
        loss_params = ()
        if self.loss.student_features or self.loss.teacher_features:
            x = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.asarray(a).dtype), sample_x)
            s = jax.eval_shape(lambda p, ms, xx: self.student_outputs(p, ts.tstate, xx, ms, train=False)[0],
                               ts.params, ts.model_state, x)
            if self.cached:
                t = []
            else:
                t = jax.eval_shape(lambda tp, xx: self.teacher_outputs(tp, (xx,)), self.teacher_params, x)
            loss_params = self.loss.init(jax.random.fold_in(jax.random.key(seed), 1), s, t)
        with jax.numpy_dtype_promotion("standard"):
            loss_opt_state = self.optimizer.init(loss_params) if jax.tree.leaves(loss_params) else ()
        return DistillState(ts.step, ts.params, ts.opt_state, ts.tstate, ts.rng, _hparams_arrays(h),
                            loss_params, loss_opt_state, ts.model_state)

    def _merge_hparams(self, h: dict, overrides: dict) -> dict:
        unknown = sorted(set(overrides) - set(h))
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {unknown}; this loss has {sorted(h)}")
        h.update(overrides)
        self.loss.validate(h)
        return h

    def set_hparams(self, state: DistillState, **hparams) -> DistillState:
        """``state`` with some hyperparameters replaced (validated; no recompilation)."""
        h = self._merge_hparams(dict(state.hparams), hparams)
        return state._replace(hparams=_hparams_arrays(h))


def make_distill_step(student: Model | Callable, teacher: Model | Callable | Sequence | None,
                      optimizer: optax.GradientTransformation, loss: DistillLoss | None = None,
                      transform: Transform | None = None, *, teacher_params=None,
                      donate: bool = True, jit: bool = True) -> DistillStep:
    """Build the fused distillation step.

    Args:
      student: a :class:`~jaxcompress.model.Model` (run in train mode, its state threaded
        through ``DistillState.model_state``) or ``apply(params, x) -> logits`` /
        ``-> (logits, {path: feature})`` (``features.with_features``) when the loss uses
        student features.
      teacher: the same for the teacher (run in eval mode); a sequence for several teachers;
        ``None`` to train from cached logits.
      optimizer: optax optimizer for the student (and for learned projections).
      loss: a :class:`DistillLoss` (default ``kd(4.0, 0.9)``); see ``losses.combine``.
      transform: compression transform on the student (default identity).
      teacher_params: the frozen teacher params (an un-donated argument of the program);
        required for an apply-function teacher. For a teacher Model the default is its own
        ``(params, state)``; given params replace its params (its state is kept), or pass
        ``(params, state)``. A sequence for several teachers.
      donate: donate the student state's buffers.
      jit: False leaves ``step.jitted`` un-jitted (``step.raw`` is always the plain function).

    Returns:
      A :class:`DistillStep`: ``step(state, batch) -> (state, metrics)``, ``step.init(...)``,
      ``step.raw(state, batch, step.teacher_params)`` (un-jitted, vmap-able).

    Raises:
      ValueError: an apply-function teacher without ``teacher_params``; teacher params that fit
        neither the teacher Model's params nor ``(params, state)``; a feature loss with cached logits.
    """
    return DistillStep(student, teacher, optimizer, loss or kd(), transform, teacher_params, donate, jit)


def precompute_teacher_logits(teacher: Model | Callable, teacher_params, x, batch_size: int = 1000) -> np.ndarray:
    """The teacher's eval-mode logits over all of ``x`` (any pytree; float32 numpy), computed once in batches.

    ``teacher`` is an ``apply(params, x)`` with its ``teacher_params``, or a Model
    (``teacher_params=None``: its own params and state).
    """
    from jaxcompress.data.batching import num_examples

    m, arg = _teacher_model(teacher, teacher_params)
    p, s = arg if _is_stateful(teacher) else (arg, {})
    n = num_examples(x)
    if n == 0:
        raise ValueError("cannot precompute teacher logits for an empty input set")
    fwd = jax.jit(m.apply_fn)
    return np.concatenate([np.asarray(fwd(p, jax.tree.map(lambda a: a[i:i + batch_size], x), s), np.float32)
                           for i in range(0, n, batch_size)])


def cached_batches(x, y, teacher_logits, batch_size: int, seed: int = 0, start_step: int = 0):
    """Endless ``(inputs, y, teacher_logits)`` batches (``inputs`` any pytree), drawn like ``data.BatchIterator``."""
    from jaxcompress.data import BatchIterator
    from jaxcompress.data.batching import num_examples, take

    if len(teacher_logits) != num_examples(x):
        raise ValueError(f"teacher_logits has {len(teacher_logits)} rows but x has {num_examples(x)}")
    it = BatchIterator(x, y, batch_size, seed, start_step)
    while True:
        idx = it.indices_at(it.step)
        it.step += 1
        yield take(x, idx), y[idx], teacher_logits[idx]
