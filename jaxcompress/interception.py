"""Op-level interception: run any model with a hook on every op that consumes a parameter as a weight.

:func:`intercept` traces a function of a params pytree once (``jax.make_jaxpr``) and evaluates
the jaxpr equation by equation. It follows every parameter leaf through transposes, dtype casts
and nested ``jit`` / custom-derivative calls (``jnp.einsum``, ``x @ w`` and ``jnp.matmul`` are
jitted functions) to the ``dot_general`` / ``conv_general_dilated`` that consumes it, and calls
``hook(site, lhs, rhs, default)`` there instead of the op. Everything else is bound as it was,
so under ``jit`` the result is one XLA program, and with a hook that returns ``default()`` it
computes exactly what the model computes.

This works the same for linen modules (``nn.Dense``, ``nn.DenseGeneral``, ``nn.Conv``,
``nn.Einsum``), NNX modules and hand-written ``x @ kernel`` / ``jnp.einsum`` on a param: the
model's code is never edited and no module class is special. It is the base of
:func:`jaxcompress.layout.trace` (which axes are inputs and outputs), of calibration
statistics (:mod:`jaxcompress.calibration`) and of integer inference.

A :class:`Site` names the param path and says how the op reads it: ``perm`` maps the op
operand's axes to the param's axes (operand axis ``i`` is param axis ``perm[i]``).

>>> import jax, jax.numpy as jnp
>>> def f(params, x):                     # any function of a params pytree
...     return jnp.einsum("bi,io->bo", x, params["w"]) + x @ params["v"].T
>>> params = {"w": jnp.ones((3, 2)), "v": jnp.ones((2, 3))}
>>> seen = []
>>> def hook(site, lhs, rhs, default):
...     seen.append((site.path, site.perm))
...     return default()
>>> out = jax.jit(intercept(f, hook))(params, jnp.ones((4, 3)))
>>> seen, out.shape
([('w', (0, 1)), ('v', (1, 0))], (4, 2))
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import numpy as np
from jax.extend import core as jcore

from jaxcompress import tree as jtree

# ops a weight passes through unchanged (axis for axis) on its way to the matmul
_PASS = {"convert_element_type", "copy", "copy_p", "reduce_precision", "optimization_barrier"}
# ops whose inner jaxpr is evaluated inline when a param flows into them
_CALLS = {"pjit", "jit", "closed_call", "core_call", "remat", "checkpoint", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr", "custom_lin"}
# ops that read a param as a table rather than as a weight (a tied embedding)
_GATHER = {"gather", "dynamic_slice", "take"}


class Site(NamedTuple):
    """One weight-consuming op.

    Attributes:
      path: the param leaf's path (``"Dense_0/kernel"``).
      op: ``"dot_general"`` or ``"conv"``.
      weight: which operand is the param (0 = lhs, 1 = rhs).
      perm: operand axis ``i`` is param axis ``perm[i]``.
      params: the op's own parameters (``dimension_numbers``, strides, ...).
    """

    path: str
    op: str
    weight: int
    perm: tuple[int, ...]
    params: dict


def _inner(eqn):
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        j = eqn.params.get(key)
        if j is not None:
            return j
    return None


def _eval(jaxpr, consts, args, src: dict, hook, gathered: set):
    env = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for v, c in zip(jaxpr.constvars, consts):
        env[v] = c
    for v, a in zip(jaxpr.invars, args):
        env[v] = a
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        prov = [None if isinstance(v, jcore.Literal) else src.get(v) for v in eqn.invars]
        name = eqn.primitive.name
        outs = None
        if any(p is not None for p in prov):
            if name in _PASS:
                src[eqn.outvars[0]] = prov[0]
            elif name == "transpose":
                path, perm = prov[0]
                src[eqn.outvars[0]] = (path, tuple(perm[i] for i in eqn.params["permutation"]))
            elif name in _GATHER:
                gathered.update(p[0] for p in prov if p is not None)
            elif name == "dot_general" and (prov[0] is None) != (prov[1] is None):
                w = 0 if prov[0] is not None else 1
                outs = [_call_hook(hook, Site(prov[w][0], "dot_general", w, prov[w][1], eqn.params), eqn, invals)]
            elif name == "conv_general_dilated" and prov[0] is None and prov[1] is not None:
                outs = [_call_hook(hook, Site(prov[1][0], "conv", 1, prov[1][1], eqn.params), eqn, invals)]
            elif name in _CALLS or (_inner(eqn) is not None and name not in ("scan", "while", "cond")):
                inner = _inner(eqn)
                if inner is not None:
                    closed = inner if hasattr(inner, "jaxpr") else None
                    jx = closed.jaxpr if closed is not None else inner
                    cs = closed.consts if closed is not None else ()
                    sub = {iv: p for iv, p in zip(jx.invars, prov) if p is not None}
                    outs = _eval(jx, cs, invals, sub, hook, gathered)
        if outs is None:
            outs = _bind(eqn, invals)
        for v, o in zip(eqn.outvars, outs):
            env[v] = o
    return [read(v) for v in jaxpr.outvars]


def _bind(eqn, invals):
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
    return out if eqn.primitive.multiple_results else [out]


def _call_hook(hook, site: Site, eqn, invals):
    lhs, rhs = invals
    return hook(site, lhs, rhs, lambda a=lhs, b=rhs: _bind(eqn, [a, b])[0])


def intercept(fn: Callable, hook: Callable, *, on_trace: Callable | None = None) -> Callable:
    """``fn(params, *args)`` with ``hook(site, lhs, rhs, default) -> out`` run at every weight op.

    Args:
      fn: a function whose first argument is a params pytree (e.g. ``model.apply_fn``).
      hook: called (while tracing) at every ``dot_general`` / ``conv_general_dilated`` that
        reads exactly one param leaf; ``default(lhs=lhs, rhs=rhs)`` runs the original op
        (optionally on replaced operands). It must return the op's output.
      on_trace: optional ``on_trace(gathered_paths)``, called once per trace with the set of
        param paths that are also read by a gather (tied embeddings).

    Returns:
      A function of the same arguments, jit-able (each trace evaluates the jaxpr once).
    """

    def wrapped(params, *args):
        leaves, treedef = jax.tree_util.tree_flatten(params)
        names = [p for p, _ in jtree.named_leaves(params)]

        def flat_fn(flat, *a):
            return fn(jax.tree_util.tree_unflatten(treedef, flat), *a)

        closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(leaves, *args)
        jx = closed.jaxpr
        src = {v: (n, tuple(range(np.ndim(a)))) for v, n, a in zip(jx.invars[: len(leaves)], names, leaves)}
        gathered: set = set()
        outs = _eval(jx, closed.consts, [*leaves, *jax.tree_util.tree_leaves(args)], src, hook, gathered)
        if on_trace is not None:
            on_trace(gathered)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs)

    return wrapped


__all__ = ["Site", "intercept"]
