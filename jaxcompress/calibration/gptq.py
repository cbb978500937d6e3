"""GPTQ (Frantar et al., 2023): one-shot weight quantization with second-order error feedback.

For a linear layer ``y = x @ w`` with the canonical kernel ``w`` ``(K, N)`` (rows: the ``K``
contracted inputs, columns: the ``N`` outputs) and calibration inputs ``X`` ``(n, K)``, GPTQ
minimises the output error ``||X W - X Q||^2 = n/2 tr((W - Q)^T H (W - Q))`` with
``H = 2 X^T X / n`` (:func:`hessian`), dampened by ``damp * mean(diag H)``. With ``U`` the upper
Cholesky factor of ``H^-1`` it quantizes input row ``i`` and spreads the error over the rows not
yet quantized (the Optimal Brain Surgeon update, in Cholesky form)::

    q_i = Q(w_i),   e_i = (w_i - q_i) / U_ii,   w_j <- w_j - U_ij e_i   for j > i.

Updates are applied lazily in blocks of ``block_size`` rows (the paper's batching; the result is
the plain loop's because groups never straddle blocks). Dead inputs (``H_ii = 0``) get weight 0.

``act_order=True`` processes the inputs in order of descending ``diag(H)`` (the reference's
``actorder``). With groups it uses *static groups*: each group's grid is computed before the loop
from the original weights of its ``group_size`` consecutive original rows, so the stored groups
stay consecutive rows. Without ``act_order`` a group's grid is taken from the *updated* weights
when the group starts.

The grid is :func:`grid_spec`: min-max per output channel (``group_size=None``) or per group of
``group_size`` consecutive input rows, asymmetric by default, computed by
:mod:`jaxcompress.quantization.grid` with its signed codes. :func:`rtn` is plain
round-to-nearest on the same grid, for comparison. The shared error-feedback loop
(:func:`obs_solve`) also runs SparseGPT (:mod:`jaxcompress.calibration.sparsegpt`).

>>> import jax, jax.numpy as jnp
>>> x = jax.random.normal(jax.random.key(0), (64, 8))
>>> w = jax.random.normal(jax.random.key(1), (8, 4))
>>> r = gptq(w, hessian(x), bits=4)
>>> r.kernel.shape, r.codes.dtype.name, r.scale.shape, r.mask is None
((8, 4), 'int8', (1, 4), True)
>>> bool(jnp.sum((x @ r.kernel - x @ w) ** 2) <= jnp.sum((x @ rtn(w, bits=4).kernel - x @ w) ** 2))
True
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress.pruning import select
from jaxcompress.quantization import grid
from jaxcompress.quantization.spec import QuantSpec


class Solution(NamedTuple):
    """A solved kernel.

    Attributes:
      kernel: the dequantized (or pruned) float kernel ``(K, N)`` in the input's dtype: what the
        unchanged model runs with.
      codes: ``int8`` signed codes ``(K, N)`` on ``grid_spec(bits, group_size, symmetric)``
        (range ``qrange(spec)``), or None for a pruning-only solve.
      scale: float32, ``spec.scale_shape((K, N))``: ``(1, N)`` per channel, ``(K // G, 1, N)`` per group.
      zero: integer-valued float32 zero points, shaped like ``scale`` (0 when symmetric).
      mask: bool ``(K, N)`` of the kept weights, or None (no pruning).
    """

    kernel: jax.Array
    codes: jax.Array | None
    scale: jax.Array | None
    zero: jax.Array | None
    mask: jax.Array | None


def grid_spec(bits: int, group_size: int | None = None, symmetric: bool = False) -> QuantSpec:
    """The weight grid of every solver for a ``(K, N)`` kernel.

    Per output channel (``axis=1``) when ``group_size`` is None, else per group of
    ``group_size`` consecutive input rows (``contraction_axis=0``) and output channel.

    >>> grid_spec(4, 8).scale_shape((16, 3))
    (2, 1, 3)
    """
    if group_size is None:
        return QuantSpec(bits=bits, symmetric=symmetric, granularity="channel", axis=1)
    return QuantSpec(bits=bits, symmetric=symmetric, granularity="group", axis=1, group_size=group_size,
                     contraction_axis=0)


def solver_spec(bits, group_size, symmetric) -> QuantSpec:
    """:func:`grid_spec` for a possibly traced ``bits`` (always pass ``bits`` on to the grid functions).

    Raises:
      ValueError: a concrete ``bits`` outside 2..8 (the codes are stored as int8).
    """
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        return grid_spec(8, group_size, symmetric)  # bits is traced: the spec fixes only the structure
    if not 2 <= int(bits) <= 8:
        raise ValueError(f"bits={bits}: the solvers store int8 codes and support 2 <= bits <= 8")
    return grid_spec(int(bits), group_size, symmetric)


def _elementwise(spec: QuantSpec) -> QuantSpec:
    """``spec`` as a per-tensor grid: quantize a row ``(N,)`` against scales ``(N,)`` elementwise."""
    return QuantSpec(bits=spec.bits, symmetric=spec.symmetric, granularity="tensor")


def hessian(x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """``H = 2 X^T X / n`` over all tokens of ``x`` (``(..., K)``); ``mask`` (``x.shape[:-1]``) drops pads.

    >>> hessian(jnp.ones((4, 2))).tolist()
    [[2.0, 2.0], [2.0, 2.0]]
    """
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


def check_args(w, group_size=None, h=None, multiple: int = 1) -> int:
    """Validate a kernel ``(K, N)``, its ``group_size`` and Hessian ``(K, K)``; returns the rows per group.

    Raises:
      ValueError: naming the argument: a non-2-D ``w``, a ``group_size`` that is not positive or
        does not divide ``K``, or ``h`` of the wrong shape.
    """
    if w.ndim != 2:
        raise ValueError(f"kernel w must be 2-D (K, N), got shape {w.shape}")
    k = w.shape[0]
    if group_size is not None and (not isinstance(group_size, int) or group_size <= 0 or k % group_size):
        raise ValueError(f"group_size={group_size} must be a positive int dividing the input size K={k}")
    if h is not None and h.shape != (k, k):
        raise ValueError(f"hessian h has shape {h.shape}, must be (K, K) = {(k, k)} for kernel w {w.shape}")
    return group_size or k


def prepare(w, h, damp):
    """``(w, h)`` as float32 ready to solve: dead inputs (``H_ii = 0``) zeroed in ``w`` and set to 1
    on the diagonal of ``h``, then ``damp * mean(diag h)`` added to the diagonal."""
    h = h.astype(jnp.float32)
    dead = jnp.diag(h) == 0.0
    h = h + jnp.diag(dead.astype(jnp.float32))
    w = jnp.where(dead[:, None], 0.0, w.astype(jnp.float32))
    lam = jnp.asarray(damp, jnp.float32) * jnp.mean(jnp.diag(h))
    return w, h + lam * jnp.eye(h.shape[0], dtype=jnp.float32)


def inverse_cholesky(h: jax.Array) -> jax.Array:
    """Upper Cholesky factor ``U`` of ``h^-1`` (``U^T U = h^-1``); NaN if ``h`` is not positive definite."""
    eye = jnp.eye(h.shape[0], dtype=jnp.float32)
    hinv = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(h), True), eye)
    return jnp.linalg.cholesky(hinv).T


def check_hessian(h, damp=0.01) -> None:
    """Host-side check that ``h`` after dead-input handling and dampening is positive definite.

    Call it before a jitted solve (inside ``jit`` a failed Cholesky can only show as NaN: the
    solvers then return a NaN kernel).

    >>> check_hessian(-jnp.eye(2), damp=0.01)
    Traceback (most recent call last):
    ...
    ValueError: hessian h (2, 2) is not positive definite after damping damp=0.01; raise damp or give more calibration data
    """
    h = jnp.asarray(h)
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise ValueError(f"hessian h must be square (K, K), got shape {h.shape}")
    if not bool(jnp.all(jnp.isfinite(h))):
        raise ValueError(f"hessian h {h.shape} has non-finite entries (NaN or inf in the calibration inputs?)")
    _, hd = jax.jit(prepare)(jnp.zeros((h.shape[0], 1), jnp.float32), h, damp)
    if not bool(jnp.all(jnp.isfinite(jax.jit(inverse_cholesky)(hd)))):
        raise ValueError(f"hessian h {h.shape} is not positive definite after damping damp={damp}; "
                         "raise damp or give more calibration data")


def per_row(scale, k):
    """A grid of ``scale_shape`` form (``(1, N)`` or ``(K // G, 1, N)``) expanded to one row per input ``(K, N)``."""
    s = scale.reshape(-1, 1, scale.shape[-1])
    return jnp.broadcast_to(s, (s.shape[0], k // s.shape[0], s.shape[-1])).reshape(k, s.shape[-1])


def minmax_grid(w, spec, bits):
    """Scale and zero point of ``w`` (``(K, N)``) on ``spec``, in ``spec.scale_shape`` form."""
    return grid.compute_scale_zero_point(*grid.minmax(w, spec), spec, bits)


def rtn(w: jax.Array, bits=4, group_size: int | None = None, symmetric: bool = False) -> Solution:
    """Round-to-nearest of ``w`` (``(K, N)``) on :func:`grid_spec` (``bits`` may be traced).

    >>> r = rtn(jnp.array([[0.0, -3.0], [3.0, 3.0]]), bits=2)
    >>> r.codes.tolist(), r.kernel.tolist(), r.zero.tolist()
    ([[-2, -1], [1, 1]], [[0.0, -2.0], [3.0, 2.0]], [[-2.0, 0.0]])
    """
    check_args(w, group_size)
    spec = solver_spec(bits, group_size, symmetric)
    scale, zero = minmax_grid(w, spec, bits)
    codes = grid.quantize(w, spec, scale, zero, bits)
    return Solution(grid.dequantize(codes, spec, scale, zero, w.dtype), codes.astype(jnp.int8), scale, zero, None)


def obs_solve(w, u, block_size: int, spec: QuantSpec | None = None, bits=None,
              row_grid: tuple[jax.Array, jax.Array] | None = None,
              block_mask: Callable | None = None, nm: tuple[int, int] | None = None):
    """The lazy-batched error-feedback loop shared by GPTQ and SparseGPT (rows in processing order).

    For each row ``i``: ``q_i`` = the row with its pruned entries set to 0, quantized when
    ``spec`` is given; ``e_i = (w_i - q_i) / U_ii``; ``w_j -= U_ij e_i`` for ``j > i``.

    Args:
      w: float32 ``(K, N)`` (dead inputs already zeroed).
      u: upper Cholesky factor of the dampened ``H^-1`` ``(K, K)``.
      block_size: rows per lazy block (static); must be a multiple of the group size and of ``m``.
      spec: the quantization grid (None: no quantization). Group grids not in ``row_grid``
        are computed from the updated rows when a group starts.
      bits: the (traced) bit width passed to the grid functions.
      row_grid: a fixed grid, ``(scale, zero)`` of one row per input ``(K, N)`` each.
      block_mask: ``f(w1, d1) -> pruned (rows, N)`` called at each block start with the updated
        block and its ``U_ii``.
      nm: ``(n, m)``: at every ``m``-th row keep the ``n`` of ``m`` rows with largest
        ``w^2 / U_ii^2`` per column (the updated weights).

    Returns:
      ``(q, codes, group_scale, group_zero, kept)``: dequantized ``(K, N)``, float codes ``(K, N)``
      (None without ``spec``), the dynamic group grids ``(K // G, N)`` (None unless computed) and
      the kept mask ``(K, N)``.
    """
    k, n_out = w.shape
    dynamic = spec is not None and row_grid is None
    g = spec.group_size if dynamic else None
    ew = _elementwise(spec) if spec is not None else None

    def solve_block(w, b0, nb):
        """Rows ``b0 : b0 + nb`` (``b0`` traced, ``nb`` static); ``w`` with the lazy update of the later rows."""
        w1, u1 = jax.lax.dynamic_slice(w, (b0, 0), (nb, n_out)), jax.lax.dynamic_slice(u, (b0, b0), (nb, nb))
        d1 = jnp.diag(u1)
        pruned = block_mask(w1, d1) if block_mask is not None else jnp.zeros((nb, n_out), bool)
        ng = nb // g if dynamic else 1
        if row_grid is not None:
            rs, rz = (jax.lax.dynamic_slice(a, (b0, 0), (nb, n_out)) for a in row_grid)

        def group_grid(w1, i):
            start = jax.lax.dynamic_slice(w1, (i, 0), (g, n_out))
            return grid.compute_scale_zero_point(start.min(0), start.max(0), ew, bits)

        def body(i, carry):
            w1, q1, c1, e1, pruned, sc, zp, s_all, z_all = carry
            if nm is not None:
                n, m = nm
                tile = jax.lax.dynamic_slice(w1, (i, 0), (m, n_out))
                dm = jax.lax.dynamic_slice(d1, (i,), (m,))
                keep = select.nm_mask(tile**2 / (dm**2)[:, None], n, m, axis=0)
                cur = jax.lax.dynamic_slice(pruned, (i, 0), (m, n_out))
                pruned = jax.lax.dynamic_update_slice(pruned, jnp.where(i % m == 0, ~keep, cur), (i, 0))
            row = w1[i]
            q = jnp.where(pruned[i], 0.0, row)
            code = q
            if spec is not None:
                if dynamic:  # a group's grid from its updated rows, when it starts
                    sc, zp = jax.lax.cond(i % g == 0, group_grid, lambda *_: (sc, zp), w1, i)
                    s_all = jax.lax.dynamic_update_slice(s_all, sc[None], (i // g, 0))
                    z_all = jax.lax.dynamic_update_slice(z_all, zp[None], (i // g, 0))
                else:
                    sc, zp = rs[i], rz[i]
                code = grid.quantize(q, ew, sc, zp, bits)
                q = grid.dequantize(code, ew, sc, zp)
            err = (row - q) / u1[i, i]
            w1 = w1 - u1[i][:, None] * err[None, :]
            return w1, q1.at[i].set(q), c1.at[i].set(code), e1.at[i].set(err), pruned, sc, zp, s_all, z_all

        zeros = jnp.zeros((nb, n_out), jnp.float32)
        init = (w1, zeros, zeros, zeros, pruned, jnp.ones(n_out), jnp.zeros(n_out),
                jnp.zeros((ng, n_out)), jnp.zeros((ng, n_out)))
        _, q1, c1, e1, pruned, _, _, s_all, z_all = jax.lax.fori_loop(0, nb, body, init)
        # every row up to b0 + nb is done: updating all rows is updating the later ones (static shapes)
        w = w - jax.lax.dynamic_slice(u, (b0, 0), (nb, k)).T @ e1
        return w, (q1, c1, s_all, z_all, ~pruned)

    # the full blocks as one scan (one compiled block), then the shorter last one if K is not a multiple
    n_full = k // block_size
    w, outs = jax.lax.scan(lambda w, b0: solve_block(w, b0, block_size), w, jnp.arange(n_full) * block_size)
    outs = [o.reshape(-1, n_out) for o in outs]
    if k % block_size:
        _, tail = solve_block(w, n_full * block_size, k % block_size)
        outs = [jnp.concatenate([o, t]) for o, t in zip(outs, tail)]
    q, codes, s_all, z_all, kept = outs
    return q, codes if spec is not None else None, s_all if dynamic else None, z_all if dynamic else None, kept


def round_block(block_size: int, k: int, *multiples: int | None) -> int:
    """``block_size`` (capped at ``k``) rounded up to a multiple of every given ``multiples`` entry."""
    step = int(np.lcm.reduce([m for m in multiples if m] or [1]))
    return step * max(1, -(-min(block_size, k) // step))


def gptq(w: jax.Array, h: jax.Array, bits=4, group_size: int | None = None, damp=0.01, block_size: int = 128,
         act_order: bool = False, symmetric: bool = False) -> Solution:
    """Quantize ``w`` (``(K, N)``) with GPTQ given the Hessian ``h`` of its inputs.

    Args:
      w: float kernel ``(K, N)``.
      h: ``(K, K)`` Hessian, e.g. :func:`hessian` of the calibration inputs (averaged over batches).
      bits: 2..8 (may be traced; only the grid changes).
      group_size: rows per quantization group (static; must divide ``K``); None = per channel.
      damp: relative dampening added to the diagonal (may be traced).
      block_size: lazy-update block (static; rounded up to a multiple of ``group_size``).
      act_order: process inputs by descending ``diag(h)`` (static; static groups with ``group_size``).
      symmetric: symmetric grid (zero point 0) instead of asymmetric min-max.

    Returns:
      A :class:`Solution` (``mask`` None). Its ``kernel`` is NaN when the dampened ``h`` is not
      positive definite: check with :func:`check_hessian` first.

    Raises:
      ValueError: on a non-2-D kernel, a Hessian of the wrong shape, a ``group_size`` that does
        not divide ``K`` or ``bits`` outside 2..8.
    """
    g = check_args(w, group_size, h)
    k = w.shape[0]
    spec = solver_spec(bits, group_size, symmetric)
    w32, hd = prepare(w, h, damp)
    static = group_size is None or act_order
    if static:  # the grid from the original (dead-zeroed) weights, consecutive original rows
        scale, zero = minmax_grid(w32, spec, bits)
        row_grid = (per_row(scale, k), per_row(zero, k))
    else:
        row_grid = None
    perm = jnp.argsort(-jnp.diag(hd)) if act_order else jnp.arange(k)
    if act_order:
        w32, hd = w32[perm], hd[perm][:, perm]
        row_grid = (row_grid[0][perm], row_grid[1][perm])
    u = inverse_cholesky(hd)
    bs = round_block(block_size, k, g if group_size else None)
    q, codes, gs, gz, _ = obs_solve(w32, u, bs, spec, bits, row_grid=row_grid)
    if act_order:
        inv = jnp.argsort(perm)
        q, codes = q[inv], codes[inv]
    if not static:
        scale, zero = gs[:, None, :], gz[:, None, :]
    ok = jnp.all(jnp.isfinite(u))
    kernel = jnp.where(ok, q, jnp.nan).astype(w.dtype)
    return Solution(kernel, codes.astype(jnp.int8), scale, zero, None)
