"""Path-aware pytree helpers shared by every transform.

A *path* is the ``/``-joined string of a leaf's keys, e.g. ``"Dense_0/kernel"`` for a
linen ``params`` dict or ``"layers/0/kernel"`` for an ``nnx.State`` (the trailing
``.value`` of an ``nnx.Variable`` is dropped), so the same selector works on both APIs.

A *selector* (the ``where=`` argument of every transform) is one of:

* ``None`` - the default: kernels, i.e. leaves whose last key is ``kernel`` (flax's name
  for the weight of ``Dense``, ``DenseGeneral``, ``Conv``, attention projections; never
  biases, norms or embeddings). Transforms given a ``layout=``
  (:func:`jaxcompress.layout.trace`) default to the weight operands it lists instead;
* a ``str`` - a regular expression searched (``re.search``) in the path;
* a callable ``(path, leaf) -> bool``;
* a pytree of bools with the structure of ``params``.

>>> import jax.numpy as jnp
>>> params = {"Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}}
>>> paths(params)
['Dense_0/bias', 'Dense_0/kernel']
>>> select(params, None)
{'Dense_0': {'bias': False, 'kernel': True}}
"""

from __future__ import annotations

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp  # noqa: F401  (the doctests use it)

Params = Any
Selector = None | str | Callable[[str, Any], bool] | Any


def _key_str(key) -> str | None:
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return None if key.name == "value" else key.name
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def path_str(keypath) -> str:
    """Turn a JAX key path into a ``/``-joined string (``nnx`` ``.value`` dropped)."""
    parts = [_key_str(k) for k in keypath]
    return "/".join(p for p in parts if p is not None)


def named_leaves(tree: Params, is_leaf: Callable[[Any], bool] | None = None) -> list[tuple[str, Any]]:
    """``[(path, leaf), ...]`` in flattening order; ``None`` leaves are skipped.

    ``is_leaf`` stops flattening at matching nodes (e.g. a quantized-array pytree), as in
    ``jax.tree_util.tree_flatten_with_path``.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [(path_str(kp), leaf) for kp, leaf in flat]


def paths(tree: Params) -> list[str]:
    """The paths of all leaves of ``tree`` in flattening order."""
    return [p for p, _ in named_leaves(tree)]


def map_with_path(fn: Callable[[str, Any], Any], tree: Params, *rest: Params) -> Params:
    """``jax.tree.map`` whose function also receives the leaf's path string."""
    return jax.tree_util.tree_map_with_path(lambda kp, x, *r: fn(path_str(kp), x, *r), tree, *rest)


def is_kernel(path: str, leaf: Any) -> bool:
    """Default selector: array leaves named ``kernel`` (not the 2-D q/k/v biases of attention)."""
    return hasattr(leaf, "ndim") and path.rsplit("/", 1)[-1] == "kernel"


def select(tree: Params, where: Selector = None, *, allow_empty: bool = False) -> Params:
    """Evaluate a selector to a bool pytree with the structure of ``tree``.

    Args:
      tree: a params pytree.
      where: see the module docstring.
      allow_empty: if False (default), a selector that matches no leaf raises.

    Returns:
      A pytree of Python bools, one per leaf.

    Raises:
      ValueError: if the selector matches nothing (the message lists the available
        paths) or a bool tree has a different structure.
    """
    if where is None:
        fn = is_kernel
    elif isinstance(where, str):
        pattern = re.compile(where)
        fn = lambda p, x: pattern.search(p) is not None  # noqa: E731
    elif callable(where) and not isinstance(where, (dict, list, tuple)):
        fn = lambda p, x: bool(where(p, x))  # noqa: E731
    else:
        check_same_structure(tree, where, "params", "where")
        sel = jax.tree.map(bool, where)
        fn = None
    if fn is not None:
        sel = map_with_path(fn, tree)
    if not allow_empty and not any(jax.tree.leaves(sel)):
        raise ValueError(
            f"selector {where!r} matches no parameter; available paths: {paths(tree)}"
        )
    return sel


def selected_paths(tree: Params, where: Selector = None) -> list[str]:
    """Paths of the leaves that ``where`` selects."""
    sel = select(tree, where)
    return [p for (p, s) in named_leaves(sel) if s]


def check_same_structure(a: Params, b: Params, name_a: str = "a", name_b: str = "b") -> None:
    """Raise a ``ValueError`` naming the first differing path if structures differ."""
    ta, tb = jax.tree.structure(a), jax.tree.structure(b)
    if ta == tb:
        return
    pa, pb = paths(a), paths(b)
    for x, y in zip(pa, pb):
        if x != y:
            raise ValueError(f"{name_b} differs from {name_a} at path {x!r} (got {y!r})")
    if len(pa) != len(pb):
        longer, which = (pa, name_a) if len(pa) > len(pb) else (pb, name_b)
        extra = longer[min(len(pa), len(pb))]
        raise ValueError(f"{name_b} differs from {name_a}: path {extra!r} only in {which}")
    raise ValueError(f"{name_b} has a different tree structure from {name_a}: {tb} vs {ta}")


def resolve_per_path(tree: Params, default: Any, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Per-leaf values: ``overrides`` maps a path regex to a value, first match wins.

    Returns a dict ``{path: value}`` for every leaf. Raises if an override pattern
    matches no path (so typos are not silently ignored).
    """
    out = {}
    used = set()
    for p in paths(tree):
        val = default
        for pat, v in (overrides or {}).items():
            if re.search(pat, p):
                val = v
                used.add(pat)
                break
        out[p] = val
    unused = set(overrides or {}) - used
    if unused:
        raise ValueError(
            f"per-path override(s) {sorted(unused)} match no parameter; available paths: {paths(tree)}"
        )
    return out


def count_params(tree: Params) -> int:
    """Total number of scalar entries over all array leaves."""
    return int(sum(x.size for x in jax.tree.leaves(tree) if hasattr(x, "size")))


def nbytes(tree: Params) -> int:
    """Total bytes of all array leaves."""
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype")))
