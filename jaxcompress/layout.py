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

# ops a weight passes through unchanged (axis for axis) on its way to the matmul
_PASS = {"convert_element_type", "copy", "copy_p", "reduce_precision", "optimization_barrier"}
_CALLS = {"pjit", "jit", "closed_call", "core_call", "remat", "checkpoint", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr", "custom_lin"}


def _inner_jaxpr(eqn):
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        j = eqn.params.get(key)
        if j is not None:
            return j.jaxpr if hasattr(j, "jaxpr") else j
    return None


def _record(found: dict, path: str, entry: WeightLayout):
    old = found.get(path)
    if old is None:
        found[path] = entry
    elif old != entry:
        found[path] = "conflict"


def _walk(jaxpr, src: dict, found: dict, gathered: set):
    """``src`` maps a jaxpr var to ``(path, perm)``: axis ``i`` of the var is axis ``perm[i]`` of the param."""
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        ins = [src.get(v) if not hasattr(v, "val") else None for v in eqn.invars]
        if not any(ins):
            continue
        if name in _PASS:
            src[eqn.outvars[0]] = ins[0]
        elif name == "transpose":
            path, perm = ins[0]
            src[eqn.outvars[0]] = (path, tuple(perm[i] for i in eqn.params["permutation"]))
        elif name in _CALLS or _inner_jaxpr(eqn) is not None and name not in ("scan", "while", "cond"):
            inner = _inner_jaxpr(eqn)
            if inner is None:
                continue
            sub = {iv: s for iv, s in zip(inner.invars, ins) if s is not None}
            _walk(inner, sub, found, gathered)
        elif name == "dot_general":
            (lc, rc), _ = eqn.params["dimension_numbers"]
            for operand, contract in ((0, lc), (1, rc)):
                if ins[operand] is None:
                    continue
                path, perm = ins[operand]
                nd = len(perm)
                cin = tuple(sorted(perm[a] for a in contract))
                outs = tuple(sorted(perm[a] for a in range(nd) if a not in contract))
                grp = perm[max(contract)] if contract else -1
                _record(found, path, WeightLayout(cin, outs, grp, "dot_general"))
        elif name == "conv_general_dilated" and ins[1] is not None:
            path, perm = ins[1]
            rhs = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
            _record(found, path, WeightLayout(tuple(sorted(perm[a] for a in rhs[1:])), (perm[rhs[0]],),
                                              perm[rhs[1]], "conv"))
        elif name in ("gather", "dynamic_slice", "take"):
            for s in ins:
                if s is not None:
                    gathered.add(s[0])


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
      layouts.
    """
    from jaxcompress.model import as_model

    model = as_model(model, params)
    params = model.params if params is None else params
    leaves, treedef = jax.tree_util.tree_flatten(params)
    names = [p for p, _ in jtree.named_leaves(params)]
    spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), inputs)

    def fn(flat, x):
        return model.apply_fn(jax.tree_util.tree_unflatten(treedef, flat), x)

    closed = jax.make_jaxpr(fn)([jax.ShapeDtypeStruct(np.shape(a), a.dtype) for a in leaves], spec)
    jaxpr = closed.jaxpr
    src = {v: (n, tuple(range(len(np.shape(a))))) for v, n, a in zip(jaxpr.invars[: len(leaves)], names, leaves)}
    found, gathered = {}, set()
    _walk(jaxpr, src, found, gathered)
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
