"""Scores: how much each weight (or group) matters; larger = keep.

* :func:`magnitude` ``|w|``;
* :func:`random` uniform noise (the random-pruning baseline);
* :func:`saliency` ``|w * g|`` (SNIP, Lee et al. 2019, from one batch at initialisation);
* :func:`movement` accumulated ``-w * g`` (Sanh et al. 2020), see :func:`movement_update`;
* :func:`unit_norms` L1/L2 norm of every output position (structured pruning): the norm over
  the kernel's input axes, one score per position of its output axes.

The pytree scores return float32 arrays on the leaves ``where`` selects (``None`` elsewhere),
so scores line up with masks leaf by leaf; given ``layout=`` (:func:`jaxcompress.layout.trace`)
the default selection is the layout's weight paths.

>>> import jax.numpy as jnp
>>> w = {"kernel": jnp.array([[1.0, -3.0], [2.0, 0.5]])}
>>> magnitude(w)["kernel"].tolist()
[[1.0, 3.0], [2.0, 0.5]]
>>> unit_norms(w["kernel"], ord=1).tolist()
[3.0, 3.5]
>>> k = jnp.ones((3, 2, 4))                    # DenseGeneral (in, heads, head_dim)
>>> unit_norms(k, ord=1, inputs=(0,)).shape    # one norm per (head, head_dim) position
(2, 4)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcompress import layout as jlayout
from jaxcompress import tree
from jaxcompress.pruning.masks import is_none

Params = Any


def _on_selected(fn, params, where, layout, *rest):
    sel = jlayout.select(params, where, layout)
    return jax.tree.map(lambda s, p, *r: fn(p, *r).astype(jnp.float32) if s else None, sel, params, *rest)


def magnitude(params: Params, where: tree.Selector = None, layout: jlayout.Layout | None = None) -> Params:
    """``|w|`` on the selected leaves (default: kernels, or the layout's weight paths)."""
    return _on_selected(jnp.abs, params, where, layout)


def random(params: Params, rng: jax.Array, where: tree.Selector = None,
           layout: jlayout.Layout | None = None) -> Params:
    """Uniform ``[0, 1)`` scores: pruning by them is random pruning."""
    sel = jlayout.select(params, where, layout)
    leaves, treedef = jax.tree.flatten(sel)
    keys = jax.random.split(rng, len(leaves))
    keys_tree = jax.tree.unflatten(treedef, list(keys))
    return jax.tree.map(lambda s, p, k: jax.random.uniform(k, p.shape, jnp.float32) if s else None,
                        sel, params, keys_tree)


def saliency(params: Params, grads: Params, where: tree.Selector = None,
             layout: jlayout.Layout | None = None) -> Params:
    """SNIP connection sensitivity ``|w * dL/dw|`` (from one batch, typically at init)."""
    tree.check_same_structure(params, grads, "params", "grads")
    return _on_selected(lambda p, g: jnp.abs(p * g), params, where, layout, grads)


def movement(accumulated: Params) -> Params:
    """Movement scores are the accumulated ``-w * g`` themselves (see :func:`movement_update`)."""
    return accumulated


def movement_update(acc: Params, params: Params, grads: Params) -> Params:
    """One step of movement accumulation: ``acc - w * g`` on leaves where ``acc`` is not None."""
    return jax.tree.map(lambda a, p, g: None if a is None else a - (p * g).astype(jnp.float32),
                        acc, params, grads, is_leaf=is_none)


def unit_norms(w: jax.Array, ord: int = 1, inputs: tuple[int, ...] | None = None) -> jax.Array:
    """Norm of every output position: reduced over the input axes, shaped like the output axes.

    Args:
      w: a kernel.
      ord: 1 (sum of ``|w|``) or 2 (Euclidean norm).
      inputs: the contracted axes (a :class:`~jaxcompress.layout.WeightLayout`'s ``inputs``);
        default: a 2-D kernel is flax's ``(in, out)``, i.e. ``(0,)``.

    Returns:
      float32 norms of shape ``[w.shape[a] for a not in inputs]`` (Dense columns, conv filters,
      DenseGeneral ``(heads, head_dim)`` positions).

    Raises:
      ValueError: bad ``ord``, ``ndim < 2``, or ``ndim >= 3`` without ``inputs`` (ambiguous axes).
    """
    if ord not in (1, 2):
        raise ValueError(f"ord must be 1 or 2, got {ord!r}")
    if inputs is None:
        inputs = jlayout.axes_of("kernel", w.shape, None).inputs
    axes = tuple(sorted(a % w.ndim for a in inputs))
    if not axes or len(axes) == w.ndim:
        raise ValueError(f"inputs {inputs} must name some but not all axes of a kernel of shape {w.shape}")
    w = w.astype(jnp.float32)
    if ord == 1:
        return jnp.sum(jnp.abs(w), axis=axes)
    return jnp.sqrt(jnp.sum(w * w, axis=axes))
