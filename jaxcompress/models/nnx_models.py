"""A Flax NNX model and the adapter that turns any NNX module into ``(apply_fn, params)``.

>>> from flax import nnx
>>> import jax.numpy as jnp
>>> apply_fn, params = nnx_to_apply(NNXMLP(4, (8,), 3, rngs=nnx.Rngs(0)))
>>> apply_fn(params, jnp.zeros((2, 4))).shape
(2, 3)
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx


class NNXMLP(nnx.Module):
    """ReLU MLP written with Flax NNX (same architecture as the linen ``MLP``)."""

    def __init__(self, in_features: int, features: Sequence[int] = (300, 100), num_classes: int = 10, *, rngs: nnx.Rngs):
        widths = [in_features, *features]
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.out = nnx.Linear(widths[-1], num_classes, rngs=rngs)

    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        for layer in self.hidden:
            x = jax.nn.relu(layer(x))
        return self.out(x)


def nnx_to_apply(module: nnx.Module):
    """Split an NNX module into a pure ``apply_fn(params, x)`` and its ``nnx.Param`` state.

    ``params`` is an ``nnx.State`` (a pytree); every jaxcompress transform accepts it
    exactly as it accepts a linen ``params`` dict. Non-parameter state (batch stats,
    RNG counters) is captured and kept fixed, and the module runs in eval mode; for training
    with that state use :func:`jaxcompress.model.from_nnx`.
    """
    from jaxcompress.model import from_nnx

    m = from_nnx(module)
    return m.apply_fn, m.params
