"""Calibration: run N batches through a float model and fix static activation ranges.

>>> import jax.numpy as jnp
>>> from jaxcompress import models
>>> m = models.create("mlp", (4,), 3, features=(5,))
>>> ranges = calibrate(m, m.params, [jnp.ones((2, 4)), -jnp.ones((2, 4))])
>>> [float(v) for v in ranges["Dense_0"][0].ravel()], [float(v) for v in ranges["Dense_0"][1].ravel()]
([-1.0], [1.0])
"""

from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress.quantization.activations import DEFAULT_ACT_SPEC, capture_inputs
from jaxcompress.quantization.observers import make_observer
from jaxcompress.quantization.spec import QuantSpec


def calibrate(model, params, batches: Iterable, spec: QuantSpec = DEFAULT_ACT_SPEC, observer: str = "minmax",
              num_batches: int | None = None, **observer_kwargs) -> dict:
    """Static per-layer input ranges ``{layer: (min, max)}`` of a model's Dense/Conv/Einsum layers.

    Args:
      model: a :class:`jaxcompress.model.Model` (run in eval mode with its state), a
        zoo model, an ``nnx.Module`` or a linen ``apply_fn``.
      params: the (float or weight-quantized) params to run with.
      batches: an iterable of inputs ``x`` or ``(x, y)`` tuples.
      spec: the activation quantizer the ranges are for (granularity decides their shape).
      observer: one of ``minmax``, ``moving_average``, ``percentile``, ``mse``, ``entropy``.
      num_batches: use at most this many batches (default: all).
      **observer_kwargs: forwarded to :func:`..observers.make_observer`.

    Raises:
      ValueError: if no batch was seen, or a layer's input holds NaN/inf (the message names
        the layer and the batch).
    """
    if num_batches is not None and (not isinstance(num_batches, int) or num_batches <= 0):
        raise ValueError(f"num_batches must be a positive int, got {num_batches!r}")
    capture = jax.jit(capture_inputs(model))

    @jax.jit
    def finite(inputs):
        return {k: jnp.all(jnp.isfinite(v)) for k, v in inputs.items()}

    obs, states, seen = {}, {}, 0
    for i, batch in enumerate(batches):
        if num_batches is not None and i >= num_batches:
            break
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not np.all(np.isfinite(np.asarray(x))):
            raise ValueError(f"calibration batch {i} contains NaN/inf in the model input "
                             f"(first layer {_first(capture, params, x)!r})")
        _, inputs = capture(params, x)
        ok = jax.device_get(finite(inputs))
        bad = [k for k, v in ok.items() if not v]
        if bad:
            raise ValueError(f"calibration batch {i}: NaN/inf in the input of layer(s) {bad}")
        for layer, a in inputs.items():
            if layer not in obs:
                spec.check_shape(a.shape, f"input of layer {layer!r}")
                obs[layer] = make_observer(observer, spec, **observer_kwargs)
                states[layer] = obs[layer].init()
            states[layer] = obs[layer].update(states[layer], a)
        seen += 1
    if seen == 0:
        raise ValueError("calibrate needs at least one batch; got zero batches")
    if not obs:
        raise ValueError("the model has no Dense/Conv/Einsum layer to calibrate")
    return {layer: tuple(obs[layer].result(states[layer])) for layer in obs}


def _first(capture, params, x) -> str:
    _, inputs = jax.eval_shape(capture, params, jnp.zeros(np.shape(x), jnp.float32))
    return next(iter(inputs), "?")


def calibration_batches(x, batch_size: int, num_batches: int):
    """The first ``num_batches`` consecutive slices of ``x`` (deterministic calibration data)."""
    if num_batches <= 0 or batch_size <= 0:
        raise ValueError(f"batch_size and num_batches must be positive, got {batch_size}, {num_batches}")
    n = min(num_batches, len(x) // batch_size)
    if n == 0:
        raise ValueError(f"calibration data ({len(x)} examples) is smaller than one batch of {batch_size}")
    return [x[i * batch_size : (i + 1) * batch_size] for i in range(n)]
