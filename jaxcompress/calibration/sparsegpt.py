"""SparseGPT (Frantar & Alistarh, 2023): one-shot pruning with second-order weight reconstruction.

For ``y = x @ w`` (canonical kernel ``(K, N)``) and ``H = 2 X^T X / n`` (dampened, dead inputs
zeroed as in :mod:`.gptq`), SparseGPT removes weights so as to minimise ``||X W - X W_hat||^2``
with the same error feedback as GPTQ (Algorithm 1 of the paper, ``U`` = upper Cholesky of
``H^-1``)::

    q_i = 0 where pruned, else w_i (or Q(w_i) for joint sparsity + quantization),
    e_i = (w_i - q_i) / U_ii,   w_j <- w_j - U_ij e_i   for j > i,

applied lazily in blocks of ``block_size`` input rows. The mask is chosen adaptively by the OBS
saliency ``w^2 / U_ii^2`` of the *updated* weights (``U_ii^2`` is ``[H^-1]_ii`` of the inputs not
yet processed):

* unstructured: at the start of each block, in every output column, the ``sparsity`` fraction
  (``round(sparsity * rows)``) of lowest saliency among the block's rows is pruned (the
  reference selects over the whole ``(block, N)`` tile; per column gives every output exactly
  the same sparsity, the per-output comparison group of :mod:`jaxcompress.pruning.wanda`);
* N:M (``nm=(n, m)`` *keeps* ``n`` of every ``m`` consecutive inputs): when row ``i`` starts a
  group of ``m``, the ``m - n`` rows of lowest saliency of that group are pruned, per column.

With ``bits`` the kept weights are quantized on the grid of GPTQ (:func:`.gptq.grid_spec`,
per-channel from the original weights, groups from the updated weights when the group starts).

>>> import jax, jax.numpy as jnp
>>> from jaxcompress.calibration.gptq import hessian
>>> x = jax.random.normal(jax.random.key(0), (64, 8))
>>> w = jax.random.normal(jax.random.key(1), (8, 4))
>>> r = sparsegpt(w, hessian(x), nm=(2, 4))
>>> r.mask.reshape(2, 4, 4).sum(1).tolist()
[[2, 2, 2, 2], [2, 2, 2, 2]]
>>> bool(jnp.all(r.kernel[~r.mask] == 0)), r.codes is None
(True, True)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcompress.calibration import gptq as G
from jaxcompress.pruning import select


def saliency(w: jax.Array, d: jax.Array) -> jax.Array:
    """OBS saliency ``w^2 / d^2`` of rows ``w`` ``(rows, N)`` with ``d`` = ``U_ii`` ``(rows,)``."""
    return w**2 / (d**2)[:, None]


def per_column_mask(s: jax.Array, sparsity) -> jax.Array:
    """Pruned mask: the ``round(sparsity * rows)`` lowest of ``s`` ``(rows, N)`` in every column."""
    keep = select.keep_count(s.shape[0], sparsity)
    return ~jax.vmap(lambda c: select.topk_mask_k(c, keep), in_axes=1, out_axes=1)(s)


def sparsegpt(w: jax.Array, h: jax.Array, sparsity=0.5, nm: tuple[int, int] | None = None, block_size: int = 128,
              damp=0.01, bits=None, group_size: int | None = None, symmetric: bool = False) -> G.Solution:
    """Prune ``w`` (``(K, N)``) with SparseGPT given the Hessian ``h`` of its inputs.

    Args:
      w: float kernel ``(K, N)``.
      h: ``(K, K)`` Hessian (:func:`.gptq.hessian`).
      sparsity: fraction pruned per output column in each block (may be traced; ignored with ``nm``).
      nm: static ``(n, m)``: keep ``n`` of every ``m`` consecutive inputs.
      block_size: lazy-update block (static); unstructured masks are chosen per block. Rounded
        up to a multiple of ``m`` and ``group_size``.
      damp: relative dampening (may be traced).
      bits: None (pruning only) or 2..8 for joint sparsity + quantization (may be traced).
      group_size: quantization group (static), only with ``bits``.
      symmetric: symmetric quantization grid.

    Returns:
      A :class:`.gptq.Solution` with ``mask`` (kept weights); ``codes`` / ``scale`` / ``zero`` are
      None without ``bits``. The kernel is NaN when the dampened ``h`` is not positive definite
      (:func:`.gptq.check_hessian`).

    Raises:
      ValueError: bad shapes, ``group_size`` or ``nm`` (``m`` must divide ``K``), a concrete
        ``sparsity`` outside ``[0, 1)``, ``group_size`` without ``bits``.
    """
    g = G.check_args(w, group_size, h)
    k = w.shape[0]
    if nm is not None:
        select.check_nm(*nm)
        if k % nm[1]:
            raise ValueError(f"nm={nm}: m={nm[1]} must divide the input size K={k}")
    else:
        select.check_sparsity(sparsity)
    if bits is None and group_size is not None:
        raise ValueError(f"group_size={group_size} needs bits (joint sparsity + quantization)")
    spec = None if bits is None else G.solver_spec(bits, group_size, symmetric)
    w32, hd = G.prepare(w, h, damp)
    u = G.inverse_cholesky(hd)
    row_grid = None
    if spec is not None and group_size is None:
        scale, zero = G.minmax_grid(w32, spec, bits)
        row_grid = (G.per_row(scale, k), G.per_row(zero, k))
    bs = G.round_block(block_size, k, g if group_size else None, nm[1] if nm else None)
    block_mask = None if nm is not None else (lambda w1, d1: per_column_mask(saliency(w1, d1), sparsity))
    q, codes, gs, gz, kept = G.obs_solve(w32, u, bs, spec, bits, row_grid=row_grid, block_mask=block_mask, nm=nm)
    kernel = jnp.where(jnp.all(jnp.isfinite(u)), q, jnp.nan).astype(w.dtype)
    if spec is None:
        return G.Solution(kernel, None, None, None, kept)
    if row_grid is None:
        scale, zero = gs[:, None, :], gz[:, None, :]
    return G.Solution(kernel, codes.astype(jnp.int8), scale, zero, kept)
