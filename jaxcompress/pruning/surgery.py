"""Structured surgery: physically remove pruned units from the zoo's linen models.

:func:`shrink` takes a model module (``MLP``, ``CNN1D`` or ``CNN2D``), its params and
masks, and returns a module with smaller widths and the matching smaller params. A
hidden unit / filter is removed when, after masking, its kernel column (filter) and its
bias are all zero: it then outputs ``relu(0) = 0`` everywhere, so dropping it - and the
rows / input channels of the next layer that read it, through ``flatten`` for the last
conv - leaves the outputs unchanged (up to float summation order).

>>> import jax, jax.numpy as jnp
>>> from jaxcompress.models import MLP
>>> mod = MLP(features=(4,), num_classes=2)
>>> p = mod.init(jax.random.key(0), jnp.zeros((1, 3)))["params"]
>>> p = {"Dense_0": {"kernel": p["Dense_0"]["kernel"].at[:, :2].set(0.0),
...                  "bias": jnp.zeros(4)}, "Dense_1": p["Dense_1"]}
>>> small, sp, info = shrink(mod, p)
>>> small.features, sp["Dense_0"]["kernel"].shape, info["params_after"] < info["params_before"]
((2,), (3, 2), True)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import tree
from jaxcompress.models.linen import CNN1D, CNN2D, MLP
from jaxcompress.pruning import masks as M


def _alive(kernel, bias) -> np.ndarray:
    k = np.asarray(kernel)
    alive = np.any(k.reshape(-1, k.shape[-1]) != 0, axis=0) | (np.asarray(bias) != 0)
    if not alive.any():  # keep one (zero) unit so the layer still exists
        alive[0] = True
    return alive


def _layers(module, params):
    if isinstance(module, MLP):
        names = [f"Dense_{i}" for i in range(len(module.features) + 1)]
    elif isinstance(module, (CNN1D, CNN2D)):
        names = [f"Conv_{i}" for i in range(len(module.channels))] + ["Dense_0"]
    else:
        raise ValueError(f"surgery supports the zoo's linen MLP, CNN1D and CNN2D, got {type(module).__name__}")
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"params do not match {type(module).__name__}: missing {missing}; have {sorted(params)}")
    return names


def shrink(module, params, masks=None) -> tuple[Any, dict, dict]:
    """Remove dead hidden units / filters; returns ``(small_module, small_params, info)``.

    Args:
      module: a zoo ``MLP``, ``CNN1D`` or ``CNN2D`` (linen).
      params: its ``params`` dict.
      masks: optional mask tree (``None`` leaves untouched); applied before surgery.

    Returns:
      The smaller module, its params, and ``info`` with ``widths_before/after`` and
      ``params_before/after``.

    Raises:
      ValueError: unsupported module, mismatching params/masks, or pruned output units.
    """
    if masks is not None:
        M.check_masks(params, masks)
        params = M.apply_masks(params, masks)
    names = _layers(module, params)
    p = jax.tree.map(np.asarray, dict(params))
    hidden = names[:-1]
    alive = [_alive(p[n]["kernel"], p[n]["bias"]) for n in hidden]
    last = p[names[-1]]
    out_dead = ~np.any(np.asarray(last["kernel"]).reshape(-1, last["kernel"].shape[-1]) != 0, axis=0)
    out_dead &= np.asarray(last["bias"]) == 0
    if out_dead.any():
        raise ValueError(f"output units of {names[-1]!r} are pruned ({int(out_dead.sum())}); "
                         "surgery keeps the logits - exclude the last layer from structured pruning")
    new = {}
    prev = None  # kept indices of the previous layer's outputs
    for i, n in enumerate(names):
        k, b = p[n]["kernel"], p[n]["bias"]
        if prev is not None:
            if i == len(names) - 1 and k.ndim == 2 and not isinstance(module, MLP):  # flatten -> Dense
                c = len(alive[i - 1])
                spatial = k.shape[0] // c
                k = k.reshape(spatial, c, k.shape[-1])[:, prev, :].reshape(-1, k.shape[-1])
            else:
                k = np.take(k, prev, axis=-2)
        if i < len(hidden):
            keep = np.flatnonzero(alive[i])
            k, b = k[..., keep], b[keep]
            prev = keep
        new[n] = {"kernel": jnp.asarray(k), "bias": jnp.asarray(b)}
    widths = tuple(int(a.sum()) for a in alive)
    if isinstance(module, MLP):
        small = module.clone(features=widths)
        before = tuple(module.features)
    else:
        small = module.clone(channels=widths)
        before = tuple(module.channels)
    info = {"widths_before": before, "widths_after": widths,
            "params_before": tree.count_params(params), "params_after": tree.count_params(new)}
    return small, new, info


def flops(apply_fn, params, x) -> float:
    """FLOPs of one forward pass on ``x`` from XLA's cost analysis."""
    cost = jax.jit(apply_fn).lower(params, x).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", float("nan")))
