"""Weight layout from the model, not from ``ndim``: which axes of each weight are inputs and outputs.

:func:`trace` runs one abstract call of a :class:`~jaxcompress.model.Model` (``jax.make_jaxpr``
on shapes only: no FLOPs) and records, for every parameter that is the weight operand of a
``dot_general`` (``nn.Dense``, ``DenseGeneral``, ``x @ w``, ``jnp.einsum``) or a
``conv_general_dilated`` (``nn.Conv``), its contracted (input) axes and its output axes.
Transposes, dtype casts and nested ``jit`` / custom-derivative calls between the param and the
op are followed; a param that reaches the op through a reshape is not recorded.

A layout is a plain dict ``{path: WeightLayout}``. Transforms take it as ``layout=``:

* by default they touch only the leaves it lists (never biases, norms, embeddings);
* N:M groups run along ``group_axis`` (the input-channel axis);
* "per output channel" means one scale per output position over all ``outputs`` axes;
* structured pruning removes output positions.

Without a layout, :func:`axes_of` takes a 2-D kernel as flax's ``(in, out)`` and refuses
to guess for ``ndim >= 3`` (a ``Conv`` ``(*window, in, out)`` and a ``DenseGeneral``
``(in, heads, head_dim)`` look alike).

>>> import jax, jax.numpy as jnp, flax.linen as nn
>>> from jaxcompress.model import from_linen
>>> mod = nn.DenseGeneral((2, 4))                     # a q/k/v projection: (in, heads, head_dim)
>>> m = from_linen(mod, mod.init(jax.random.key(0), jnp.zeros((1, 8))))
>>> trace(m, jnp.zeros((1, 8)))
{'kernel': WeightLayout(inputs=(0,), outputs=(1, 2), group_axis=0, op='dot_general')}
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from jaxcompress import tree as jtree


class WeightLayout(NamedTuple):
    """How one weight is consumed (axes are non-negative indices of the weight's shape).

    Attributes:
      inputs: the contracted axes (Dense ``in``; Conv window and ``in``).
      outputs: every other axis (Dense ``out``; DenseGeneral ``(heads, head_dim)``; Conv ``out``).
      group_axis: the input axis N:M groups and group quantization run along (Conv: the input
        channels; dot_general: the innermost contracted axis).
      op: ``"dot_general"`` or ``"conv"``.
    """

    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    group_axis: int
    op: str


Layout = dict  # {path: WeightLayout}


def site_layout(site) -> WeightLayout:
    """The :class:`WeightLayout` of the param an :class:`~jaxcompress.interception.Site` reads."""
    perm, nd = site.perm, len(site.perm)
    if site.op == "conv":
        rhs = site.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
        return WeightLayout(tuple(sorted(perm[a] for a in rhs[1:])), (perm[rhs[0]],), perm[rhs[1]], "conv")
    (lc, rc), (lb, rb) = site.params["dimension_numbers"]
    contract, batch = (lc, lb) if site.weight == 0 else (rc, rb)
    cin = tuple(sorted(perm[a] for a in contract))
    outs = tuple(sorted(perm[a] for a in range(nd) if a not in contract and a not in batch))
    grp = perm[max(contract)] if contract else -1
    return WeightLayout(cin, outs, grp, "dot_general")


def trace(model, inputs, params=None) -> Layout:
    """The layout of every weight ``model`` feeds to a ``dot_general`` / ``conv_general_dilated``.

    Args:
      model: a :class:`~jaxcompress.model.Model` (or anything :func:`~jaxcompress.model.as_model`
        takes together with ``params``).
      inputs: one input batch (arrays or ``jax.ShapeDtypeStruct``\\ s; only shapes are used).
      params: the params to trace with (default ``model.params``).

    Returns:
      ``{path: WeightLayout}`` for the weight operands, in flattening order. A param that is
      also gathered from (a tied embedding) is left out, as is one used with two different
      layouts or with batch dimensions (a per-head weight of a batched ``dot_general``).
    """
    from jaxcompress.interception import intercept
    from jaxcompress.model import as_model

    model = as_model(model, params)
    params = model.params if params is None else params
    found, gathered = {}, set()

    def hook(site, lhs, rhs, default):
        entry = site_layout(site)
        batched = site.op == "dot_general" and site.params["dimension_numbers"][1][site.weight]
        old = found.get(site.path)
        found[site.path] = entry if (old is None or old == entry) and not batched else "conflict"
        return default()

    spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), (params, inputs))
    jax.eval_shape(intercept(model.apply_fn, hook, on_trace=gathered.update), *spec)
    names = [p for p, _ in jtree.named_leaves(params)]
    return {n: found[n] for n in names if n in found and found[n] != "conflict" and n not in gathered}


def check(layout: Layout, params, who: str = "layout") -> None:
    """Raise ``ValueError`` naming the first path of ``layout`` that ``params`` lacks or whose axes do not fit."""
    shapes = {p: np.shape(x) for p, x in jtree.named_leaves(params)}
    for p, wl in layout.items():
        if p not in shapes:
            raise ValueError(f"{who} names parameter {p!r}, which does not exist; available paths: {list(shapes)}")
        nd = len(shapes[p])
        if sorted((*wl.inputs, *wl.outputs)) != list(range(nd)) or wl.group_axis not in wl.inputs:
            raise ValueError(f"{who} for {p!r} (shape {shapes[p]}) is inconsistent: {wl}")


def axes_of(path: str, shape: tuple[int, ...], layout: Layout | None) -> WeightLayout:
    """The :class:`WeightLayout` of one leaf: from ``layout``, or flax's ``(in, out)`` for a 2-D kernel.

    Raises:
      ValueError: naming ``path`` when there is no layout and the kernel has ``ndim >= 3`` (its axes
        are ambiguous), when ``layout`` does not list ``path``, or for a leaf of ``ndim < 2``.
    """
    if layout is not None:
        if path in layout:
            return layout[path]
        raise ValueError(f"parameter {path!r} is not a weight operand in the layout (layout paths: {list(layout)})")
    nd = len(shape)
    if nd == 2:
        return WeightLayout((0,), (1,), 0, "dot_general")
    if nd >= 3:
        raise ValueError(
            f"parameter {path!r} has shape {tuple(shape)}: which axes are inputs and outputs is ambiguous "
            f"for ndim >= 3 (Conv (*window, in, out) or DenseGeneral (in, heads, head_dim)); pass "
            f"layout=jaxcompress.layout.trace(model, x) or an explicit axis")
    raise ValueError(f"parameter {path!r} has shape {tuple(shape)}: not a kernel (needs ndim >= 2)")


def select(params, where=None, layout: Layout | None = None):
    """:func:`jaxcompress.tree.select` with a layout: ``where=None`` selects the layout's weight paths.

    The one place every transform's default selection is made (pruning and quantization alike).

    Raises:
      ValueError: naming a path of ``layout`` that ``params`` lacks (:func:`check`), or when the
        selection is empty.
    """
    if layout is not None:
        check(layout, params)
        if where is None:
            where = lambda path, leaf: path in layout  # noqa: E731
    return jtree.select(params, where)
