"""Generic jit-compiled train and eval steps with a seam for a compression :class:`Transform`.

The forward pass sees ``transform.apply(params, tstate)``; after each optimizer update
``transform.update`` runs (re-masking, observers ...). With the default identity transform
this is a plain supervised step.

>>> import jax, optax
>>> from jaxcompress import models, data
>>> ds = data.load("digits")
>>> m = models.create("mlp", ds.input_shape, features=(32,))
>>> opt = optax.adam(1e-3)
>>> state = create_train_state(m.params, opt)
>>> step = make_train_step(m.apply_fn, opt)
>>> state, metrics = step(state, (ds.x_train[:32], ds.y_train[:32]))
>>> int(state.step)
1
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcompress.transform import Context, Transform, identity


class TrainState(NamedTuple):
    """Everything a train step carries: step, params, optimizer state, transform state, rng."""

    step: jax.Array
    params: Any
    opt_state: Any
    tstate: Any
    rng: jax.Array


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy with integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of examples whose argmax equals the label."""
    return (jnp.argmax(logits, -1) == labels).astype(jnp.float32).mean()


def create_train_state(params, optimizer: optax.GradientTransformation, transform: Transform | None = None,
                       seed: int = 0, tstate=None) -> TrainState:
    """Initial :class:`TrainState`; ``tstate`` defaults to ``transform.init(params)``."""
    transform = transform or identity()
    if tstate is None:
        tstate = transform.init(params)
    # Copy so that donating the state in the train step never deletes the caller's arrays.
    params, tstate = jax.tree.map(lambda a: jnp.copy(a) if isinstance(a, jax.Array) else a, (params, tstate))
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), tstate, jax.random.key(seed))


def make_loss_fn(apply_fn, transform: Transform | None = None, loss_fn=cross_entropy):
    """``loss(params, tstate, batch) -> (loss, logits)`` with the transform in the forward pass."""
    transform = transform or identity()

    def loss(params, tstate, batch):
        x, y = batch
        logits = apply_fn(transform.apply(params, tstate), x)
        return loss_fn(logits, y), logits

    return loss


def apply_gradients(state: TrainState, grads, optimizer: optax.GradientTransformation,
                    transform: Transform | None = None) -> TrainState:
    """The optimizer update, then ``transform.update`` and ``transform.reset_opt_state``.

    Shared by every train step (plain, distillation, runner) so that a transform sees the
    same :class:`Context` everywhere: ``step`` counts optimizer steps taken (after this one).
    """
    transform = transform or identity()
    # optax's Adam computes `float ** int32` in its bias correction, which fails under
    # jax_numpy_dtype_promotion="strict"; give the optimizer standard promotion only.
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    rng, sub = jax.random.split(state.rng)
    new_step = state.step + 1
    params, tstate = transform.update(params, state.tstate, Context(new_step, grads, sub))
    opt_state = transform.reset_opt_state(opt_state, state.tstate, tstate)
    return TrainState(new_step, params, opt_state, tstate, rng)


def make_train_step(apply_fn: Callable, optimizer: optax.GradientTransformation,
                    transform: Transform | None = None, loss_fn=cross_entropy, donate: bool = True, jit: bool = True):
    """Build ``step(state, batch) -> (state, metrics)``, jit-compiled with the state donated.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits``.
      optimizer: an optax optimizer.
      transform: compression transform (default: identity).
      loss_fn: ``loss_fn(logits, labels) -> scalar``.
      donate: donate the input state's buffers.
      jit: return the jitted function (False for use inside a larger jitted program / vmap).
    """
    transform = transform or identity()
    loss = make_loss_fn(apply_fn, transform, loss_fn)

    def step(state: TrainState, batch):
        (loss_value, logits), grads = jax.value_and_grad(loss, has_aux=True)(state.params, state.tstate, batch)
        metrics = {"loss": loss_value, "accuracy": accuracy(logits, batch[1])}
        return apply_gradients(state, grads, optimizer, transform), metrics

    if not jit:
        return step
    return jax.jit(step, donate_argnums=(0,) if donate else ())


def make_eval_fn(apply_fn: Callable, transform: Transform | None = None, loss_fn=cross_entropy, batch_size: int = 1000):
    """Build ``evaluate(params, tstate, x, y) -> {"loss", "accuracy"}`` over a whole split."""
    transform = transform or identity()

    @jax.jit
    def _sums(params, tstate, x, y):
        logits = apply_fn(transform.apply(params, tstate), x)
        n = y.shape[0]
        return loss_fn(logits, y) * n, accuracy(logits, y) * n

    def evaluate(params, tstate, x, y) -> dict[str, float]:
        if len(x) == 0:
            raise ValueError("cannot evaluate on an empty split")
        tot_l, tot_a = 0.0, 0.0
        for i in range(0, len(x), batch_size):
            batch_loss, a = _sums(params, tstate, x[i : i + batch_size], y[i : i + batch_size])
            tot_l, tot_a = tot_l + float(batch_loss), tot_a + float(a)
        return {"loss": tot_l / len(x), "accuracy": tot_a / len(x)}

    return evaluate


def fit(apply_fn, params, optimizer, x, y, *, steps: int, batch_size: int, seed: int = 0,
        transform: Transform | None = None, tstate=None, loss_fn=cross_entropy, callback=None):
    """Train for ``steps`` steps with deterministic batches; returns ``(state, info)``.

    ``callback(step, metrics)`` (optional) is called every step with device metrics.
    ``info`` holds ``{"seconds", "final_loss"}``.
    """
    from jaxcompress.data.batching import BatchIterator, _check_positive

    _check_positive("steps", steps)
    batches = BatchIterator(x, y, batch_size, seed)
    state = create_train_state(params, optimizer, transform, seed, tstate)
    step_fn = make_train_step(apply_fn, optimizer, transform, loss_fn)
    t0 = time.perf_counter()
    metrics = None
    for s in range(steps):
        state, metrics = step_fn(state, next(batches))
        if callback is not None:
            callback(s, metrics)
    jax.block_until_ready(state.params)
    return state, {"seconds": time.perf_counter() - t0, "final_loss": float(np.asarray(metrics["loss"]))}
