"""Scores: how much each weight (or group) matters; larger = keep.

* :func:`magnitude` ``|w|``;
* :func:`random` uniform noise (the random-pruning baseline);
* :func:`saliency` ``|w * g|`` (SNIP, Lee et al. 2019, from one batch at initialisation);
* :func:`movement` accumulated ``-w * g`` (Sanh et al. 2020), see :func:`movement_update`;
* :func:`unit_norms` L1/L2 norm of every output unit / filter (structured pruning).

Each returns a pytree of float32 arrays on the leaves selected by ``masks`` (``None``
elsewhere), so scores line up with masks leaf by leaf.

>>> import jax.numpy as jnp
>>> w = {"kernel": jnp.array([[1.0, -3.0], [2.0, 0.5]])}
>>> magnitude(w)["kernel"].tolist()
[[1.0, 3.0], [2.0, 0.5]]
>>> unit_norms(w["kernel"], ord=1).tolist()
[3.0, 3.5]
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcompress import tree
from jaxcompress.pruning.masks import is_none

Params = Any


def _on_selected(fn, params, where, *rest):
    sel = tree.select(params, where)
    return jax.tree.map(lambda s, p, *r: fn(p, *r).astype(jnp.float32) if s else None, sel, params, *rest)


def magnitude(params: Params, where: tree.Selector = None) -> Params:
    """``|w|`` on the selected leaves (default: kernels)."""
    return _on_selected(jnp.abs, params, where)


def random(params: Params, rng: jax.Array, where: tree.Selector = None) -> Params:
    """Uniform ``[0, 1)`` scores: pruning by them is random pruning."""
    sel = tree.select(params, where)
    leaves, treedef = jax.tree.flatten(sel)
    keys = jax.random.split(rng, len(leaves))
    keys_tree = jax.tree.unflatten(treedef, list(keys))
    return jax.tree.map(lambda s, p, k: jax.random.uniform(k, p.shape, jnp.float32) if s else None,
                        sel, params, keys_tree)


def saliency(params: Params, grads: Params, where: tree.Selector = None) -> Params:
    """SNIP connection sensitivity ``|w * dL/dw|`` (from one batch, typically at init)."""
    tree.check_same_structure(params, grads, "params", "grads")
    return _on_selected(lambda p, g: jnp.abs(p * g), params, where, grads)


def movement(accumulated: Params) -> Params:
    """Movement scores are the accumulated ``-w * g`` themselves (see :func:`movement_update`)."""
    return accumulated


def movement_update(acc: Params, params: Params, grads: Params) -> Params:
    """One step of movement accumulation: ``acc - w * g`` on leaves where ``acc`` is not None."""
    return jax.tree.map(lambda a, p, g: None if a is None else a - (p * g).astype(jnp.float32),
                        acc, params, grads, is_leaf=is_none)


def unit_norms(w: jax.Array, ord: int = 1) -> jax.Array:
    """Norm of every output unit (last axis): Dense columns or conv filters.

    Args:
      w: a kernel, ``(in, out)`` for Dense or ``(*window, in, out)`` for Conv.
      ord: 1 (sum of ``|w|``) or 2 (Euclidean norm).
    """
    if ord not in (1, 2):
        raise ValueError(f"ord must be 1 or 2, got {ord!r}")
    if w.ndim < 2:
        raise ValueError(f"structured scores need a kernel with ndim >= 2, got shape {w.shape}")
    axes = tuple(range(w.ndim - 1))
    w = w.astype(jnp.float32)
    if ord == 1:
        return jnp.sum(jnp.abs(w), axis=axes)
    return jnp.sqrt(jnp.sum(w * w, axis=axes))
