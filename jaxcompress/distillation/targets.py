"""Distillation on stored teacher outputs: train a model to reproduce precomputed targets.

When the teacher's outputs are computed once (sentence embeddings of a calibration set, cached
logits), distillation is plain regression onto them: :func:`fit_targets` draws batches with
replacement (a fixed-seed numpy generator), runs AdamW with warm-up and cosine decay through the
shared :func:`jaxcompress.train.make_train_step` and returns the trained params.

>>> import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
>>> from jaxcompress.model import from_linen
>>> net = nn.Dense(4)
>>> x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
>>> m = from_linen(net, net.init(jax.random.key(0), x))
>>> target = x[:, :4]                                  # the "teacher": the first 4 features
>>> p = fit_targets(m, x, target, steps=200, lr=3e-2, loss_fn=mse_loss)
>>> float(mse_loss(m.apply_fn(p, x), target)) < 0.5 * float(mse_loss(m.apply_fn(m.params, x), target))
True
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np
import optax

from jaxcompress import train
from jaxcompress.distillation.feature_losses import cosine_loss, mse_loss
from jaxcompress.model import Model


def fit_targets(model: Model, inputs, targets, steps: int, *, batch_size: int = 32, lr: float = 2e-4,
                seed: int = 0, loss_fn: Callable = cosine_loss, log: Callable[[str], None] | None = None):
    """Train ``model.params`` so that ``model(inputs[i]) ~ targets[i]``; returns the trained params.

    Args:
      model: a :class:`~jaxcompress.model.Model` (its ``state`` is carried, e.g. frozen parts).
      inputs: an array or a tuple/pytree of arrays with one leading row per example.
      targets: ``(n, ...)`` teacher outputs, one row per example.
      steps, batch_size, lr: AdamW (no weight decay), ``steps // 10`` warm-up steps, cosine decay.
      loss_fn: ``loss_fn(outputs, targets) -> scalar`` (default: ``1 - cos``).
    """
    if steps <= 0 or batch_size <= 0:
        raise ValueError(f"steps and batch_size must be positive, got {steps}, {batch_size}")
    rows = {np.shape(a)[0] for a in jax.tree.leaves(inputs)}
    targets = np.asarray(targets, np.float32)
    if len(rows) != 1 or rows != {len(targets)}:
        raise ValueError(f"inputs have {sorted(rows)} rows but targets have {len(targets)}: one row per example")
    inputs = jax.tree.map(np.asarray, inputs)
    opt = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 10), steps), weight_decay=0.0)
    state = train.create_train_state(model, opt, seed=seed)
    step = train.make_train_step(model, opt, loss_fn=loss_fn)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    for s in range(steps):
        idx = rng.integers(0, len(targets), batch_size)
        state, metrics = step(state, (jax.tree.map(lambda a: a[idx], inputs), targets[idx]))
        if log and (s % max(1, steps // 10) == 0 or s == steps - 1):
            log(f"  distill step {s} loss {float(metrics['loss']):.4f} ({time.time() - t0:.0f}s)")
    return state.params


__all__ = ["fit_targets"]
