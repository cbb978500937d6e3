"""Masks as pytrees matching params: bool arrays on selected leaves, ``None`` elsewhere.

A mask tree has the structure of ``params`` where ``None`` marks a leaf that is not
pruned (bias, norms ...) and is passed through unchanged. Works the same on a linen
``params`` dict and on an ``nnx.State``.

Functions that pick leaves (:func:`ones_like`, :func:`params_sparsity` and every pruning
transform, through :func:`jaxcompress.layout.select`) take ``layout=`` (:func:`jaxcompress.layout.trace`):
with it, ``where=None`` means the layout's weight paths.

>>> import jax.numpy as jnp
>>> params = {"Dense_0": {"kernel": jnp.array([[1.0, -2.0]]), "bias": jnp.ones(2)}}
>>> masks = {"Dense_0": {"kernel": jnp.array([[False, True]]), "bias": None}}
>>> apply_masks(params, masks)["Dense_0"]["kernel"].tolist()
[[0.0, -2.0]]
>>> sparsity(masks)
0.5
>>> from jaxcompress.layout import WeightLayout
>>> lay = {"Dense_0/kernel": WeightLayout((0,), (1,), 0, "dot_general")}
>>> ones_like(params, layout=lay)["Dense_0"]["bias"] is None
True
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import layout as jlayout
from jaxcompress import tree

Params = Any
Masks = Any


def is_none(x) -> bool:
    return x is None


def mask_map(fn: Callable, masks: Masks, *rest: Params) -> Any:
    """``jax.tree.map`` over a mask tree whose ``None`` leaves stay leaves (fn sees them)."""
    return jax.tree.map(fn, masks, *rest, is_leaf=is_none)


def check_masks(params: Params, masks: Masks) -> None:
    """Raise ``ValueError`` unless ``masks`` matches ``params`` (structure and shapes).

    The message names the first differing path.
    """
    filled = jax.tree.map(lambda m: 0 if m is None else m, masks, is_leaf=is_none)
    tree.check_same_structure(params, filled, "params", "masks")
    for (path, p), (_, m) in zip(tree.named_leaves(params), tree.named_leaves(filled)):
        if isinstance(m, int) and m == 0:
            continue
        if tuple(np.shape(m)) != tuple(np.shape(p)):
            raise ValueError(f"mask for parameter {path!r} has shape {np.shape(m)}, expected {np.shape(p)}")


def ones_like(params: Params, where: tree.Selector = None, layout: jlayout.Layout | None = None) -> Masks:
    """All-True masks on the leaves ``where`` selects (default: kernels, or ``layout``'s paths), ``None`` elsewhere."""
    sel = jlayout.select(params, where, layout)
    return jax.tree.map(lambda p, s: jnp.ones(p.shape, bool) if s else None, params, sel)


def apply_masks(params: Params, masks: Masks) -> Params:
    """``w * mask`` on masked leaves (differentiable; gradients of pruned weights are 0).

    Raises:
      ValueError: naming the first path where ``masks`` does not match ``params`` (structure or shape).
    """
    check_masks(params, masks)
    return mask_map(lambda m, p: p if m is None else jnp.where(m, p, jnp.zeros((), p.dtype)), masks, params)


def selected(masks: Masks) -> Any:
    """Bool tree (Python bools): which leaves carry a mask."""
    return mask_map(lambda m: m is not None, masks)


def named_masks(masks: Masks) -> list[tuple[str, jax.Array]]:
    """``[(path, mask)]`` for the leaves that carry a mask, in flattening order."""
    filled = jax.tree.map(lambda m: 0 if m is None else m, masks, is_leaf=is_none)
    return [(p, m) for p, m in tree.named_leaves(filled) if not (isinstance(m, int) and m == 0)]


def sparsity(masks: Masks) -> float:
    """Fraction of masked-out entries over all leaves that carry a mask."""
    ms = [m for _, m in named_masks(masks)]
    total = sum(int(m.size) for m in ms)
    if total == 0:
        return 0.0
    kept = sum(int(np.asarray(m).sum()) for m in ms)
    return 1.0 - kept / total


def per_leaf_sparsity(masks: Masks) -> dict[str, float]:
    """``{path: fraction pruned}`` for every leaf that carries a mask."""
    return {p: 1.0 - float(np.asarray(m).mean()) for p, m in named_masks(masks)}


def params_sparsity(params: Params, where: tree.Selector = None, layout: jlayout.Layout | None = None) -> float:
    """Fraction of exact zeros among the leaves ``where`` selects (default: kernels, or ``layout``'s paths)."""
    sel = jlayout.select(params, where, layout)
    leaves = [p for (_, p), (_, s) in zip(tree.named_leaves(params), tree.named_leaves(sel)) if s]
    total = sum(int(p.size) for p in leaves)
    return sum(int((np.asarray(p) == 0).sum()) for p in leaves) / max(total, 1)
