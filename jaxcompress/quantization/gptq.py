"""GPTQ (Frantar et al., 2023): one-shot weight quantization with second-order error feedback.

For a linear layer ``y = x @ kernel`` (kernel ``(in, out)``) and calibration inputs ``X``
(``(tokens, in)``), GPTQ minimises ``||X W - X Q||^2`` column by column over the *input*
dimension: with ``H = 2 X^T X / n`` (dampened by ``damp * mean(diag H)``), the upper Cholesky
factor ``U`` of ``H^-1``, it quantizes input row ``i`` of the kernel, and spreads the error
``(w_i - q_i) / U_ii`` over the not-yet-quantized rows ``j > i`` in proportion to ``U_ij``.
Updates are applied lazily in blocks (the paper's batching; the result is the same as the
plain loop because groups never straddle blocks). Dead inputs (``H_ii = 0``) get weight 0.

The grid is the paper's, computed by :mod:`jaxcompress.quantization.grid`: asymmetric min-max per
output channel (``group_size=None``) or per group of ``group_size`` consecutive input rows, whose
range is taken from the *updated* weights when the group starts. :func:`rtn` is plain
round-to-nearest on the same grid, for comparison.

>>> import jax, jax.numpy as jnp
>>> x = jax.random.normal(jax.random.key(0), (64, 8))
>>> w = jax.random.normal(jax.random.key(1), (8, 4))
>>> r = gptq(w, hessian(x), bits=4)
>>> r.kernel.shape, r.codes.dtype.name, r.scale.shape
((8, 4), 'uint8', (1, 4))
>>> bool(jnp.sum((x @ r.kernel - x @ w) ** 2) <= jnp.sum((x @ rtn(w, bits=4).kernel - x @ w) ** 2))
True
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxcompress.quantization import grid
from jaxcompress.quantization.spec import QuantSpec, qrange


class Quantized(NamedTuple):
    """A weight-only quantized kernel.

    Attributes:
      kernel: the dequantized float kernel ``(in, out)`` (what the forward pass uses).
      codes: integer codes ``(in, out)`` as ``uint8`` in ``[0, 2**bits - 1]``.
      scale: float32 ``(groups, out)``; group ``g`` covers input rows ``g*G:(g+1)*G``.
      zero: integer-valued float32 zero points ``(groups, out)``.
    """

    kernel: jax.Array
    codes: jax.Array
    scale: jax.Array
    zero: jax.Array


def hessian(x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """``H = 2 X^T X / n`` over all tokens of ``x`` (``(..., in)``); ``mask`` (``x.shape[:-1]``) drops pads."""
    x2 = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    if mask is None:
        n = jnp.float32(x2.shape[0])
    else:
        if mask.shape != x.shape[:-1]:
            raise ValueError(f"mask shape {mask.shape} must equal x.shape[:-1] = {x.shape[:-1]}")
        m = mask.reshape(-1).astype(jnp.float32)
        x2 = x2 * m[:, None]
        n = jnp.maximum(jnp.sum(m), 1.0)
    return 2.0 * (x2.T @ x2) / n


#: GPTQ's grid is asymmetric min-max; :mod:`.grid` computes it on the signed range [qmin, qmax]
#: and the codes here are shifted to the unsigned range [0, 2**bits - 1] that is stored.
ASYMMETRIC = QuantSpec(bits=8, symmetric=False, granularity="tensor")


def _grid(w_rows, bits):
    """Asymmetric min-max grid over axis 0 of ``w_rows`` (``(rows, out)``) -> scale, unsigned zero ``(out,)``."""
    scale, zp = grid.compute_scale_zero_point(jnp.min(w_rows, axis=0), jnp.max(w_rows, axis=0), ASYMMETRIC, bits)
    return scale, zp - qrange(ASYMMETRIC, bits)[0]


def _code(w, scale, zero, bits):
    """Unsigned codes of ``w`` on the grid ``(scale, zero)``."""
    qmin = qrange(ASYMMETRIC, bits)[0]
    return grid.quantize(w, ASYMMETRIC, scale, zero + qmin, bits) - qmin


def check_args(kernel, group_size, h=None) -> int:
    """Validate a kernel ``(in, out)``, its ``group_size`` and Hessian; returns the rows per group."""
    if kernel.ndim != 2:
        raise ValueError(f"kernel must be 2-D (in, out), got shape {kernel.shape}")
    n_in = kernel.shape[0]
    if group_size is not None and (group_size <= 0 or n_in % group_size):
        raise ValueError(f"group_size={group_size} must be positive and divide the input size {n_in}")
    if h is not None and h.shape != (n_in, n_in):
        raise ValueError(f"hessian shape {h.shape} must be (in, in) = {(n_in, n_in)} for kernel {kernel.shape}")
    return group_size or n_in


def rtn(kernel: jax.Array, bits=4, group_size: int | None = None) -> Quantized:
    """Round-to-nearest on the GPTQ grid (asymmetric min-max per channel or per group)."""
    g = check_args(kernel, group_size)
    n_in, n_out = kernel.shape
    wg = kernel.astype(jnp.float32).reshape(n_in // g, g, n_out)
    scale, zero = jax.vmap(lambda r: _grid(r, bits))(wg)
    codes = _code(wg, scale[:, None], zero[:, None], bits)
    codes = codes.reshape(n_in, n_out)
    return Quantized(dequantize(codes, scale, zero).astype(kernel.dtype), codes.astype(jnp.uint8), scale, zero)


def gptq(kernel: jax.Array, h: jax.Array, bits=4, group_size: int | None = None, damp=0.01,
         block_size: int = 128) -> Quantized:
    """Quantize ``kernel`` (``(in, out)``) with GPTQ given the Hessian ``h`` of its inputs.

    Args:
      kernel: float kernel ``(in, out)``.
      h: ``(in, in)`` Hessian, e.g. :func:`hessian` of the calibration inputs (sum them over batches).
      bits: bit width (may be traced; only the grid changes).
      group_size: rows per quantization group (static; must divide ``in``); None = per channel.
      damp: relative dampening added to the diagonal (may be traced).
      block_size: lazy-update block (static; rounded up to a multiple of ``group_size``).

    Returns:
      A :class:`Quantized` whose ``kernel`` is the dequantized result.

    Raises:
      ValueError: on a non-2-D kernel, a Hessian of the wrong shape or a ``group_size`` that does
        not divide the input size.
    """
    g = check_args(kernel, group_size, h)
    n_in, n_out = kernel.shape
    w = kernel.astype(jnp.float32).T  # (out, in): columns are quantized one by one
    h = h.astype(jnp.float32)
    dead = jnp.diag(h) == 0.0
    h = h + jnp.diag(dead.astype(jnp.float32))
    w = jnp.where(dead[None, :], 0.0, w)
    h = h + jnp.asarray(damp, jnp.float32) * jnp.mean(jnp.diag(h)) * jnp.eye(n_in, dtype=jnp.float32)
    hinv = jnp.linalg.cholesky(jnp.linalg.inv(h)).T  # upper Cholesky factor of H^-1
    per_channel = group_size is None
    scale0, zero0 = _grid(w.T, bits) if per_channel else (jnp.ones(n_out), jnp.zeros(n_out))
    bs = g * max(1, -(-min(block_size, n_in) // g)) if not per_channel else min(block_size, n_in)
    codes, scales, zeros = [], [], []
    for b0 in range(0, n_in, bs):
        b1 = min(b0 + bs, n_in)
        w1, u1 = w[:, b0:b1], hinv[b0:b1, b0:b1]

        def body(i, carry):
            w1, q1, e1, sc, zp, s_all, z_all = carry
            if not per_channel:
                start = jax.lax.dynamic_slice(w1, (0, i), (n_out, g))
                ns, nz = _grid(start.T, bits)
                new_group = (i % g) == 0
                sc, zp = jnp.where(new_group, ns, sc), jnp.where(new_group, nz, zp)
                s_all = jax.lax.dynamic_update_slice(s_all, sc[None], (i // g, 0))
                z_all = jax.lax.dynamic_update_slice(z_all, zp[None], (i // g, 0))
            col = w1[:, i]
            q = _code(col, sc, zp, bits)
            err = (col - sc * (q - zp)) / u1[i, i]
            w1 = w1 - err[:, None] * u1[i][None, :]
            return (w1, q1.at[:, i].set(q), e1.at[:, i].set(err), sc, zp, s_all, z_all)

        nb = b1 - b0
        ng = max(1, nb // g)
        init = (w1, jnp.zeros_like(w1), jnp.zeros_like(w1), scale0, zero0,
                jnp.zeros((ng, n_out)), jnp.zeros((ng, n_out)))
        _, q1, e1, _, _, s_all, z_all = jax.lax.fori_loop(0, nb, body, init)
        codes.append(q1)
        if not per_channel:
            scales.append(s_all)
            zeros.append(z_all)
        w = w.at[:, b1:].add(-(e1 @ hinv[b0:b1, b1:]))
    q = jnp.concatenate(codes, axis=1).T  # (in, out)
    scale = scale0[None] if per_channel else jnp.concatenate(scales, 0)
    zero = zero0[None] if per_channel else jnp.concatenate(zeros, 0)
    return Quantized(dequantize(q, scale, zero).astype(kernel.dtype), q.astype(jnp.uint8), scale, zero)


def dequantize(codes: jax.Array, scale: jax.Array, zero: jax.Array) -> jax.Array:
    """The float kernel ``scale * (codes - zero)`` of ``codes`` ``(in, out)`` on a ``(groups, out)`` grid."""
    rows = jnp.arange(codes.shape[0]) // (codes.shape[0] // scale.shape[0])
    return scale[rows] * (codes.astype(jnp.float32) - zero[rows])


def pack_int4(codes: jax.Array) -> jax.Array:
    """Pack ``uint8`` codes in ``[0, 15]`` two per byte along the flattened array (pads one nibble if odd)."""
    flat = codes.reshape(-1).astype(jnp.uint8)
    flat = jnp.concatenate([flat, jnp.zeros(flat.size % 2, jnp.uint8)])
    return (flat[0::2] | (flat[1::2] << 4)).astype(jnp.uint8)


def unpack_int4(packed: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Inverse of :func:`pack_int4`."""
    lo, hi = packed & 0xF, packed >> 4
    n = 1
    for s in shape:
        n *= s
    return jnp.stack([lo, hi], 1).reshape(-1)[:n].reshape(shape)


def artifact_bytes(q: Quantized, bits: int = 4) -> int:
    """Bytes of the stored artifact: packed ``bits``-bit codes + float32 scales + uint8 zero points."""
    return int(-(-q.codes.size * bits // 8) + q.scale.size * 4 + q.zero.size * 1)
