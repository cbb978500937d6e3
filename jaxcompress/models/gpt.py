"""A GPT-style decoder in plain Flax linen: pre-LN blocks, causal self-attention, GELU MLP.

Written as any user would write it: ``nn.Dense`` projections, flax's own
``nn.dot_product_attention`` with a causal mask, learned positions, untied (default) or tied
embeddings. It imports no technique: the calibration engine compresses it by intercepting its
``dot_general`` ops (blocks ``blocks_<i>``), like any user's model.

>>> import jax, jax.numpy as jnp
>>> m = create(vocab_size=64, context=16, d_model=32, n_layers=2, n_heads=2)
>>> m.apply_fn(m.params, jnp.zeros((2, 16), jnp.int32)).shape
(2, 16, 64)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcompress.model import Model, from_linen


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    d_model: int
    n_heads: int
    mlp_ratio: int = 4
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        b, t, d = x.shape
        hd = d // self.n_heads
        h = nn.LayerNorm(name="ln_1")(x)
        q, k, v = (nn.Dense(d, name=n)(h).reshape(b, t, self.n_heads, hd) for n in ("query", "key", "value"))
        mask = nn.make_causal_mask(jnp.ones((b, t), jnp.int32))
        a = nn.dot_product_attention(q, k, v, mask=mask).reshape(b, t, d)
        x = x + nn.Dropout(self.dropout, deterministic=not train)(nn.Dense(d, name="out")(a))
        h = nn.LayerNorm(name="ln_2")(x)
        h = nn.Dense(d * self.mlp_ratio, name="fc")(h)
        h = nn.Dense(d, name="proj")(nn.gelu(h))
        return x + nn.Dropout(self.dropout, deterministic=not train)(h)


class GPT(nn.Module):
    """Token ids ``(batch, length)`` -> next-token logits ``(batch, length, vocab_size)``."""

    vocab_size: int
    context: int = 128
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    tie_embeddings: bool = False

    @nn.compact
    def __call__(self, ids, train: bool = False):
        if ids.shape[-1] > self.context:
            raise ValueError(f"input length {ids.shape[-1]} exceeds the model's context={self.context} positions")
        embed = nn.Embed(self.vocab_size, self.d_model, name="wte")
        pos = self.param("wpe", nn.initializers.normal(0.02), (self.context, self.d_model))
        x = embed(ids) + pos[None, : ids.shape[-1]]
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        for i in range(self.n_layers):
            x = Block(self.d_model, self.n_heads, self.mlp_ratio, self.dropout, name=f"blocks_{i}")(x, train)
        x = nn.LayerNorm(name="ln_f")(x)
        if self.tie_embeddings:
            return embed.attend(x)
        return nn.Dense(self.vocab_size, use_bias=False, name="lm_head")(x)


def create(vocab_size: int, context: int = 128, rng=0, **kwargs) -> Model:
    """An initialised :class:`GPT` as a :class:`~jaxcompress.model.Model` (``kwargs``: GPT fields)."""
    if kwargs.get("d_model", 256) % kwargs.get("n_heads", 4):
        raise ValueError(f"d_model={kwargs.get('d_model', 256)} must be divisible by n_heads={kwargs.get('n_heads', 4)}")
    module = GPT(vocab_size=vocab_size, context=context, **kwargs)
    key = jax.random.key(rng) if isinstance(rng, int) else rng
    params = jax.jit(module.init)(key, jnp.zeros((1, context), jnp.int32))
    return from_linen(module, {"params": params["params"]})


#: how the calibration engine sees a GPT: one block per ``blocks_<i>``
BLOCKS = r"blocks_\d+"

__all__ = ["GPT", "Block", "create", "BLOCKS"]
