"""Streaming calibration statistics of every weight's input, captured by op interception.

:func:`collect` runs a model (any function of a params pytree: ``model.apply_fn``, one block
of it, an NNX module's forward) over calibration batches with
:func:`jaxcompress.interception.intercept` on every weight op. At each op the activation
operand is brought to the canonical ``(rows, K)`` view of the weight (:func:`activation_rows`:
a Dense input ``(..., in)``, a ``DenseGeneral`` / ``einsum`` input with several contracted
axes, a convolution's patches) and reduced to statistics inside the jitted program; only the
statistics leave it, and the host adds them over batches. Memory is one batch's activations
plus the statistics, whatever the number of calibration batches.

Statistics (``STATS``), each over the rows a ``token_mask`` keeps:

* ``"hessian"`` - ``H = 2 X^T X / n`` ``(K, K)`` (GPTQ, SparseGPT, AWQ's loss);
* ``"sqnorm"`` - ``sum_rows x_j^2`` ``(K,)`` (Wanda: ``||X_j||_2 = sqrt``);
* ``"absmax"`` - ``max_rows |x_j|`` ``(K,)`` (SmoothQuant, static per-tensor ranges);
* ``"absmean"`` - ``mean_rows |x_j|`` ``(K,)`` (AWQ);
* ``"minmax"`` - per-tensor ``(min, max)`` of the input (static activation ranges);
* ``"samples"`` - a strided subsample of the kept rows (whole rows, so every channel is seen; at
  most ``max_samples`` values per batch, or one row if wider), for the histogram observers
  (``percentile``, ``mse``, ``entropy``).

K is ordered as the weight's input axes in the param's own axis order, so that
``rows @ W.transpose(inputs + outputs).reshape(K, N)`` is the op's output (:func:`kernel_2d`).

>>> import jax, jax.numpy as jnp
>>> f = lambda p, x: jnp.tanh(x @ p["a"]) @ p["b"]
>>> params = {"a": jnp.ones((3, 4)), "b": jnp.ones((4, 2))}
>>> st = collect(f, params, [jnp.ones((5, 3)), -jnp.ones((5, 3))], ("hessian", "absmax"))
>>> st["a"]["hessian"].shape, st["b"]["absmax"].shape, float(st["a"]["hessian"][0, 0])
((3, 3), (4,), 2.0)
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress.interception import Site, intercept
from jaxcompress.layout import WeightLayout, site_layout

STATS = ("hessian", "sqnorm", "absmax", "absmean", "minmax", "samples")


def _check_site(site: Site, x) -> None:
    if site.op == "dot_general" and site.params["dimension_numbers"][1][site.weight]:
        raise ValueError(f"parameter {site.path!r} is read by a batched dot_general (batch dims "
                         f"{site.params['dimension_numbers'][1]}); calibration needs a plain weight operand")
    if site.op == "conv" and (site.params["feature_group_count"] != 1 or site.params["batch_group_count"] != 1):
        raise ValueError(f"parameter {site.path!r} is a grouped / depthwise convolution kernel "
                         f"(feature_group_count={site.params['feature_group_count']}); calibration supports "
                         f"ungrouped convolutions only")


def activation_rows(site: Site, lhs, rhs) -> tuple[jax.Array, tuple[int, ...]]:
    """The activation of a weight op as ``(rows, K)`` and the shape of its row dims (for masks)."""
    x = rhs if site.weight == 0 else lhs
    w = lhs if site.weight == 0 else rhs
    _check_site(site, x)
    perm = site.perm
    if site.op == "dot_general":
        (lc, rc), _ = site.params["dimension_numbers"]
        xc, wc = (rc, lc) if site.weight == 0 else (lc, rc)
        order = [xa for _, xa in sorted(zip((perm[a] for a in wc), xc))]
        free = [a for a in range(x.ndim) if a not in xc]
        rows = jnp.transpose(x, free + order)
        lead = tuple(x.shape[a] for a in free)
        return rows.reshape(-1, int(np.prod([x.shape[a] for a in xc], dtype=int))), lead
    p = site.params
    dn = p["dimension_numbers"]
    rhs_spec = dn.rhs_spec
    window = tuple(w.shape[a] for a in rhs_spec[2:])
    patches = jax.lax.conv_general_dilated_patches(
        x, window, p["window_strides"], p["padding"], p["lhs_dilation"], p["rhs_dilation"], dn)
    feat = dn.out_spec[1]
    free = [a for a in range(patches.ndim) if a != feat]
    pt = jnp.transpose(patches, free + [feat])
    lead = pt.shape[:-1]
    c = x.shape[dn.lhs_spec[1]]
    pt = pt.reshape(*lead, c, *window)  # features are (C, *window) in rhs_spec's spatial order
    axes = [perm[rhs_spec[1]], *(perm[a] for a in rhs_spec[2:])]  # param axis of each feature dim
    order = [i for _, i in sorted(zip(axes, range(len(axes))))]
    pt = jnp.transpose(pt, (*range(len(lead)), *(len(lead) + i for i in order)))
    return pt.reshape(-1, int(np.prod(pt.shape[len(lead):]))), tuple(lead)


def kernel_2d(w, wl: WeightLayout):
    """``w`` as the canonical ``(K, N)`` matrix of its layout (inputs, then outputs, each in axis order)."""
    k = int(np.prod([w.shape[a] for a in wl.inputs], dtype=int))
    return jnp.transpose(w, (*wl.inputs, *wl.outputs)).reshape(k, -1)


def kernel_from_2d(w2, wl: WeightLayout, shape: tuple[int, ...]):
    """Inverse of :func:`kernel_2d` for a weight of ``shape``."""
    order = (*wl.inputs, *wl.outputs)
    t = w2.reshape(tuple(shape[a] for a in order))
    return jnp.transpose(t, tuple(int(i) for i in np.argsort(order)))


def _row_mask(lead, mask, n_rows):
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if tuple(lead[: mask.ndim]) != tuple(mask.shape):
        return None
    m = jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (len(lead) - mask.ndim)), lead)
    return m.reshape(n_rows).astype(jnp.float32)


def _partial(kind: str, rows, m, max_samples: int):
    """This batch's contribution to statistic ``kind`` (summed / maxed over batches by :func:`_combine`)."""
    x = rows.astype(jnp.float32)
    n = jnp.float32(x.shape[0]) if m is None else jnp.sum(m)
    xm = x if m is None else x * m[:, None]
    if kind == "hessian":
        return {"sum": xm.T @ xm, "n": n}
    if kind == "sqnorm":
        return {"sum": jnp.sum(xm * xm, axis=0)}
    if kind == "absmax":
        return {"max": jnp.max(jnp.abs(xm), axis=0)}
    if kind == "absmean":
        return {"sum": jnp.sum(jnp.abs(xm), axis=0), "n": n}
    if kind == "minmax":
        keep = jnp.ones(x.shape[0], bool) if m is None else m > 0
        return {"min": jnp.min(jnp.where(keep[:, None], x, jnp.inf)), "max": jnp.max(jnp.where(keep[:, None], x, -jnp.inf))}
    if kind == "samples":
        # whole rows, strided (a flat stride would see the same few channels of every row)
        per = max(1, max_samples // x.shape[1])  # rows kept: at most max_samples values (one row at least)
        stride = max(1, -(-x.shape[0] // per))
        keep = jnp.ones(x.shape[0], bool) if m is None else m > 0
        return {"values": jnp.where(keep[:, None], x, jnp.nan)[::stride].reshape(-1)}
    raise ValueError(f"unknown statistic {kind!r}; valid: {STATS}")


def _combine(a: dict, b: dict) -> dict:
    out = {}
    for k in a:
        if k == "max":
            out[k] = jnp.maximum(a[k], b[k])
        elif k == "min":
            out[k] = jnp.minimum(a[k], b[k])
        elif k == "values":
            out[k] = np.concatenate([a[k], b[k]])
        else:
            out[k] = a[k] + b[k]
    return out


def _finish(kind: str, s: dict):
    if kind == "hessian":
        return 2.0 * s["sum"] / jnp.maximum(s["n"], 1.0)
    if kind == "sqnorm":
        return s["sum"]
    if kind == "absmax":
        return s["max"]
    if kind == "absmean":
        return s["sum"] / jnp.maximum(s["n"], 1.0)
    if kind == "minmax":
        return (s["min"], s["max"])
    v = np.asarray(s["values"])
    return v[~np.isnan(v)]


def _shapes(tree):
    return jax.tree.map(lambda a: (tuple(np.shape(a)), str(np.asarray(a).dtype) if not hasattr(a, "dtype") else str(a.dtype)), tree)


def check_batches(batches: Sequence, who: str = "calibration") -> list:
    """The batches as a list; ``ValueError`` if there are none or their structures / shapes differ (names the batch)."""
    batches = list(batches)
    if not batches:
        raise ValueError(f"{who} needs at least one batch; got zero batches")
    first = _shapes(batches[0])
    for i, b in enumerate(batches[1:], 1):
        if _shapes(b) != first:
            raise ValueError(f"{who} batch {i} has shapes {_shapes(b)} but batch 0 has {first}; calibration "
                             f"batches must share one structure and shape (pad them to one length)")
    return batches


def statistics_fn(fn: Callable, stats, *, token_mask: Callable | None = None, where: Callable | None = None,
                  max_samples: int = 65536) -> Callable:
    """``step(params, inputs) -> {path: {stat: partial}}`` (jit-able): one batch's statistics.

    Args:
      fn: ``fn(params, inputs)``; every weight op inside it is intercepted.
      stats: the statistics for every weight (a tuple of ``STATS`` names) or ``{path: tuple}``.
      token_mask: optional ``token_mask(inputs) -> mask``; rows of an activation whose leading
        dims start with ``mask.shape`` are kept where the mask is non-zero (padding tokens out).
        Activations whose leading dims do not (e.g. after pooling) use every row.
      where: optional ``where(path) -> bool`` restricting which weights are observed.
    """
    for s in (stats.values() if isinstance(stats, dict) else [stats]):
        for k in s:
            if k not in STATS:
                raise ValueError(f"unknown statistic {k!r}; valid: {STATS}")

    def step(params, inputs):
        mask = None if token_mask is None else token_mask(inputs)
        out: dict = {}

        def hook(site, lhs, rhs, default):
            kinds = stats.get(site.path, ()) if isinstance(stats, dict) else stats
            if kinds and (where is None or where(site.path)):
                rows, lead = activation_rows(site, lhs, rhs)
                m = _row_mask(lead, mask, rows.shape[0])
                part = {k: _partial(k, rows, m, max_samples) for k in kinds}
                if site.path in out:  # a weight read twice: its statistics add up
                    part = {k: _combine(out[site.path][k], v) for k, v in part.items()}
                out[site.path] = part
            return default()

        intercept(fn, hook)(params, inputs)
        return out

    return step


def collect(fn: Callable, params, batches: Iterable, stats, *, token_mask: Callable | None = None,
            where: Callable | None = None, max_samples: int = 65536) -> dict:
    """Statistics of every weight op's input over ``batches``: ``{path: {stat: value}}``.

    Args:
      fn, stats, token_mask, where, max_samples: see :func:`statistics_fn`.
      params: the params ``fn`` runs with.
      batches: the calibration inputs (one structure and shape: :func:`check_batches`).

    Raises:
      ValueError: no batch, batches of differing shapes, or no weight op observed.
    """
    batches = check_batches(batches)
    step = jax.jit(statistics_fn(fn, stats, token_mask=token_mask, where=where, max_samples=max_samples))
    st = accumulate(step(params, b) for b in batches)
    if not st:
        raise ValueError("no dot_general / conv_general_dilated in the model reads a parameter as its weight "
                         "(or `where` excluded them all): nothing to calibrate")
    return st


def accumulate(parts: Iterable[dict]) -> dict:
    """``{path: {stat: value}}`` from the per-batch outputs of a :func:`statistics_fn` step.

    Partials are added on the device as they come (samples are moved to the host), so only
    one batch's partials and the running totals are held.
    """
    acc = None
    for part in parts:
        part = {p: {k: (jax.device_get(s) if k == "samples" else s) for k, s in v.items()} for p, v in part.items()}
        acc = part if acc is None else {p: {k: _combine(acc[p][k], s) for k, s in v.items()} for p, v in part.items()}
    return {p: {k: _finish(k, s) for k, s in v.items()} for p, v in (acc or {}).items()}


__all__ = ["STATS", "activation_rows", "kernel_2d", "kernel_from_2d", "statistics_fn", "accumulate", "collect",
           "check_batches"]
