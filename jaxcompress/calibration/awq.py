"""AWQ (Lin et al., 2024): activation-aware weight quantization by per-input-channel scaling.

Input channels with large activations matter most. AWQ scales them up before quantizing and
back down after, which is exact in float (``x W = (x / s) (diag(s) W)``) but shrinks their
relative rounding error. For ``y = x @ w`` (canonical kernel ``(K, N)``) and the mean absolute
activation ``x_absmean`` ``(K,)`` of each input, it searches one exponent ``alpha``::

    s(alpha) = c / sqrt(max(c) * min(c)),   c = max(x_absmean^alpha, 1e-4),
    W'(alpha) = Q(diag(s) W) / s[:, None],     alpha in {i / n_grid : 0 <= i < n_grid},

with ``Q`` round-to-nearest on :func:`.gptq.grid_spec`, and keeps the ``alpha`` of least output
error. The error is measured without storing activations, from ``H = 2 X^T X / n``::

    ||X (W - W')||^2 = n/2 tr(dW^T H dW),   dW = W - W'.

``alpha = 0`` gives ``s = 1``, plain RTN, so AWQ's error is never above RTN's (ties pick the
smaller ``alpha``). The effective float kernel is ``W'``; stored, it is the codes of
``diag(s) W`` with ``in_scale = 1 / s`` applied to the inputs.

>>> import jax, jax.numpy as jnp
>>> from jaxcompress.calibration.gptq import hessian, rtn
>>> x = jax.random.normal(jax.random.key(0), (64, 8)) * jnp.array([[8.0, 1, 1, 1, 1, 1, 1, 1]])
>>> w = jax.random.normal(jax.random.key(1), (8, 4))
>>> r, s = awq(w, hessian(x), jnp.mean(jnp.abs(x), 0), bits=3, group_size=None)
>>> s.shape, bool(s[0] > s[1])
((8,), True)
>>> err = lambda k: float(jnp.sum((x @ (k - w)) ** 2))
>>> err(r.kernel) < err(rtn(w, bits=3).kernel)
True
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcompress.calibration import gptq as G


def scales(x_absmean: jax.Array, alpha) -> jax.Array:
    """``c / sqrt(max(c) min(c))`` with ``c = max(x_absmean^alpha, 1e-4)`` (``alpha`` may be traced)."""
    c = jnp.maximum(jnp.power(x_absmean.astype(jnp.float32), jnp.asarray(alpha, jnp.float32)), 1e-4)
    return c / jnp.sqrt(jnp.max(c) * jnp.min(c))


def output_error(dw: jax.Array, h: jax.Array) -> jax.Array:
    """``tr(dW^T H dW)``, i.e. ``2 / n ||X dW||^2``, for ``dW`` ``(K, N)`` and ``H`` ``(K, K)``."""
    return jnp.sum(dw * (h.astype(jnp.float32) @ dw))


def _check(w, h, x_absmean, group_size, n_grid):
    G.check_args(w, group_size, h)
    if x_absmean.shape != (w.shape[0],):
        raise ValueError(f"x_absmean has shape {x_absmean.shape}, must be (K,) = ({w.shape[0]},) for kernel w {w.shape}")
    if not isinstance(n_grid, int) or n_grid < 1:
        raise ValueError(f"n_grid={n_grid!r} must be a positive int")


def search_scale(w: jax.Array, h: jax.Array, x_absmean: jax.Array, bits=4, group_size: int | None = 128,
                 n_grid: int = 20, symmetric: bool = False) -> jax.Array:
    """The AWQ input scale ``s`` ``(K,)`` of least output error over ``alpha = i / n_grid``.

    Args:
      w: float kernel ``(K, N)``.
      h: ``(K, K)`` Hessian of the inputs (:func:`.gptq.hessian`).
      x_absmean: mean ``|x|`` per input channel ``(K,)``.
      bits: 2..8 (may be traced).
      group_size: quantization group (static; must divide ``K``), None = per channel.
      n_grid: number of ``alpha`` candidates (static).
      symmetric: symmetric grid.

    Raises:
      ValueError: bad shapes, ``group_size``, ``bits`` or ``n_grid``.
    """
    _check(w, h, x_absmean, group_size, n_grid)
    w32 = w.astype(jnp.float32)

    def loss(alpha):
        s = scales(x_absmean, alpha)
        return output_error(w32 - G.rtn(w32 * s[:, None], bits, group_size, symmetric).kernel / s[:, None], h)

    alphas = jnp.arange(n_grid, dtype=jnp.float32) / n_grid
    return scales(x_absmean, alphas[jnp.argmin(jax.lax.map(loss, alphas))])


def awq(w: jax.Array, h: jax.Array, x_absmean: jax.Array, bits=4, group_size: int | None = 128, n_grid: int = 20,
        symmetric: bool = False) -> tuple[G.Solution, jax.Array]:
    """AWQ: :func:`search_scale`, then round-to-nearest of ``diag(s) W``.

    Returns:
      ``(solution, s)``: ``solution.kernel`` is the effective float kernel ``W' = Q(diag(s) W) / s``
      (in ``w.dtype``), ``codes`` / ``scale`` / ``zero`` quantize ``diag(s) W`` (``mask`` None);
      the inputs of the stored weight are scaled by ``in_scale = 1 / s``.
    """
    s = search_scale(w, h, x_absmean, bits, group_size, n_grid, symmetric)
    r = G.rtn(w.astype(jnp.float32) * s[:, None], bits, group_size, symmetric)
    return r._replace(kernel=(r.kernel / s[:, None]).astype(w.dtype)), s
