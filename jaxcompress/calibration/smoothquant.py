"""SmoothQuant (Xiao et al., 2023): migrate activation outliers into the weights for W8A8.

A few input channels of LLM activations are orders of magnitude larger than the rest, so one
per-tensor activation scale wastes the int8 grid on them. SmoothQuant divides each input channel
by a factor ``s_j`` and multiplies the matching weight row by it, exact in float::

    Y = X W = (X diag(s)^-1) (diag(s) W),
    s_j = max|X_j|^alpha / max_o |W_jo|^(1 - alpha)     (clamped to >= 1e-5),

with the migration strength ``alpha`` (0.5 balances the two ranges). Channels whose activation
or weight range is 0 keep ``s_j = 1``. The smoothed activations ``X / s`` are then quantized with
one static per-tensor symmetric scale ``max_j(max|X_j| / s_j) / qmax`` (:func:`static_act_scale`)
and ``diag(s) W`` with any weight grid.

>>> import jax.numpy as jnp
>>> x_absmax = jnp.array([100.0, 1.0, 1.0])
>>> w = jnp.ones((3, 2))
>>> s = smooth_factors(x_absmax, w, alpha=0.5)
>>> s.tolist()
[10.0, 1.0, 1.0]
>>> (x_absmax / s).tolist(), round(float(static_act_scale(x_absmax, s)), 5)
([10.0, 1.0, 1.0], 0.07874)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcompress.quantization import grid
from jaxcompress.quantization.spec import QuantSpec, check_bits


def smooth_factors(x_absmax: jax.Array, w: jax.Array, alpha=0.5) -> jax.Array:
    """Per-input-channel smoothing factors ``s`` ``(K,)`` for a kernel ``w`` ``(K, N)``.

    Args:
      x_absmax: ``max |X_j|`` over the calibration tokens, ``(K,)``.
      w: float kernel ``(K, N)``.
      alpha: migration strength in ``[0, 1]`` (may be traced).

    Returns:
      ``s`` with ``s_j = max(x_absmax_j^alpha / max_o |w_jo|^(1 - alpha), 1e-5)``, and 1 where
      ``x_absmax_j`` or ``max_o |w_jo|`` is 0. Smoothed: ``w' = s[:, None] * w``, ``x' = x / s``.

    Raises:
      ValueError: if ``w`` is not 2-D or ``x_absmax`` is not ``(K,)``.
    """
    if w.ndim != 2 or x_absmax.shape != (w.shape[0],):
        raise ValueError(f"x_absmax has shape {x_absmax.shape}, must be (K,) for a 2-D kernel w (K, N); "
                         f"w has shape {w.shape}")
    a = jnp.asarray(alpha, jnp.float32)
    xm = x_absmax.astype(jnp.float32)
    wm = jnp.max(jnp.abs(w.astype(jnp.float32)), axis=1)
    live = (xm > 0) & (wm > 0)
    s = jnp.power(jnp.where(live, xm, 1.0), a) / jnp.power(jnp.where(live, wm, 1.0), 1.0 - a)
    return jnp.where(live, jnp.maximum(s, 1e-5), 1.0)


def static_act_scale(x_absmax: jax.Array, s: jax.Array, bits: int = 8) -> jax.Array:
    """Per-tensor symmetric narrow-range scale ``max_j(x_absmax_j / s_j) / qmax`` of the smoothed inputs.

    ``qmax = 2^(bits - 1) - 1`` (127 for int8); an all-zero range gives scale 1.
    """
    check_bits(bits)
    spec = QuantSpec(bits=bits, symmetric=True, granularity="tensor", narrow_range=True)
    amax = jnp.max(x_absmax.astype(jnp.float32) / s.astype(jnp.float32))
    return grid.compute_scale_zero_point(-amax, amax, spec)[0]
