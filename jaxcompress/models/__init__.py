"""The model zoo: linen MLP / CNN2D / CNN1D and an NNX MLP, each a :class:`jaxcompress.model.Model`.

A zoo model is the same contract a user's own model is (``from_linen`` / ``from_nnx``): it has
``params``, ``state`` (``{}`` here), ``forward`` and the eval-mode ``apply_fn(params, x)``.

>>> import jax
>>> m = create("mlp", input_shape=(64,), num_classes=10, rng=jax.random.key(0))
>>> m.apply_fn(m.params, jax.numpy.zeros((2, 64))).shape
(2, 10)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcompress.model import Model, from_linen, from_nnx
from jaxcompress.models import bert, gpt
from jaxcompress.models.linen import CNN1D, CNN2D, MLP
from jaxcompress.models.nnx_models import NNXMLP, nnx_to_apply

MODELS = ("mlp", "cnn2d", "cnn1d", "nnx_mlp")
DEFAULT_MODEL = {"digits": "mlp", "mnist1d": "cnn1d"}


def linen_apply(module):
    """``apply_fn(params, x)`` for a linen module whose only collection is ``params``."""
    return lambda params, x: module.apply({"params": params}, x)


def create(name: str, input_shape: tuple[int, ...], num_classes: int = 10, rng=None, **kwargs) -> Model:
    """Build and initialise a zoo model by name.

    Args:
      name: one of ``MODELS``.
      input_shape: shape of one example (without batch), e.g. ``(64,)``.
      num_classes: output width.
      rng: a PRNG key or int seed (default 0).
      **kwargs: forwarded to the module (e.g. ``features=(100, 100)``).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {list(MODELS)}")
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    rng = jax.random.key(0) if rng is None else (jax.random.key(rng) if isinstance(rng, int) else rng)
    dummy = jnp.zeros((1, *input_shape), jnp.float32)
    if name == "nnx_mlp":
        return from_nnx(NNXMLP(int(dummy.size), num_classes=num_classes, rngs=nnx.Rngs(rng), **kwargs))
    if name == "mlp":
        module = MLP(num_classes=num_classes, **kwargs)
    elif name == "cnn2d":
        if "image_shape" not in kwargs:
            side = int(round(dummy.size ** 0.5))
            if side * side != dummy.size:
                raise ValueError(f"cnn2d needs a square input or image_shape=; got input_shape={input_shape}")
            kwargs["image_shape"] = (side, side)
        module = CNN2D(num_classes=num_classes, **kwargs)
    else:
        module = CNN1D(num_classes=num_classes, **kwargs)
    return from_linen(module, {"params": module.init(rng, dummy)["params"]})


__all__ = ["bert", "gpt", "MODELS", "DEFAULT_MODEL", "Model", "create", "linen_apply", "MLP", "CNN1D", "CNN2D", "NNXMLP", "nnx_to_apply"]
