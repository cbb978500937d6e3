"""Fake quantization with a straight-through estimator, and learned step size (LSQ).

``fake_quant`` returns ``scale * (q - zero_point)`` in float; its gradient
(``jax.custom_vjp``) is the identity where ``x`` lies inside the clipping range
``[scale * (qmin - zp), scale * (qmax - zp)]`` and zero outside. Scale and zero point get
no gradient (they come from observers). ``lsq_fake_quant`` instead learns the scale
(Esser et al. 2020, "Learned Step Size Quantization") with gradient scale
``g = 1 / sqrt(N * Qp)`` (``N`` entries per scale, ``Qp = qmax``).

>>> import jax, jax.numpy as jnp
>>> from jaxcompress.quantization.spec import QuantSpec
>>> spec = QuantSpec(bits=4, granularity="tensor")
>>> x = jnp.array([0.26, 0.9, -2.0])
>>> [round(v, 4) for v in fake_quant(x, spec, jnp.full((1,), 0.1), jnp.zeros((1,))).tolist()]
[0.3, 0.7, -0.8]
>>> jax.grad(lambda x: fake_quant(x, spec, jnp.full((1,), 0.1), jnp.zeros((1,))).sum())(x).tolist()
[1.0, 0.0, 0.0]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcompress.quantization import grid
from jaxcompress.quantization.spec import QuantSpec, qrange


@jax.custom_vjp
def _ste(xg, scale, zp, qmin, qmax, noise):
    v = xg / scale + zp
    q = jnp.clip(jnp.floor(v + noise), qmin, qmax)
    return (q - zp) * scale


def _ste_fwd(xg, scale, zp, qmin, qmax, noise):
    v = xg / scale + zp
    inside = (v >= qmin) & (v <= qmax)
    q = jnp.clip(jnp.floor(v + noise), qmin, qmax)
    return (q - zp) * scale, (inside, scale, zp, qmin, qmax, noise)


def _ste_bwd(res, g):
    inside, scale, zp, qmin, qmax, noise = res
    z = jnp.zeros_like
    return (jnp.where(inside, g, jnp.zeros_like(g)), z(scale), z(zp), z(qmin), z(qmax), z(noise))


_ste.defvjp(_ste_fwd, _ste_bwd)


def _noise(shape, spec: QuantSpec, key):
    if spec.rounding == "stochastic":
        if key is None:
            raise ValueError("rounding='stochastic' needs a PRNG key (key=...)")
        return jax.random.uniform(key, shape, jnp.float32)
    return jnp.full((), 0.5, jnp.float32)


def fake_quant(x, spec: QuantSpec, scale, zero_point, bits=None, key=None) -> jax.Array:
    """Quantize-dequantize ``x`` with a straight-through gradient.

    Args:
      x: float array.
      spec: the quantizer (granularity decides the shape of ``scale``).
      scale, zero_point: arrays of shape ``spec.scale_shape(x.shape)`` (or scalars).
      bits: optional traced bit width (overrides ``spec.bits`` without recompiling).
      key: PRNG key, needed for stochastic rounding.

    Returns:
      An array like ``x`` whose entries lie on the grid ``scale * (q - zero_point)``.
    """
    qmin, qmax = qrange(spec, bits)
    xg = grid.grouped(x, spec).astype(jnp.float32)
    scale = jax.lax.stop_gradient(jnp.asarray(scale, jnp.float32))
    zp = jax.lax.stop_gradient(jnp.asarray(zero_point, jnp.float32))
    out = _ste(xg, scale, zp, qmin, qmax, _noise(xg.shape, spec, key))
    return out.reshape(x.shape).astype(x.dtype)


def fake_quant_dynamic(x, spec: QuantSpec, bits=None, key=None) -> jax.Array:
    """:func:`fake_quant` with min/max scales computed from ``x`` itself (no gradient through them)."""
    lo, hi = grid.minmax(jax.lax.stop_gradient(x), spec)
    scale, zp = grid.compute_scale_zero_point(lo, hi, spec, bits)
    return fake_quant(x, spec, scale, zp, bits, key)


def _scale_grad(x, g):
    """Value ``x``, gradient multiplied by ``g``."""
    y = x * g
    return jax.lax.stop_gradient(x - y) + y


def _round_ste(v):
    return v + jax.lax.stop_gradient(jnp.floor(v + 0.5) - v)


def lsq_grad_scale(shape, spec: QuantSpec, bits=None):
    """``g = 1 / sqrt(N * Qp)`` of LSQ for an array of ``shape``."""
    _, qmax = qrange(spec, bits)
    return jax.lax.rsqrt(jnp.float32(grid.group_count(shape, spec)) * qmax)


def lsq_fake_quant(x, spec: QuantSpec, scale, zero_point=None, bits=None) -> jax.Array:
    """LSQ fake quantization: gradients flow to ``x`` (STE) and to ``scale``.

    ``d out / d scale`` is ``round(v) - v`` inside the range, ``qmin - zp`` below and
    ``qmax - zp`` above (``v = x / scale + zp``), times ``g = 1/sqrt(N * Qp)``. The zero point
    (asymmetric specs) is kept fixed.

    Args:
      x: float array.
      spec: quantizer; ``rounding`` must be ``"nearest"``.
      scale: trainable positive array of shape ``spec.scale_shape(x.shape)``.
      zero_point: fixed zero point (default 0).
      bits: optional traced bit width.
    """
    if spec.rounding != "nearest":
        raise ValueError("lsq_fake_quant supports rounding='nearest' only")
    qmin, qmax = qrange(spec, bits)
    zp = jnp.zeros((), jnp.float32) if zero_point is None else jax.lax.stop_gradient(zero_point)
    s = _scale_grad(jnp.asarray(scale, jnp.float32), lsq_grad_scale(x.shape, spec, bits))
    xg = grid.grouped(x, spec).astype(jnp.float32)
    v = jnp.clip(xg / s + zp, qmin, qmax)
    out = (_round_ste(v) - zp) * s
    return out.reshape(x.shape).astype(x.dtype)
