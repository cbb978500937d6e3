"""Small models owned by the calibration tests (not the zoo), built with fixed seeds.

* :class:`Encoder` - a linen pre-LN transformer encoder: ``nn.Embed``, blocks ``block_0``,
  ``block_1`` (LayerNorm -> q/k/v ``DenseGeneral((heads, head_dim))`` -> masked attention ->
  out-projection ``DenseGeneral(d, axis=(-2, -1))`` -> residual -> LayerNorm -> ``x @ w1`` ->
  gelu -> ``einsum(f, w2)`` -> residual), a final LayerNorm and a Dense head. ``twice=True``
  feeds each block ``h * 2`` (so block 1 does not take block 0's output as its first argument).
* :class:`NEncoder` - the same architecture in NNX (``nnx.List`` of blocks, ``nnx.LinearGeneral``
  and raw ``nnx.Param`` matmuls).
* :class:`CNN` - a linen ``Conv`` 3x3 (stride 2, SAME) + ``Dense``.

Inputs of the transformers are ``(ids, mask)``: ``ids`` ``(B, T)`` int32, ``mask`` ``(B, T)``
0/1 with padding at the end of some rows.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcompress.model import from_linen, from_nnx

VOCAB, D, HEADS, HD, FF, CLASSES = 40, 16, 2, 8, 32, 5
B, T = 2, 6
LINEN_WEIGHTS = {f"block_{i}/{w}" for i in range(2)
                 for w in ("q/kernel", "k/kernel", "v/kernel", "out/kernel", "w1", "w2")} | {"head/kernel"}
NNX_WEIGHTS = {w.replace("block_", "blocks/") for w in LINEN_WEIGHTS}
BLOCK_WEIGHTS = sorted(("k/kernel", "out/kernel", "q/kernel", "v/kernel", "w1", "w2"))


def attention(q, k, v, mask):
    """Softmax attention over ``(B, T, heads, hd)`` with an additive padding mask ``(B, T)``."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    bias = ((1.0 - mask.astype(jnp.float32)) * -1e9)[:, None, None, :]
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits + bias, axis=-1), v)


class Block(nn.Module):
    @nn.compact
    def __call__(self, h, mask):
        x = nn.LayerNorm(name="ln1")(h)
        q, k, v = (nn.DenseGeneral((HEADS, HD), name=n)(x) for n in ("q", "k", "v"))
        h = h + nn.DenseGeneral(D, axis=(-2, -1), name="out")(attention(q, k, v, mask))
        x = nn.LayerNorm(name="ln2")(h)
        w1 = self.param("w1", nn.initializers.lecun_normal(), (D, FF))
        w2 = self.param("w2", nn.initializers.lecun_normal(), (FF, D))
        f = nn.gelu(x @ w1)
        return h + jnp.einsum("btf,fd->btd", f, w2)


class Encoder(nn.Module):
    twice: bool = False

    @nn.compact
    def __call__(self, ids, mask):
        h = nn.Embed(VOCAB, D, name="embed")(ids)
        for i in range(2):
            h = Block(name=f"block_{i}")(h * 2.0 if self.twice else h, mask)
        return nn.Dense(CLASSES, name="head")(nn.LayerNorm(name="ln_f")(h))


class NBlock(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.ln1 = nnx.LayerNorm(D, rngs=rngs)
        self.q = nnx.LinearGeneral(D, (HEADS, HD), rngs=rngs)
        self.k = nnx.LinearGeneral(D, (HEADS, HD), rngs=rngs)
        self.v = nnx.LinearGeneral(D, (HEADS, HD), rngs=rngs)
        self.out = nnx.LinearGeneral((HEADS, HD), D, axis=(-2, -1), rngs=rngs)
        self.ln2 = nnx.LayerNorm(D, rngs=rngs)
        self.w1 = nnx.Param(init(rngs.params(), (D, FF)))
        self.w2 = nnx.Param(init(rngs.params(), (FF, D)))

    def __call__(self, h, mask):
        x = self.ln1(h)
        h = h + self.out(attention(self.q(x), self.k(x), self.v(x), mask))
        f = nnx.gelu(self.ln2(h) @ self.w1[...])
        return h + jnp.einsum("btf,fd->btd", f, self.w2[...])


class NEncoder(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(VOCAB, D, rngs=rngs)
        self.blocks = nnx.List([NBlock(rngs) for _ in range(2)])
        self.ln_f = nnx.LayerNorm(D, rngs=rngs)
        self.head = nnx.Linear(D, CLASSES, rngs=rngs)

    def __call__(self, ids, mask):
        h = self.embed(ids)
        for blk in self.blocks:
            h = blk(h, mask)
        return self.head(self.ln_f(h))


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2), padding="SAME", name="conv")(x))
        return nn.Dense(4, name="head")(x.reshape(x.shape[0], -1))


def token_batches(n: int = 3, seed: int = 0):
    """``n`` batches ``(ids, mask)``; row 1 of every batch is padded (its last 1..3 tokens are 0)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ids = rng.integers(0, VOCAB, (B, T)).astype(np.int32)
        mask = np.ones((B, T), np.int32)
        mask[1, T - 1 - i % 3:] = 0
        out.append((jnp.asarray(ids), jnp.asarray(mask)))
    return out


@pytest.fixture(scope="session")
def batches():
    return token_batches(2)


def linen_encoder(twice: bool = False):
    net = Encoder(twice=twice)
    ids, mask = token_batches(1)[0]
    return from_linen(net, jax.jit(net.init)(jax.random.key(0), ids, mask))


@pytest.fixture(scope="session")
def linen_model():
    return linen_encoder()


@pytest.fixture(scope="session")
def nnx_model():
    return from_nnx(NEncoder(nnx.Rngs(0)))


@pytest.fixture(scope="session")
def cnn_model():
    net = CNN()
    return from_linen(net, jax.jit(net.init)(jax.random.key(1), jnp.zeros((2, 8, 8, 3))))


@pytest.fixture(scope="session")
def images():
    return jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 8, 3)).astype(np.float32))
