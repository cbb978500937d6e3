"""The integer grid: scales and zero points from ranges, quantize and dequantize.

Plain functions (no custom gradients) shared by fake quantization, observers, conversion,
the integer path and GPTQ. ``x`` keeps its own shape; ``scale`` and ``zero_point`` have
``spec.scale_shape(x.shape)`` (keepdims over the grouped view, see :mod:`.spec`).

Rounding is ``floor(v + 0.5)`` (ties up) for ``"nearest"`` and ``floor(v + u)``,
``u ~ U[0, 1)`` for ``"stochastic"`` - the same everywhere, so every path agrees bit for bit.

>>> import jax.numpy as jnp
>>> from jaxcompress.quantization.spec import QuantSpec
>>> spec = QuantSpec(bits=8, granularity="tensor")
>>> x = jnp.array([[-1.0, 0.5], [0.25, 1.0]])
>>> s, z = compute_scale_zero_point(*minmax(x, spec), spec)
>>> quantize(x, spec, s, z).tolist()
[[-127.0, 64.0], [32.0, 127.0]]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcompress.quantization.spec import QuantSpec, qrange

TINY = 1e-30


def grouped(x: jax.Array, spec: QuantSpec) -> jax.Array:
    """``x`` reshaped to the grouped view of ``spec`` (a no-op unless granularity is ``"group"``)."""
    return x.reshape(spec.grouped_shape(x.shape))


def minmax(x: jax.Array, spec: QuantSpec):
    """Per-scale ``(min, max)`` of ``x`` (float32, shape ``spec.scale_shape(x.shape)``)."""
    xg = grouped(x, spec).astype(jnp.float32)
    axes = spec.reduce_axes(x.shape)
    return xg.min(axes, keepdims=True), xg.max(axes, keepdims=True)


def compute_scale_zero_point(x_min, x_max, spec: QuantSpec, bits=None):
    """Scale and zero point whose grid covers ``[x_min, x_max]``.

    Symmetric: ``scale = max(|x_min|, |x_max|) / qmax``, zero point 0. Asymmetric: the
    range is widened to include 0 (so 0 is exact) and ``zero_point`` is an integer.
    A zero range (all-zero channel) gives ``scale = 1`` - never NaN or inf.

    Args:
      x_min, x_max: arrays broadcastable to each other.
      spec: the quantizer.
      bits: optional (traced) bit width overriding ``spec.bits``.

    Returns:
      ``(scale, zero_point)`` as float32 arrays (zero point integer-valued).
    """
    qmin, qmax = qrange(spec, bits)
    x_min = jnp.asarray(x_min, jnp.float32)
    x_max = jnp.asarray(x_max, jnp.float32)
    if spec.symmetric:
        amax = jnp.maximum(jnp.abs(x_min), jnp.abs(x_max))
        scale = amax / qmax
        scale = jnp.where(scale > TINY, scale, jnp.ones_like(scale))
        return scale, jnp.zeros_like(scale)
    lo = jnp.minimum(x_min, 0.0)
    hi = jnp.maximum(x_max, 0.0)
    scale = (hi - lo) / (qmax - qmin)
    scale = jnp.where(scale > TINY, scale, jnp.ones_like(scale))
    zp = jnp.clip(jnp.floor(qmin - lo / scale + 0.5), qmin, qmax)
    return scale, zp


def _round(v, spec: QuantSpec, key):
    if spec.rounding == "stochastic":
        if key is None:
            raise ValueError("rounding='stochastic' needs a PRNG key (key=...)")
        return jnp.floor(v + jax.random.uniform(key, v.shape, jnp.float32))
    return jnp.floor(v + 0.5)


def quantize(x, spec: QuantSpec, scale, zero_point, bits=None, key=None) -> jax.Array:
    """Integer codes ``clip(round(x / scale) + zero_point, qmin, qmax)`` (float32, shape of ``x``)."""
    qmin, qmax = qrange(spec, bits)
    zero_point = jnp.asarray(zero_point).astype(jnp.float32)
    v = grouped(x, spec).astype(jnp.float32) / scale + zero_point
    q = jnp.clip(_round(v, spec, key), qmin, qmax)
    return q.reshape(x.shape)


def dequantize(q, spec: QuantSpec, scale, zero_point, dtype=jnp.float32) -> jax.Array:
    """``scale * (q - zero_point)`` in the shape of ``q``."""
    qg = grouped(q, spec).astype(jnp.float32)
    zero_point = jnp.asarray(zero_point).astype(jnp.float32)
    return ((qg - zero_point) * scale).reshape(q.shape).astype(dtype)


def quantize_dequantize(x, spec: QuantSpec, scale, zero_point, bits=None, key=None) -> jax.Array:
    """``dequantize(quantize(x))`` without gradients through it (see :func:`.fake.fake_quant`)."""
    return dequantize(quantize(x, spec, scale, zero_point, bits, key), spec, scale, zero_point, x.dtype)


def group_count(shape, spec: QuantSpec) -> int:
    """How many entries of an array of ``shape`` share one scale."""
    g = spec.grouped_shape(shape)
    n = 1
    for a in spec.reduce_axes(shape):
        n *= g[a]
    return n
