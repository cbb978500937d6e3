"""Sparsity distributions: how a target sparsity is spread over the selected leaves.

* ``"uniform"`` - every leaf gets the target;
* ``"erk"`` - Erdos-Renyi-Kernel (Evci et al. 2020): density of a leaf proportional to
  ``sum(shape) / prod(shape)``, scaled so the total equals the target, leaves whose
  density would exceed 1 kept dense and the rest re-scaled;
* ``"first_last_dense"`` - uniform, but the first and last selected leaves (flattening
  order) are kept dense;
* a ``dict`` ``{path regex: sparsity}`` - an explicit per-path map (first match wins;
  unmatched selected leaves get the target). ``overrides`` applies the same on top of
  any of the above.

Everything is computed with ``jnp`` so the target may be a traced scalar.

>>> import jax.numpy as jnp
>>> shapes = {"a": (100, 100), "b": (10, 10)}
>>> {k: round(float(v), 3) for k, v in erk(shapes, 0.5).items()}
{'a': 0.505, 'b': 0.0}
"""

from __future__ import annotations

import re
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxcompress.pruning.select import check_sparsity

DISTRIBUTIONS = ("uniform", "erk", "first_last_dense")


def uniform(shapes: dict[str, tuple], sparsity) -> dict[str, Any]:
    """The same sparsity for every leaf."""
    s = jnp.asarray(sparsity, jnp.float32)
    return {p: s for p in shapes}


def erk(shapes: dict[str, tuple], sparsity, power: float = 1.0) -> dict[str, Any]:
    """Erdos-Renyi-Kernel per-leaf sparsities with total sparsity ``sparsity``.

    Args:
      shapes: ``{path: shape}`` of the selected leaves.
      sparsity: total target (traced ok).
      power: exponent on the raw ERK ratio (1.0 = the paper).

    Returns:
      ``{path: float32 sparsity}``; ``sum(size * (1 - s)) == (1 - sparsity) * total``.
    """
    paths = list(shapes)
    n = np.array([float(np.prod(shapes[p])) for p in paths], np.float32)
    raw = np.array([float(np.sum(shapes[p])) / float(np.prod(shapes[p])) for p in paths], np.float32) ** power
    n, raw = jnp.asarray(n), jnp.asarray(raw)
    budget = (1.0 - jnp.asarray(sparsity, jnp.float32)) * jnp.sum(n)
    dense = jnp.zeros(n.shape, bool)
    for _ in range(len(paths)):  # each round can only add leaves to the dense set
        rest = budget - jnp.sum(jnp.where(dense, n, 0.0))
        eps = rest / jnp.maximum(jnp.sum(jnp.where(dense, 0.0, n * raw)), 1e-30)
        dense = dense | (eps * raw > 1.0)
    rest = budget - jnp.sum(jnp.where(dense, n, 0.0))
    eps = rest / jnp.maximum(jnp.sum(jnp.where(dense, 0.0, n * raw)), 1e-30)
    density = jnp.where(dense, 1.0, jnp.clip(eps * raw, 0.0, 1.0))
    return {p: 1.0 - density[i] for i, p in enumerate(paths)}


def first_last_dense(shapes: dict[str, tuple], sparsity) -> dict[str, Any]:
    """Uniform, with the first and last selected leaf (flattening order) dense."""
    out = uniform(shapes, sparsity)
    paths = list(shapes)
    for p in (paths[0], paths[-1]):
        out[p] = jnp.float32(0.0)
    return out


def per_path(shapes: dict[str, tuple], sparsity, mapping: dict[str, Any]) -> dict[str, Any]:
    """``{regex: sparsity}`` map (first match wins); other leaves get ``sparsity``.

    Raises ``ValueError`` for a pattern that matches no selected path or a value outside
    ``[0, 1)``.
    """
    out = uniform(shapes, sparsity)
    used = set()
    for p in shapes:
        for pat, v in mapping.items():
            if re.search(pat, p):
                check_sparsity(v, f"sparsity for {pat!r}")
                out[p] = jnp.asarray(v, jnp.float32)
                used.add(pat)
                break
    unused = sorted(set(mapping) - used)
    if unused:
        raise ValueError(f"per-path sparsity pattern(s) {unused} match no pruned parameter; "
                         f"pruned paths: {list(shapes)}")
    return out


def distribute(shapes: dict[str, tuple], sparsity, distribution="uniform",
               overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-leaf sparsities from a total target, a distribution and per-path overrides."""
    check_sparsity(sparsity)
    if not shapes:
        raise ValueError("no parameter selected for pruning")
    if isinstance(distribution, dict):
        out = per_path(shapes, sparsity, distribution)
    elif distribution == "uniform":
        out = uniform(shapes, sparsity)
    elif distribution == "erk":
        out = erk(shapes, sparsity)
    elif distribution == "first_last_dense":
        out = first_last_dense(shapes, sparsity)
    else:
        raise ValueError(f"unknown distribution {distribution!r}; valid: {list(DISTRIBUTIONS)} or a dict")
    if overrides:
        out.update({p: v for p, v in per_path(shapes, sparsity, overrides).items()
                    if any(re.search(pat, p) for pat in overrides)})
    # one buffer per leaf: states are donated to the train step
    return {p: jnp.array(v, jnp.float32, copy=True) for p, v in out.items()}
