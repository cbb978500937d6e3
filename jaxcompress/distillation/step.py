"""One jit-compiled distillation step: teacher forward, student forward + backward, optimizer update.

:func:`make_distill_step` returns a :class:`DistillStep` ``step`` with
``step(state, batch) -> (state, metrics)``. ``batch`` is ``(x, y)`` - or ``(x, y,
teacher_logits)`` with ``teacher_apply=None`` (train from logits cached once by
:func:`precompute_teacher_logits`). Labels ``< 0`` mark unlabeled transfer inputs.

* The teacher's params are an argument of the compiled program that is never
  differentiated (and its outputs pass through ``stop_gradient``): no teacher gradient
  exists in the program, and the teacher's buffers are not donated.
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
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcompress.distillation.losses import DistillLoss, Outputs, kd
from jaxcompress.train import TrainState, apply_gradients, create_train_state
from jaxcompress.transform import Transform, identity


class DistillState(NamedTuple):
    """``train.TrainState``'s fields plus traced ``hparams`` and learned loss params."""

    step: jax.Array
    params: Any
    opt_state: Any
    tstate: Any
    rng: jax.Array
    hparams: dict
    loss_params: Any
    loss_opt_state: Any


def _as_outputs(out, feature_paths: Sequence[str], who: str) -> Outputs:
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
        logits, feats = out
    else:
        logits, feats = out, {}
    missing = [p for p in feature_paths if p not in feats]
    if missing:
        raise ValueError(f"the loss needs {who} feature(s) {missing} but {who}_apply returned "
                         f"{sorted(feats)}; build it with features.with_features(module, paths)")
    return Outputs(logits, feats)


def _hparams_arrays(hparams: dict) -> dict:
    return {k: jnp.asarray(v, jnp.float32) for k, v in hparams.items()}


class DistillStep:
    """The callable :func:`make_distill_step` returns; see the module docstring."""

    def __init__(self, student_apply, teacher_apply, optimizer, loss, transform, teacher_params, donate, jit):
        self.student_apply, self.optimizer, self.loss = student_apply, optimizer, loss
        self.transform = transform or identity()
        self.cached = teacher_apply is None
        self.teacher_apply = teacher_apply
        self.multi = isinstance(teacher_apply, (list, tuple))
        self.teacher_params = teacher_params
        if self.cached and loss.teacher_features:
            raise ValueError(f"cached teacher logits carry no features, but the loss needs teacher features "
                             f"{list(loss.teacher_features)}; pass teacher_apply")
        if not self.cached and teacher_params is None:
            raise ValueError("teacher_params is required unless teacher_apply is None (cached logits)")
        if self.multi and (not isinstance(teacher_params, (list, tuple)) or len(teacher_params) != len(teacher_apply)):
            raise ValueError("with several teacher_apply functions, teacher_params must be a sequence of equal length")
        self.raw = self._build()  # (state, batch, teacher_params) -> (state, metrics), un-jitted

        def core(state, hparams, batch, teacher_params):  # hparams travel beside the donated state
            new, metrics = self.raw(state._replace(hparams=hparams), batch, teacher_params)
            return new._replace(hparams=None), metrics

        self.jitted = jax.jit(core, donate_argnums=(0,) if donate else ()) if jit else core

    # -- forward pieces -------------------------------------------------------------------------
    def teacher_outputs(self, teacher_params, batch) -> list[Outputs]:
        """The frozen teachers' outputs for ``batch`` (``stop_gradient``-ed)."""
        if self.cached:
            if len(batch) != 3:
                raise ValueError("with teacher_apply=None the batch must be (x, y, teacher_logits)")
            return [Outputs(jax.lax.stop_gradient(batch[2]), {})]
        x = batch[0]
        applies = self.teacher_apply if self.multi else [self.teacher_apply]
        tparams = teacher_params if self.multi else [teacher_params]
        outs = [_as_outputs(a(p, x), () if self.multi else self.loss.teacher_features, "teacher")
                for a, p in zip(applies, tparams)]
        return jax.lax.stop_gradient(outs)

    def student_outputs(self, params, tstate, x) -> Outputs:
        return _as_outputs(self.student_apply(self.transform.apply(params, tstate), x),
                           self.loss.student_features, "student")

    def _build(self):
        loss, optimizer, transform = self.loss, self.optimizer, self.transform

        def objective(params, loss_params, tstate, hparams, teachers, batch):
            s = self.student_outputs(params, tstate, batch[0])
            value, metrics = loss.apply(loss_params, hparams, s, teachers, batch[1])
            return value, (metrics, s.logits)

        def step(state: DistillState, batch, teacher_params):
            teachers = self.teacher_outputs(teacher_params, batch)
            (value, (metrics, logits)), (grads, lgrads) = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(
                state.params, state.loss_params, state.tstate, state.hparams, teachers, batch)
            student = TrainState(state.step, state.params, state.opt_state, state.tstate, state.rng)
            new_step, params, opt_state, tstate, rng = apply_gradients(student, grads, optimizer, transform)
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
            new = DistillState(new_step, params, opt_state, tstate, rng, state.hparams, loss_params, loss_opt_state)
            return new, metrics

        return step

    # -- public API -----------------------------------------------------------------------------
    def __call__(self, state: DistillState, batch, teacher_params=None):
        """One step; ``teacher_params`` overrides the ones given at construction."""
        tp = self.teacher_params if teacher_params is None else teacher_params
        new, metrics = self.jitted(state._replace(hparams=None), state.hparams, tuple(batch), tp)
        return new._replace(hparams=state.hparams), metrics

    def lower(self, state: DistillState, batch, teacher_params=None):
        """``jax.jit(...).lower`` of the step (inspect its HLO / cost)."""
        tp = self.teacher_params if teacher_params is None else teacher_params
        return self.jitted.lower(state._replace(hparams=None), state.hparams, tuple(batch), tp)

    def init(self, params, sample_x, *, seed: int = 0, tstate=None, **hparams) -> DistillState:
        """The initial :class:`DistillState` for student ``params``.

        Args:
          params: the student's params (linen dict or ``nnx.State``); copied, so the
            caller's arrays survive the step's donation.
          sample_x: one input batch; only its shape is used (to size learned projections).
          seed: rng seed (transform rng, projection init).
          tstate: transform state (default ``transform.init(params)``).
          **hparams: overrides of the loss's hyperparameters (``temperature=8.0`` ...).
        """
        # copies, so that donating the state never deletes the caller's arrays
        ts = create_train_state(jax.tree.map(jnp.copy, params), self.optimizer, self.transform, seed, tstate)
        ts = ts._replace(tstate=jax.tree.map(jnp.copy, ts.tstate))
        h = self._merge_hparams(dict(self.loss.hparams), hparams)
        loss_params = ()
        if self.loss.student_features or self.loss.teacher_features:
            x = jax.ShapeDtypeStruct(np.shape(sample_x), jnp.asarray(sample_x).dtype)
            s = jax.eval_shape(lambda p, xx: self.student_outputs(p, ts.tstate, xx), params, x)
            if self.cached:
                t = []
            else:
                t = jax.eval_shape(lambda tp, xx: self.teacher_outputs(tp, (xx,)), self.teacher_params, x)
            loss_params = self.loss.init(jax.random.fold_in(jax.random.key(seed), 1), s, t)
        with jax.numpy_dtype_promotion("standard"):
            loss_opt_state = self.optimizer.init(loss_params) if jax.tree.leaves(loss_params) else ()
        return DistillState(ts.step, ts.params, ts.opt_state, ts.tstate, ts.rng, _hparams_arrays(h),
                            loss_params, loss_opt_state)

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


def make_distill_step(student_apply: Callable, teacher_apply: Callable | Sequence[Callable] | None,
                      optimizer: optax.GradientTransformation, loss: DistillLoss | None = None,
                      transform: Transform | None = None, *, teacher_params=None,
                      donate: bool = True, jit: bool = True) -> DistillStep:
    """Build the fused distillation step.

    Args:
      student_apply: ``(params, x) -> logits`` or ``-> (logits, {path: feature})``
        (``features.with_features``) when the loss uses student features.
      teacher_apply: the same for the teacher; a sequence for several teachers (with a
        sequence of ``teacher_params``); ``None`` to train from cached logits.
      optimizer: optax optimizer for the student (and for learned projections).
      loss: a :class:`DistillLoss` (default ``kd(4.0, 0.9)``); see ``losses.combine``.
      transform: compression transform on the student (default identity).
      teacher_params: the frozen teacher params (an un-donated argument of the program).
      donate: donate the student state's buffers.
      jit: False leaves ``step.jitted`` un-jitted (``step.raw`` is always the plain function).

    Returns:
      A :class:`DistillStep`: ``step(state, batch) -> (state, metrics)``, ``step.init(...)``.
    """
    return DistillStep(student_apply, teacher_apply, optimizer, loss or kd(), transform, teacher_params, donate, jit)


def precompute_teacher_logits(teacher_apply: Callable, teacher_params, x, batch_size: int = 1000) -> np.ndarray:
    """The teacher's logits over all of ``x`` (float32 numpy), computed once in batches."""
    if len(x) == 0:
        raise ValueError("cannot precompute teacher logits for an empty input set")
    fwd = jax.jit(teacher_apply)
    return np.concatenate([np.asarray(fwd(teacher_params, x[i:i + batch_size]), np.float32)
                           for i in range(0, len(x), batch_size)])


def cached_batches(x, y, teacher_logits, batch_size: int, seed: int = 0, start_step: int = 0):
    """Endless ``(x, y, teacher_logits)`` batches, drawn like ``data.BatchIterator``."""
    from jaxcompress.data import BatchIterator

    if len(teacher_logits) != len(x):
        raise ValueError(f"teacher_logits has {len(teacher_logits)} rows but x has {len(x)}")
    it = BatchIterator(x, y, batch_size, seed, start_step)
    while True:
        idx = it.indices_at(it.step)
        it.step += 1
        yield x[idx], y[idx], teacher_logits[idx]
