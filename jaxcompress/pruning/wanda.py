"""Wanda (Sun et al., 2024): prune by weight magnitude times input activation norm.

For a linear layer ``y = x @ kernel`` (kernel ``(in, out)``) the score of weight ``(j, o)`` is
``|kernel[j, o]| * ||X_j||_2``, where ``||X_j||_2`` is the L2 norm of input feature ``j`` over
all calibration tokens. Weights compete only with the other weights feeding the *same output*
(the paper's per-output comparison group): an unstructured mask keeps the top ``1 - sparsity``
of each column of the kernel, an N:M mask keeps the top ``n`` of every ``m`` consecutive inputs
of each output. No retraining, no weight update. Magnitude pruning is the same with norms = 1.

>>> import jax.numpy as jnp
>>> k = jnp.array([[1.0, -4.0], [2.0, 1.0], [-3.0, 0.5], [0.1, 2.0]])
>>> s = scores(k, jnp.array([1.0, 1.0, 1.0, 10.0]))
>>> nm_mask(s, 2, 4).astype(int).T.tolist()
[[0, 1, 1, 0], [1, 0, 0, 1]]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcompress.pruning import select


def input_sq_norms(x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Sum over tokens of ``x**2`` per input feature (``(in,)``); add over batches, then ``sqrt``.

    Args:
      x: inputs of a linear layer, ``(..., in)``.
      mask: optional ``x.shape[:-1]`` 0/1 array; masked (padding) tokens are excluded.
    """
    x = x.astype(jnp.float32)
    if mask is not None:
        if mask.shape != x.shape[:-1]:
            raise ValueError(f"mask shape {mask.shape} must equal x.shape[:-1] = {x.shape[:-1]}")
        x = x * mask.astype(jnp.float32)[..., None]
    return jnp.sum(x.reshape(-1, x.shape[-1]) ** 2, axis=0)


def scores(kernel: jax.Array, input_norms: jax.Array) -> jax.Array:
    """Wanda scores ``|kernel| * input_norms[:, None]`` for a kernel ``(in, out)``.

    Raises:
      ValueError: if ``input_norms`` is not ``(in,)``.
    """
    if kernel.ndim != 2 or input_norms.shape != (kernel.shape[0],):
        raise ValueError(f"input_norms shape {input_norms.shape} must be (in,) = ({kernel.shape[0]},) "
                         f"for a 2-D kernel of shape {kernel.shape}")
    return jnp.abs(kernel).astype(jnp.float32) * input_norms.astype(jnp.float32)[:, None]


def per_output_mask(s: jax.Array, sparsity) -> jax.Array:
    """Keep the top ``round((1 - sparsity) * in)`` scores of every output column (``sparsity`` may be traced).

    Each column is an exact counting top-k (:func:`jaxcompress.pruning.select.topk_mask_k`,
    vmapped over the outputs); ties keep the lower input index.
    """
    n_in = s.shape[0]
    keep = jnp.round((1.0 - jnp.asarray(sparsity, jnp.float32)) * n_in).astype(jnp.int32)
    return jax.vmap(lambda col: select.topk_mask_k(col, keep), in_axes=1, out_axes=1)(s)


def nm_mask(s: jax.Array, n: int = 2, m: int = 4) -> jax.Array:
    """N:M mask: in every block of ``m`` consecutive inputs (axis 0) of each output keep the ``n`` largest.

    The selection is :func:`jaxcompress.pruning.select.nm_mask` along the input axis (ties keep
    the lower index).

    Raises:
      ValueError: if ``m`` does not divide the input size or ``not 0 < n < m``.
    """
    if not 0 < n < m or s.shape[0] % m:
        raise ValueError(f"N:M={n}:{m} needs 0 < n < m and m dividing the input size {s.shape[0]} "
                         f"(scores shape {s.shape})")
    return select.nm_mask(s, n, m, axis=0)


def prune(kernel: jax.Array, input_norms: jax.Array | None = None, sparsity=0.5, nm: tuple[int, int] | None = None):
    """Return ``(kernel * mask, mask)``: Wanda if ``input_norms`` is given, else magnitude.

    Args:
      kernel: ``(in, out)``.
      input_norms: ``||X_j||_2`` per input (``sqrt`` of summed :func:`input_sq_norms`), or None.
      sparsity: unstructured per-output sparsity (ignored when ``nm`` is given).
      nm: static ``(n, m)`` for N:M sparsity, e.g. ``(2, 4)``.
    """
    norms = jnp.ones(kernel.shape[0], jnp.float32) if input_norms is None else input_norms
    s = scores(kernel, norms)
    mask = nm_mask(s, *nm) if nm is not None else per_output_mask(s, sparsity)
    return kernel * mask.astype(kernel.dtype), mask
