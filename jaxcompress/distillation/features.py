"""Intermediate features without editing model code, for linen and NNX models alike.

:func:`with_features` turns a module into ``apply(params, x) -> (logits, {path: feature})``.
Features are the outputs of submodules (linen ``capture_intermediates``; NNX
``nnx.capture(..., method_outputs=nnx.Intermediate)``) plus anything the model ``sow``\\ s
into the ``intermediates`` collection / as ``nnx.Intermediate``. Paths are ``/``-joined
module paths with the ``__call__`` dropped: ``"Conv_1"`` (linen), ``"hidden/0"`` (NNX);
other methods keep their name (``"encoder/features"``); a module called twice gives
``"Dense_0"`` and ``"Dense_0/1"``. Only the requested features leave the function, so XLA
drops the rest.

>>> import jax, jax.numpy as jnp
>>> from jaxcompress import models
>>> m = models.create("cnn1d", (40,))
>>> available_features(m.module, m.params, jnp.zeros((1, 40)))
['Conv_0', 'Conv_1', 'Conv_2', 'Dense_0']
>>> logits, feats = with_features(m.module, ["Conv_1"])(m.params, jnp.zeros((2, 40)))
>>> feats["Conv_1"].shape
(2, 18, 25)
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
from flax import nnx

from jaxcompress.tree import named_leaves


def _clean(path: str) -> str:
    parts = path.split("/")
    if parts and parts[0] == "intermediates":
        parts = parts[1:]
    if parts and parts[-1] == "0":  # first (usually only) call / sow
        parts = parts[:-1]
    return "/".join(p for p in parts if p != "__call__")


def _collect(tree) -> dict:
    out = {}
    for p, leaf in named_leaves(tree):
        name = _clean(p)
        if name:  # the empty path is the model's own output (the logits)
            out[name] = leaf
    return out


def _linen_all(module: nn.Module, params, x, **kwargs):
    logits, state = module.apply({"params": params}, x, capture_intermediates=True,
                                 mutable=["intermediates"], **kwargs)
    return logits, _collect(state.get("intermediates", {}))


def _nnx_split(module: nnx.Module):
    graphdef, _, rest = nnx.split(module, nnx.Param, ...)

    def run_all(params, x, **kwargs):
        mod = nnx.merge(graphdef, params, rest)
        logits, inter = nnx.capture(mod, nnx.Intermediate, method_outputs=nnx.Intermediate)(x, **kwargs)
        return logits, _collect(inter)

    return run_all


def _runner(module) -> Callable:
    if isinstance(module, nn.Module):
        return lambda params, x, **kw: _linen_all(module, params, x, **kw)
    if isinstance(module, nnx.Module):
        return _nnx_split(module)
    raise ValueError(f"expected a flax linen or nnx Module, got {type(module).__name__}")


def _select(feats: dict, paths: Sequence[str], who: str) -> dict:
    missing = [p for p in paths if p not in feats]
    if missing:
        raise ValueError(f"{who} feature path(s) {missing} not found; available: {sorted(feats)}")
    return {p: feats[p] for p in paths}


def available_features(module, params, x) -> list[str]:
    """The feature paths :func:`with_features` can capture for ``module`` on input ``x``."""
    run = _runner(module)
    _, feats = jax.eval_shape(run, params, x)
    return sorted(feats)


def with_features(module, paths: Sequence[str], who: str = "model") -> Callable:
    """``apply(params, x) -> (logits, {path: feature})`` for a linen or NNX ``module``.

    Args:
      module: a ``flax.linen.Module`` (params are its ``params`` collection) or an
        ``nnx.Module`` (params are its ``nnx.Param`` state; other state is kept fixed).
      paths: feature paths to return.
      who: name used in error messages (``"student"``, ``"teacher"``).

    Raises:
      ValueError: (when traced) if a path does not exist; the message lists the available ones.
    """
    if isinstance(paths, str):
        paths = [paths]
    paths = list(paths)
    run = _runner(module)

    def apply(params, x):
        logits, feats = run(params, x)
        return logits, _select(feats, paths, who)

    return apply
