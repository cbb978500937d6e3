"""Observers: choose the clipping range ``(min, max)`` that a quantizer's grid covers.

Range functions (jit-able, one range per scale, shape ``spec.scale_shape(x.shape)``):

* :func:`minmax_range` - the data's min and max;
* :func:`percentile_range` - a percentile of ``|x|`` (symmetric) or both tails;
* :func:`mse_range` - search over clipping ratios minimising the quantization MSE;
* :func:`entropy_range` - TensorRT-style KL divergence between the clipped histogram and
  its quantized version.

:class:`Observer` accumulates statistics over calibration batches: ``minmax`` and
``moving_average`` keep running statistics; ``percentile``, ``mse`` and ``entropy`` keep a
strided subsample of every batch and solve on their concatenation.

>>> import jax.numpy as jnp
>>> from jaxcompress.quantization.spec import QuantSpec
>>> spec = QuantSpec(bits=4, granularity="tensor")
>>> x = jnp.concatenate([jnp.linspace(-1, 1, 999), jnp.array([4.0])])
>>> float(minmax_range(x, spec)[1][0]), float(mse_range(x, spec)[1][0]) < 2
(4.0, True)
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxcompress.quantization import grid
from jaxcompress.quantization.spec import QuantSpec, qrange

OBSERVERS = ("minmax", "moving_average", "percentile", "mse", "entropy")


def to_rows(x, spec: QuantSpec) -> jax.Array:
    """``[C, K]`` view: one row per scale, the entries that share it."""
    xg = grid.grouped(x, spec).astype(jnp.float32)
    red = spec.reduce_axes(x.shape)
    keep = [a for a in range(xg.ndim) if a not in red]
    xt = jnp.transpose(xg, keep + list(red))
    c = 1
    for a in keep:
        c *= xg.shape[a]
    return xt.reshape(c, -1)


def _from_rows(v, x_shape, spec: QuantSpec):
    return v.reshape(spec.scale_shape(x_shape))


def minmax_range(x, spec: QuantSpec, bits=None):
    """Min and max of ``x`` per scale."""
    del bits
    return grid.minmax(x, spec)


@functools.partial(jax.jit, static_argnames=("spec", "percentile"))
def percentile_range(x, spec: QuantSpec, bits=None, percentile: float = 99.99):
    """Clip at a percentile: of ``|x|`` if symmetric, of each tail otherwise."""
    del bits
    rows = to_rows(x, spec)
    if spec.symmetric:
        a = jnp.percentile(jnp.abs(rows), percentile, axis=1)
        lo, hi = -a, a
    else:
        lo = jnp.percentile(rows, 100.0 - percentile, axis=1)
        hi = jnp.percentile(rows, percentile, axis=1)
    return _from_rows(lo, x.shape, spec), _from_rows(hi, x.shape, spec)


def _row_error(rows, lo, hi, spec, bits):
    qmin, qmax = qrange(spec, bits)
    s, z = grid.compute_scale_zero_point(lo[:, None], hi[:, None], spec, bits)
    q = jnp.clip(jnp.floor(rows / s + z + 0.5), qmin, qmax)
    return jnp.sum(jnp.square((q - z) * s - rows), axis=1)


@functools.partial(jax.jit, static_argnames=("spec", "num_candidates", "min_ratio"))
def mse_range(x, spec: QuantSpec, bits=None, num_candidates: int = 64, min_ratio: float = 0.05):
    """Shrink ``[min, max]`` by the ratio (of ``num_candidates`` in ``[min_ratio, 1]``) with least MSE."""
    rows = to_rows(x, spec)
    lo0, hi0 = rows.min(1), rows.max(1)
    ratios = jnp.linspace(min_ratio, 1.0, num_candidates, dtype=jnp.float32)
    errs = jax.lax.map(lambda r: _row_error(rows, lo0 * r, hi0 * r, spec, bits), ratios)  # [R, C]
    best = ratios[jnp.argmin(errs, axis=0)]
    return _from_rows(lo0 * best, x.shape, spec), _from_rows(hi0 * best, x.shape, spec)


def _kl_for_threshold(hist, i, nq):
    nb = hist.shape[0]
    j = jnp.arange(nb)
    inside = j < i
    outliers = jnp.sum(jnp.where(inside, 0.0, hist))
    p = jnp.where(inside, hist, 0.0) + jnp.where(j == i - 1, outliers, 0.0)
    level = jnp.where(inside, (j * nq) // i, nq)
    src = jnp.where(inside, hist, 0.0)
    lsum = jax.ops.segment_sum(src, level, num_segments=nq + 1)
    lcnt = jax.ops.segment_sum(jnp.where(inside & (hist > 0), 1.0, 0.0), level, num_segments=nq + 1)
    q = jnp.where(inside & (hist > 0), lsum[level] / jnp.maximum(lcnt[level], 1.0), 0.0)
    p = p / jnp.maximum(p.sum(), 1e-12)
    q = q / jnp.maximum(q.sum(), 1e-12)
    terms = jnp.where(p > 0, p * (jnp.log(p + 1e-12) - jnp.log(q + 1e-12)), 0.0)
    return terms.sum()


@functools.partial(jax.jit, static_argnames=("spec", "num_bins", "num_candidates"))
def entropy_range(x, spec: QuantSpec, bits=None, num_bins: int = 1024, num_candidates: int = 64):
    """KL calibration: threshold on ``|x|`` minimising ``KL(P || Q)`` (clipped vs quantized histogram)."""
    rows = to_rows(x, spec)
    del bits  # the number of levels is structural here: spec.bits
    nlevels = int(2 ** (spec.bits - 1)) if spec.symmetric else int(2**spec.bits)
    amax = jnp.max(jnp.abs(rows), axis=1)
    amax_safe = jnp.where(amax > 0, amax, 1.0)
    idx = jnp.clip(jnp.floor(jnp.abs(rows) / amax_safe[:, None] * num_bins), 0, num_bins - 1).astype(jnp.int32)
    hist = jax.vmap(lambda ix: jnp.zeros(num_bins, jnp.float32).at[ix].add(1.0))(idx)
    start = min(nlevels, num_bins)
    cands = jnp.unique(jnp.linspace(start, num_bins, num_candidates).astype(jnp.int32), size=num_candidates,
                       fill_value=num_bins)
    kl = jax.vmap(lambda h: jax.vmap(lambda i: _kl_for_threshold(h, i, nlevels))(cands))(hist)  # [C, R]
    t = cands[jnp.argmin(kl, axis=1)].astype(jnp.float32) / num_bins * amax
    lo = jnp.maximum(rows.min(1), -t)
    hi = jnp.minimum(rows.max(1), t)
    return _from_rows(lo, x.shape, spec), _from_rows(hi, x.shape, spec)


RANGE_FNS: dict[str, Callable] = {"minmax": minmax_range, "percentile": percentile_range,
                                  "mse": mse_range, "entropy": entropy_range}


class Observer(NamedTuple):
    """Accumulates calibration statistics: ``state = update(state, x)``, ``result(state) -> (min, max)``."""

    name: str
    init: Callable[[], Any]
    update: Callable[[Any, jax.Array], Any]
    result: Callable[[Any], tuple[jax.Array, jax.Array]]


def make_observer(name: str, spec: QuantSpec, bits=None, momentum: float = 0.9, max_samples: int = 65536,
                  **kwargs) -> Observer:
    """Build a calibration observer by name (one of ``OBSERVERS``) for a given spec."""
    if name not in OBSERVERS:
        raise ValueError(f"unknown observer {name!r}; valid: {list(OBSERVERS)}")
    if name in ("minmax", "moving_average"):
        def update(state, x):
            lo, hi = grid.minmax(x, spec)
            if state is None:
                return (lo, hi)
            if name == "minmax":
                return (jnp.minimum(state[0], lo), jnp.maximum(state[1], hi))
            return (momentum * state[0] + (1 - momentum) * lo, momentum * state[1] + (1 - momentum) * hi)

        return Observer(name, lambda: None, update, lambda s: s)

    fn = RANGE_FNS[name]

    def update_samples(state, x):
        if spec.granularity != "tensor":
            return (*state, x)
        flat = x.reshape(-1)
        stride = max(1, flat.shape[0] // max_samples)
        width = x.shape[-1] if x.ndim else 1
        while math.gcd(stride, width) != 1:  # a stride sharing a factor with the row width skips channels
            stride += 1
        return (*state, flat[::stride])

    def result(state):
        if spec.granularity != "tensor":
            return fn(jnp.concatenate(state, axis=0), spec, bits, **kwargs)
        return fn(jnp.concatenate(state), spec, bits, **kwargs)

    return Observer(name, lambda: (), update_samples, result)
