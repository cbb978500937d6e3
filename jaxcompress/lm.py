"""Language modelling: next-token examples from a token stream, and perplexity over a held-out stream.

:func:`windows` cuts a token stream into ``(x, y)`` pairs of ``context`` tokens (``y`` is ``x``
shifted by one), which the ordinary train step (:func:`jaxcompress.train.make_train_step`: its
cross-entropy averages over every position) and the distillation step (token-level KD:
:func:`jaxcompress.distillation.kd` on ``(batch, length, vocab)`` logits) take as they are.
:func:`perplexity` scores a stream with a fixed context and stride: the first window scores all
its tokens, each later window (starting ``stride`` tokens after the previous one) only its last
``stride`` tokens, each conditioned on the ``context - stride`` tokens before it; so every token
after the first is scored exactly once and ``stride = context`` is plain non-overlapping
evaluation.

>>> import numpy as np, jax.numpy as jnp
>>> x, y = windows(np.arange(10), context=4)
>>> x.tolist(), y.tolist()
([[0, 1, 2, 3], [4, 5, 6, 7]], [[1, 2, 3, 4], [5, 6, 7, 8]])
>>> uniform = lambda params, ids: jnp.zeros(ids.shape + (8,))   # p = 1/8 for every token
>>> round(perplexity(uniform, None, np.arange(20) % 8, context=4, stride=2)["perplexity"], 4)
8.0
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress.model import as_model


def windows(tokens, context: int, stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: int32 ``(n, context)`` windows of ``tokens`` and their next tokens (``stride`` default ``context``)."""
    tokens = np.asarray(tokens)
    stride = context if stride is None else stride
    if context < 1 or stride < 1:
        raise ValueError(f"context and stride must be >= 1, got context={context}, stride={stride}")
    n = (tokens.size - 1 - context) // stride + 1
    if tokens.size < context + 1 or n < 1:
        raise ValueError(f"a stream of {tokens.size} tokens holds no window of context={context} (+1 target)")
    idx = np.arange(n)[:, None] * stride + np.arange(context)[None, :]
    return tokens[idx].astype(np.int32), tokens[idx + 1].astype(np.int32)


def check_vocab(model, vocab_size: int, context: int | None = None) -> None:
    """Raise naming the setting if the model's output width or positions disagree with the tokenizer / context."""
    m = as_model(model)
    out = jax.eval_shape(lambda p: m.apply_fn(p, jnp.zeros((1, 2), jnp.int32)), m.params)
    if out.shape[-1] != vocab_size:
        raise ValueError(f"tokenizer vocab_size={vocab_size} but the model outputs {out.shape[-1]} logits")
    max_ctx = getattr(m.module, "context", None)
    if context is not None and max_ctx is not None and context > max_ctx:
        raise ValueError(f"context={context} exceeds the model's {max_ctx} positions")


def perplexity(model, params, tokens, *, context: int, stride: int | None = None, batch_size: int = 16,
               max_tokens: int | None = None) -> dict:
    """Perplexity of ``tokens`` (``exp`` of the mean next-token NLL) with a fixed ``context`` and ``stride``.

    Args:
      model: a :class:`~jaxcompress.model.Model` or an ``apply_fn(params, ids) -> logits``.
      params: the params to run (``None``: the Model's own).
      tokens: a 1-D token stream (e.g. a split of :func:`jaxcompress.data.code.stdlib_code`).
      context: window length; stride: tokens scored per window after the first (default ``context``).
      batch_size: windows per forward pass; max_tokens: score only the first ``max_tokens`` tokens.

    Returns:
      ``{"perplexity", "nll", "tokens"}`` (``tokens``: how many were scored).
    """
    m = as_model(model, params)
    params = m.params if params is None else params
    stride = context if stride is None else stride
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be in [1, context={context}], got {stride}")
    tokens = np.asarray(tokens)
    if max_tokens is not None:
        tokens = tokens[: max_tokens + 1]
    if tokens.ndim != 1 or tokens.size < context + 1:
        raise ValueError(f"tokens must be a 1-D stream of at least context+1={context + 1} tokens, got shape "
                         f"{tokens.shape}")
    x, y = windows(tokens, context, stride)
    weight = np.zeros((len(x), context), np.float32)
    weight[0] = 1.0
    weight[1:, context - stride:] = 1.0

    @jax.jit
    def nll_sum(p, xb, yb, wb):
        logp = jax.nn.log_softmax(m.apply_fn(p, xb).astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(logp, yb[..., None], axis=-1)[..., 0]
        return jnp.sum(nll * wb)

    total, count = 0.0, float(weight.sum())
    for i in range(0, len(x), batch_size):
        xb, yb, wb = x[i:i + batch_size], y[i:i + batch_size], weight[i:i + batch_size]
        if len(xb) < batch_size:  # pad to one shape: one compile
            pad = batch_size - len(xb)
            xb, yb = np.pad(xb, ((0, pad), (0, 0))), np.pad(yb, ((0, pad), (0, 0)))
            wb = np.pad(wb, ((0, pad), (0, 0)))
        total += float(nll_sum(params, xb, yb, wb))
    nll = total / count
    return {"perplexity": math.exp(nll), "nll": nll, "tokens": int(count)}


__all__ = ["windows", "perplexity", "check_vocab"]
