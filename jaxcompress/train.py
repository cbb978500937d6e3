"""Generic jit-compiled train and eval steps with a seam for a compression :class:`Transform`.

Every step sees the model through the contract of :mod:`jaxcompress.model`: pass a
:class:`~jaxcompress.model.Model` (``from_linen`` / ``from_nnx``: BatchNorm statistics are
threaded through ``TrainState.model_state`` and a fresh dropout key reaches the model each
step) or, for the stateless case, a plain ``apply_fn(params, x) -> logits``. A batch is
``(inputs, labels)`` where ``inputs`` is any pytree (``x``, ``(ids, mask)``, a dict).

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

A model with BatchNorm and dropout (``train=True`` in the step, ``False`` in evaluation):

>>> import flax.linen as nn
>>> from jaxcompress.model import from_linen
>>> class Net(nn.Module):
...     @nn.compact
...     def __call__(self, x, train: bool = False):
...         x = nn.Dropout(0.2, deterministic=not train)(nn.relu(nn.BatchNorm(not train)(nn.Dense(16)(x))))
...         return nn.Dense(10)(x)
>>> net = from_linen(Net(), Net().init(jax.random.key(0), ds.x_train[:1]))
>>> state = create_train_state(net, opt)                  # params to the optimizer, batch_stats beside
>>> state, _ = make_train_step(net, opt)(state, (ds.x_train[:32], ds.y_train[:32]))
>>> sorted(state.model_state)
['batch_stats']
>>> ev = make_eval_fn(net)(state.params, state.tstate, ds.x_test, ds.y_test, state.model_state)
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcompress.model import Model, as_model, check_state
from jaxcompress.transform import Context, Transform, identity

# folded into the step's key for the model's own randomness (dropout), so the transform's
# key stream (split in apply_gradients) is the same with and without a stochastic model
_MODEL_RNG = 0x6D6F64


class TrainState(NamedTuple):
    """Everything a train step carries: step, params, optimizer state, transform state, rng,
    and the model's non-trainable state (BatchNorm statistics ...; ``{}`` for a stateless model)."""

    step: jax.Array
    params: Any
    opt_state: Any
    tstate: Any
    rng: jax.Array
    model_state: Any = {}


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy with integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of examples whose argmax equals the label."""
    return (jnp.argmax(logits, -1) == labels).astype(jnp.float32).mean()


def create_train_state(params, optimizer: optax.GradientTransformation, transform: Transform | None = None,
                       seed: int = 0, tstate=None, model_state=None) -> TrainState:
    """Initial :class:`TrainState`; ``tstate`` defaults to ``transform.init(params)``.

    ``params`` may be a :class:`~jaxcompress.model.Model`: its ``params`` go to the optimizer
    and its ``state`` becomes ``model_state`` (unless given).
    """
    transform = transform or identity()
    if isinstance(params, Model):
        model_state = params.state if model_state is None else model_state
        params = params.params
    model_state = {} if model_state is None else model_state
    if tstate is None:
        tstate = transform.init(params)
    # Copy so that donating the state in the train step never deletes the caller's arrays.
    params, tstate, model_state = jax.tree.map(lambda a: jnp.copy(a) if isinstance(a, jax.Array) else a,
                                               (params, tstate, model_state))
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), tstate, jax.random.key(seed),
                      model_state)


def model_rng(rng: jax.Array) -> jax.Array:
    """The key a train step hands the model (dropout) for this step's ``state.rng``."""
    return jax.random.fold_in(rng, _MODEL_RNG)


def make_loss_fn(model, transform: Transform | None = None, loss_fn=cross_entropy, train: bool = True):
    """``loss(params, tstate, batch, model_state, rng) -> (loss, (outputs, new_model_state))``.

    ``model`` is a :class:`~jaxcompress.model.Model` or an ``apply_fn(params, x)``; the forward
    pass sees ``transform.apply(params, tstate)``; ``rng`` reaches the model's dropout.
    """
    transform = transform or identity()
    forward = as_model(model).forward

    def loss(params, tstate, batch, model_state=None, rng=None):
        inputs, labels = batch[0], batch[1]
        out, new_ms = forward(transform.apply(params, tstate), {} if model_state is None else model_state,
                              inputs, train=train, rng=rng)
        return loss_fn(out, labels), (out, new_ms)

    return loss


def apply_gradients(state: TrainState, grads, optimizer: optax.GradientTransformation,
                    transform: Transform | None = None, model_state=None) -> TrainState:
    """The optimizer update, then ``transform.update`` and ``transform.reset_opt_state``.

    Shared by every train step (plain, distillation, runner) so that a transform sees the
    same :class:`Context` everywhere: ``step`` counts optimizer steps taken (after this one).
    ``model_state`` (the forward pass's updated model state) replaces ``state.model_state``.
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
    if model_state is None:
        model_state = state.model_state
    else:
        check_state(model_state, state.model_state, "the train-mode forward pass")
    return TrainState(new_step, params, opt_state, tstate, rng, model_state)


def make_train_step(model: Model | Callable, optimizer: optax.GradientTransformation,
                    transform: Transform | None = None, loss_fn=cross_entropy, donate: bool = True, jit: bool = True):
    """Build ``step(state, batch) -> (state, metrics)``, jit-compiled with the state donated.

    The model runs in train mode with the key ``model_rng(state.rng)`` (fresh every step) and
    its updated state goes to ``state.model_state``; the optimizer sees ``state.params`` only.

    Args:
      model: a :class:`~jaxcompress.model.Model`, or ``apply_fn(params, x) -> logits``.
      optimizer: an optax optimizer.
      transform: compression transform (default: identity).
      loss_fn: ``loss_fn(outputs, labels) -> scalar``.
      donate: donate the input state's buffers.
      jit: return the jitted function (False for use inside a larger jitted program / vmap).
    """
    transform = transform or identity()
    loss = make_loss_fn(model, transform, loss_fn)

    def step(state: TrainState, batch):
        (loss_value, (logits, model_state)), grads = jax.value_and_grad(loss, has_aux=True)(
            state.params, state.tstate, batch, state.model_state, model_rng(state.rng))
        metrics = {"loss": loss_value}
        if jnp.issubdtype(jnp.result_type(batch[1]), jnp.integer):  # class labels; a regression target has none
            metrics["accuracy"] = accuracy(logits, batch[1])
        return apply_gradients(state, grads, optimizer, transform, model_state), metrics

    if not jit:
        return step
    return jax.jit(step, donate_argnums=(0,) if donate else ())


def make_eval_fn(model: Model | Callable, transform: Transform | None = None, loss_fn=cross_entropy,
                 batch_size: int = 1000):
    """Build ``evaluate(params, tstate, x, y, model_state=None) -> {"loss", "accuracy"}`` over a split.

    The model runs in eval mode (deterministic); ``model_state`` defaults to the model's own
    state (``{}`` for an ``apply_fn``). ``x`` may be a pytree of arrays.
    """
    from jaxcompress.data.batching import num_examples

    transform = transform or identity()
    model = as_model(model)
    loss = make_loss_fn(model, transform, loss_fn, train=False)

    @jax.jit
    def _sums(params, tstate, x, y, model_state):
        value, (logits, _) = loss(params, tstate, (x, y), model_state)
        n = y.shape[0]
        return value * n, accuracy(logits, y) * n

    def evaluate(params, tstate, x, y, model_state=None) -> dict[str, float]:
        n = num_examples(x)
        if n == 0:
            raise ValueError("cannot evaluate on an empty split")
        ms = model.state if model_state is None else model_state
        tot_l, tot_a = 0.0, 0.0
        for i in range(0, n, batch_size):
            part = jax.tree.map(lambda a: a[i : i + batch_size], x)
            batch_loss, a = _sums(params, tstate, part, y[i : i + batch_size], ms)
            tot_l, tot_a = tot_l + float(batch_loss), tot_a + float(a)
        return {"loss": tot_l / n, "accuracy": tot_a / n}

    return evaluate


def fit(model, params, optimizer, x, y, *, steps: int, batch_size: int, seed: int = 0,
        transform: Transform | None = None, tstate=None, loss_fn=cross_entropy, callback=None):
    """Train for ``steps`` steps with deterministic batches; returns ``(state, info)``.

    ``model`` is a :class:`~jaxcompress.model.Model` (``params=None`` takes its own) or an
    ``apply_fn(params, x)``; the trained model state is ``state.model_state``.

    ``callback(step, metrics)`` (optional) is called every step with device metrics.
    ``info`` holds ``{"seconds", "final_loss"}``.
    """
    from jaxcompress.data.batching import BatchIterator, _check_positive

    _check_positive("steps", steps)
    batches = BatchIterator(x, y, batch_size, seed)
    model = as_model(model, params)
    params = model.params if params is None else params
    state = create_train_state(params, optimizer, transform, seed, tstate, model.state)
    step_fn = make_train_step(model, optimizer, transform, loss_fn)
    t0 = time.perf_counter()
    metrics = None
    for s in range(steps):
        state, metrics = step_fn(state, next(batches))
        if callback is not None:
            callback(s, metrics)
    jax.block_until_ready(state.params)
    return state, {"seconds": time.perf_counter() - t0, "final_loss": float(np.asarray(metrics["loss"]))}
