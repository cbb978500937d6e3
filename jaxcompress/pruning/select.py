"""Selection: turn scores into masks (layer-wise, global, N:M, structured units).

* :func:`topk_mask` - one array, keep the ``1 - sparsity`` largest scores (exact count);
* :func:`global_masks` - one threshold over all selected leaves together;
* :func:`nm_mask` - keep the ``n`` largest of every ``m`` consecutive entries along an (input) axis;
* :func:`unit_mask` - keep whole output positions (Dense columns, conv filters, DenseGeneral
  ``(head, head_dim)`` positions) by their norm over the input axes.

Which axes are inputs comes from a :class:`~jaxcompress.layout.WeightLayout` (``group_axis``,
``inputs``); without one only a 2-D ``(in, out)`` kernel has a default, ``ndim >= 3`` raises.

All accept traced sparsities (one compilation for a sweep) and break ties towards the
lowest flat index, so the kept count is exactly ``size - round(sparsity * size)``.

>>> import jax.numpy as jnp
>>> topk_mask(jnp.array([0.1, 0.9, 0.5, 0.3]), 0.5).tolist()
[False, True, True, False]
>>> nm_mask(jnp.array([[4.0, 1.0, 3.0, 2.0]]), 2, 4, axis=-1).tolist()
[[True, False, True, False]]
>>> unit_mask(jnp.array([[[1.0, 5.0]], [[1.0, 5.0]]]), 0.5, inputs=(0,))[0].tolist()  # (in, heads, head_dim)
[[False, True]]
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxcompress import layout as jlayout
from jaxcompress.pruning.threshold import check_no_nan, topk_masks, topk_masks_each


def check_sparsity(sparsity, name: str = "sparsity") -> None:
    """Raise ``ValueError`` unless a concrete sparsity lies in ``[0, 1)``."""
    if isinstance(sparsity, jax.core.Tracer):
        return
    try:
        v = float(sparsity)
    except TypeError as e:  # arrays with more than one element
        raise ValueError(f"{name} must be a scalar in [0, 1), got {sparsity!r}") from e
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {v}")


def keep_count(size: int, sparsity) -> jax.Array:
    """``size - round(sparsity * size)`` as an int32 scalar (sparsity may be traced)."""
    s = jnp.asarray(sparsity, jnp.float32)
    pruned = jnp.round(s * jnp.float32(size)).astype(jnp.int32)
    return jnp.int32(size) - jnp.clip(pruned, 0, size)


def topk_mask(scores: jax.Array, sparsity) -> jax.Array:
    """Layer-wise mask keeping exactly ``size - round(sparsity * size)`` largest scores.

    Args:
      scores: float array of any shape (NaN raises ``ValueError`` when concrete).
      sparsity: fraction to prune in ``[0, 1)``; Python float or traced scalar.
    """
    check_sparsity(sparsity)
    scores = jnp.asarray(scores)
    return topk_masks([scores], keep_count(scores.size, sparsity))[0]


def topk_mask_k(scores: jax.Array, k) -> jax.Array:
    """Mask keeping exactly the ``k`` largest scores (``k`` may be traced)."""
    return topk_masks([jnp.asarray(scores)], k)[0]


def layerwise_masks(scores: Sequence[jax.Array], sparsities: Sequence) -> list[jax.Array]:
    """:func:`topk_mask` for several arrays at once (one shared search loop).

    Args:
      scores: float arrays.
      sparsities: one sparsity per array (Python floats or traced scalars).
    """
    if len(scores) != len(sparsities):
        raise ValueError(f"need one sparsity per array: {len(sparsities)} for {len(scores)} arrays")
    for i, s in enumerate(sparsities):
        check_sparsity(s, f"sparsity[{i}]")
    if not scores:
        return []
    ks = jnp.stack([keep_count(int(jnp.size(x)), s) for x, s in zip(scores, sparsities)])
    return topk_masks_each(list(scores), ks)


def global_masks(scores: Sequence[jax.Array], sparsity) -> list[jax.Array]:
    """One threshold over all arrays: exactly ``round(sparsity * total)`` pruned in total."""
    check_sparsity(sparsity)
    total = sum(int(jnp.size(s)) for s in scores)
    return topk_masks(list(scores), keep_count(total, sparsity))


def check_nm(n, m) -> None:
    """Raise ``ValueError`` unless ``n``, ``m`` are integers with ``1 <= n < m``."""
    if not (isinstance(n, int) and isinstance(m, int)) or isinstance(n, bool) or not 1 <= n < m:
        raise ValueError(f"N:M sparsity needs integers 1 <= n < m, got n={n!r}, m={m!r}")


def nm_mask(scores: jax.Array, n: int, m: int, axis: int | None = None) -> jax.Array:
    """N:M mask: in every group of ``m`` consecutive entries along ``axis`` keep ``n``.

    Groups run along an input axis, the grouping sparse tensor cores use: a layout's
    ``group_axis`` (conv: the input channels; DenseGeneral / attention: the innermost
    contracted axis). Ties keep the lower index.

    Args:
      scores: float array.
      n: entries kept per group, ``1 <= n < m``.
      m: group size; ``scores.shape[axis]`` must be divisible by it.
      axis: the grouping axis; default ``0``, the input axis of a 2-D ``(in, out)`` kernel
        (``ndim >= 3`` needs it given).

    Raises:
      ValueError: bad ``n``/``m``, an axis out of range or not divisible by ``m``, no axis for
        ``ndim >= 3``.
    """
    check_nm(n, m)
    scores = jnp.asarray(scores)
    check_no_nan([scores])
    if axis is None:  # the one rule of jaxcompress.layout: 2-D is (in, out), ndim >= 3 is ambiguous
        axis = jlayout.axes_of("scores", scores.shape, None).group_axis
    if not -scores.ndim <= axis < scores.ndim:
        raise ValueError(f"axis {axis} out of range for scores of shape {scores.shape}")
    length = scores.shape[axis]
    if length % m:
        raise ValueError(f"N:M with m={m} needs axis {axis} of shape {scores.shape} divisible by {m} (got {length})")
    x = jnp.moveaxis(scores.astype(jnp.float32), axis, -1)
    g = x.reshape(*x.shape[:-1], length // m, m)
    a, b = g[..., :, None], g[..., None, :]  # rank = how many group members beat me
    idx = jnp.arange(m)
    earlier = jnp.broadcast_to(idx[None, :] < idx[:, None], (*g.shape, m))
    beats = (b > a) | ((b == a) & earlier)
    rank = jnp.sum(beats, axis=-1, dtype=jnp.int32)
    keep = (rank < n).reshape(x.shape)
    return jnp.moveaxis(keep, -1, axis)


def unit_mask(w: jax.Array, sparsity, ord: int = 1, inputs: tuple[int, ...] | None = None) -> jax.Array:
    """Structured mask removing ``round(sparsity * units)`` output positions of lowest norm.

    Args:
      w: a kernel; its units are the positions of its output axes (all axes not in ``inputs``).
      sparsity: fraction of units to remove, ``[0, 1)`` (traced ok).
      ord: 1 or 2, the norm (over the input axes) scoring a unit.
      inputs: the contracted axes (a layout's ``inputs``); default: 2-D ``(in, out)``, i.e. ``(0,)``.

    Returns:
      Bool mask of ``w.shape``, constant along the input axes.
    """
    from jaxcompress.pruning.scores import unit_norms

    check_sparsity(sparsity)
    if inputs is None:
        inputs = jlayout.axes_of("kernel", w.shape, None).inputs
    keep = topk_mask(unit_norms(w, ord, inputs), sparsity)
    return broadcast_units(keep, w.shape, inputs)


def broadcast_units(keep: jax.Array, shape: tuple[int, ...], inputs: tuple[int, ...]) -> jax.Array:
    """A per-unit mask (shaped like the output axes) broadcast along the input axes to ``shape``."""
    axes = tuple(sorted(a % len(shape) for a in inputs))
    return jnp.broadcast_to(jnp.expand_dims(keep, axes), shape)
