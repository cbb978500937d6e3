"""Small Flax linen models for the built-in datasets.

Every model maps a batch of flat inputs to logits; layer names are linen's defaults
(``Dense_0``, ``Conv_1`` ...) so parameter paths are predictable for selectors.

>>> import jax, jax.numpy as jnp
>>> m = MLP(features=(8,), num_classes=3)
>>> params = m.init(jax.random.key(0), jnp.zeros((1, 4)))["params"]
>>> m.apply({"params": params}, jnp.zeros((2, 4))).shape
(2, 3)
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
    """Fully connected ReLU network; default widths 300-100 (LeNet-300-100)."""

    features: Sequence[int] = (300, 100)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        for f in self.features:
            x = nn.relu(nn.Dense(f)(x))
        return nn.Dense(self.num_classes)(x)


class CNN2D(nn.Module):
    """Small 2-D CNN for 8x8 digits: conv 3x3 (16) -> conv 3x3 stride 2 (32) -> dense."""

    channels: Sequence[int] = (16, 32)
    image_shape: tuple[int, int] = (8, 8)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], *self.image_shape, 1))
        for i, c in enumerate(self.channels):
            x = nn.relu(nn.Conv(c, (3, 3), strides=(1, 1) if i == 0 else (2, 2), padding="SAME")(x))
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_classes)(x)


class CNN1D(nn.Module):
    """The MNIST-1D CNN: 3 x (conv k=5, padding 1, strides 1, 2, 2; ReLU) -> dense (~8.4K params)."""

    channels: Sequence[int] = (25, 25, 25)
    strides: Sequence[int] = (1, 2, 2)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))[..., None]
        for c, s in zip(self.channels, self.strides):
            x = nn.relu(nn.Conv(c, (5,), strides=(s,), padding=((1, 1),))(x))
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_classes)(x)


def num_flat_features(x_shape) -> int:
    return int(jnp.prod(jnp.array(x_shape[1:])))
