"""Quality of compressed sentence embeddings against the float model's.

* :func:`mean_cosine` - mean over sentences of the cosine between the compressed and the float
  embedding of the same sentence (1.0 = identical directions).
* :func:`nn_agreement` - fraction of sentences whose nearest neighbour (cosine, itself
  excluded) within the evaluation set is the same under both models: what a retrieval user sees.

>>> import jax.numpy as jnp
>>> ref = jnp.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
>>> float(mean_cosine(ref, ref)), float(nn_agreement(ref, ref))
(1.0, 1.0)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _check(emb, ref):
    if emb.ndim != 2 or emb.shape != ref.shape:
        raise ValueError(f"embeddings must both be (n, dim) with equal shapes; got {emb.shape} and {ref.shape}")


def _normalize(x):
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosine(emb: jax.Array, ref: jax.Array) -> jax.Array:
    """Per-sentence cosine similarity ``(n,)`` between ``emb`` and ``ref`` (both ``(n, dim)``)."""
    _check(emb, ref)
    return jnp.sum(_normalize(emb) * _normalize(ref), axis=-1)


def mean_cosine(emb: jax.Array, ref: jax.Array) -> jax.Array:
    """Mean of :func:`cosine`."""
    return jnp.mean(cosine(emb, ref))


def nearest_neighbours(emb: jax.Array) -> jax.Array:
    """Index of each row's most cosine-similar other row, ``(n,)``."""
    e = _normalize(emb)
    sim = e @ e.T
    sim = jnp.where(jnp.eye(e.shape[0], dtype=bool), -jnp.inf, sim)
    return jnp.argmax(sim, axis=-1)


def nn_agreement(emb: jax.Array, ref: jax.Array) -> jax.Array:
    """Fraction of rows whose top-1 neighbour under ``emb`` equals that under ``ref``.

    Raises:
      ValueError: on mismatched shapes or fewer than 2 rows.
    """
    _check(emb, ref)
    if emb.shape[0] < 2:
        raise ValueError(f"nn_agreement needs at least 2 sentences, got {emb.shape[0]}")
    return jnp.mean((nearest_neighbours(emb) == nearest_neighbours(ref)).astype(jnp.float32))
