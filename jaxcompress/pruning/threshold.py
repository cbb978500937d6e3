"""Exact top-k selection by counting passes (no sort), per leaf or across leaves.

Finding the cut that keeps exactly ``k`` of ``N`` scores needs selection, not sorting.
Scores are compared through their order-preserving ``uint32`` *keys* (the float bits
with the sign handled), and the cut is searched in key space by counting:

1. a strided sample of about 1024 scores is sorted (cheap) to guess a bracket around
   the k-th largest value; one counting pass checks it (falling back to the whole key
   range at the end that missed);
2. the bracket ``[lo, hi)`` (``#{>= lo} >= k > #{>= hi}``) is narrowed by counting at an
   interpolated pivot (regula falsi, Illinois variant; bisection as a safety net) until
   a pivot keeps exactly ``k`` or the bracket is one key wide - typically 5-12 passes;
3. if a tie straddles the cut, the tied entries with the lowest flat index (leaves in
   order) are kept, so the kept count is exactly ``k`` (a ``lax.cond`` branch that
   costs nothing when there is no such tie).

Every pass counts leaf by leaf and sums, so nothing is concatenated and memory stays
that of the scores: a global cut over 1e9 weights takes a handful of passes. Several
independent *groups* (layer-wise: one group per leaf) share one loop, so a model's
masks compile into one small program.

>>> import jax.numpy as jnp
>>> s = jnp.array([0.5, 3.0, 1.0, 3.0, 2.0])
>>> topk_masks([s], 3)[0].tolist()
[False, True, False, True, True]
>>> topk_masks([s], 2)[0].tolist()
[False, True, False, True, False]
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

_SIGN = np.uint32(0x80000000)
_KEY_NEG_INF = np.uint32(0x007FFFFF)  # float_keys(-inf); smaller keys are NaN patterns
_KEY_ABOVE_INF = np.uint32(0xFF800001)  # float_keys(+inf) + 1, a NaN pattern: counts 0
_KEY_ZERO = np.uint32(0x80000000)
_KEY_MIN_NORMAL = np.uint32(0x80800000)
_CHUNK = 1 << 20  # float32 sums of 0/1 stay exact below 2**24
SAMPLE = 1024
MAX_ITERS = 96


def canonical(x: jax.Array) -> jax.Array:
    """float32 scores with ``-0.0`` and denormals flushed to ``+0.0``."""
    x = jnp.asarray(x).astype(jnp.float32)
    return jnp.where(jnp.abs(x) < np.finfo(np.float32).tiny, jnp.float32(0), x)


def float_keys(x: jax.Array) -> jax.Array:
    """Order-preserving ``uint32`` keys of float scores (``-0.0``, denormals as ``+0.0``)."""
    u = jax.lax.bitcast_convert_type(canonical(x), jnp.uint32)
    return jnp.where((u & _SIGN) != 0, ~u, u | _SIGN)


def key_to_float(key: jax.Array) -> jax.Array:
    """Inverse of :func:`float_keys`."""
    u = jnp.where((key & _SIGN) != 0, key & ~_SIGN, ~key)
    return jax.lax.bitcast_convert_type(u, jnp.float32)


def check_no_nan(scores: Sequence[jax.Array], names: Sequence[str] | None = None) -> None:
    """Raise ``ValueError`` naming the leaf if a concrete score array contains NaN.

    Traced scores cannot be inspected inside ``jit``; there a NaN is never counted as
    above a pivot, so it is dropped first.
    """
    for i, s in enumerate(scores):
        if isinstance(s, jax.core.Tracer):
            continue
        if np.isnan(np.asarray(s, np.float32)).any():
            name = names[i] if names is not None else f"#{i}"
            raise ValueError(f"scores of parameter {name!r} contain NaN")


def _pivot(key):
    # CPUs may treat denormals as zero in compares; scores are canonicalised to have no
    # denormals, so a positive denormal pivot is replaced by the smallest normal.
    key = jnp.where((key > _KEY_ZERO) & (key < _KEY_MIN_NORMAL), _KEY_MIN_NORMAL, key)
    return key_to_float(key)


def _count(x: jax.Array, pivot: jax.Array) -> jax.Array:
    """``#{x >= pivot}`` as int32 (float sums, in chunks small enough to stay exact)."""
    flat = x.reshape(-1)
    ones = lambda a: jnp.where(a >= pivot, jnp.float32(1), jnp.float32(0))  # noqa: E731
    n = flat.shape[0]
    if n <= _CHUNK:
        return jnp.sum(ones(flat)).astype(jnp.int32)
    main = (n // _CHUNK) * _CHUNK
    c = jnp.sum(jnp.sum(ones(flat[:main].reshape(-1, _CHUNK)), axis=1).astype(jnp.int32))
    if main < n:
        c = c + jnp.sum(ones(flat[main:])).astype(jnp.int32)
    return c


def _counts(groups, keys):
    """Per-group ``#{>= key[g]}``: int32 vector."""
    return jnp.stack([sum(_count(x, _pivot(keys[g])) for x in xs) for g, xs in enumerate(groups)])


def _initial_bracket(xs, k):
    """``(lo, hi, c_lo, c_hi, done)`` for one group: exact for small groups, else sampled."""
    total = sum(int(x.size) for x in xs)
    if total <= SAMPLE:  # small: the sorted keys give the answer directly
        keys = jnp.sort(jnp.concatenate([float_keys(x).reshape(-1) for x in xs]))
        t = keys[total - k]
        return t, t + 1, None, None, True
    stride = max(1, total // SAMPLE)
    sample = jnp.concatenate([x.reshape(-1)[::stride] for x in xs])
    s = sample.shape[0]
    keys = jnp.sort(float_keys(sample))  # ascending
    r = k.astype(jnp.float32) * jnp.float32(s / total)  # expected rank from the top
    p = jnp.clip(k.astype(jnp.float32) / jnp.float32(total), 0.0, 1.0)
    margin = 4.0 * jnp.sqrt(jnp.float32(s) * p * (1.0 - p)) + 3.0
    g_lo = keys[jnp.clip(jnp.floor(s - r - margin), 0, s - 1).astype(jnp.int32)]
    g_hi = keys[jnp.clip(jnp.ceil(s - r + margin), 0, s - 1).astype(jnp.int32)]
    return g_lo, g_hi, None, None, False


def group_cuts(groups: Sequence[Sequence[jax.Array]], ks: jax.Array):
    """Search the cut of every group (``1 <= ks[g] <= size of group g``) in one loop.

    Args:
      groups: lists of canonical float32 arrays (see :func:`canonical`).
      ks: int32 vector, one ``k`` per group (traced ok).

    Returns:
      ``(lo, c_lo)``: per group a key with ``c_lo = #{>= lo} >= k``; ``c_lo > k`` means
      entries equal to ``lo`` tie across the cut.
    """
    init = [_initial_bracket(xs, ks[g]) for g, xs in enumerate(groups)]
    g_lo, g_hi = jnp.stack([b[0] for b in init]), jnp.stack([b[1] for b in init])
    small = np.array([b[4] for b in init])
    c_glo, c_ghi = _counts(groups, g_lo), _counts(groups, g_hi)
    totals = jnp.array([sum(int(x.size) for x in xs) for xs in groups], jnp.int32)
    # Each guess is a valid lower bound (count >= k) or a valid upper bound (count < k).
    lo = jnp.where(c_ghi >= ks, g_hi, jnp.where(c_glo >= ks, g_lo, _KEY_NEG_INF))
    c_lo = jnp.where(c_ghi >= ks, c_ghi, jnp.where(c_glo >= ks, c_glo, totals))
    hi = jnp.where(c_glo < ks, g_lo, jnp.where(c_ghi < ks, g_hi, _KEY_ABOVE_INF))
    c_hi = jnp.where(c_glo < ks, c_glo, jnp.where(c_ghi < ks, c_ghi, 0))
    if small.all():
        return lo, c_lo
    done0 = jnp.asarray(small)

    def finished(lo, hi, c_lo):
        return done0 | (c_lo == ks) | (hi - lo <= 1)

    def cond(st):
        lo, hi, c_lo, c_hi, flo, fhi, side, it = st
        return jnp.any(~finished(lo, hi, c_lo)) & (it < MAX_ITERS)

    def body(st):
        # Regula falsi on the count in key space, Illinois variant: an end kept twice in
        # a row has its count residual halved so neither end gets stuck.
        lo, hi, c_lo, c_hi, flo, fhi, side, it = st
        width = hi - lo
        step = (width.astype(jnp.float32) * (flo / (flo - fhi))).astype(jnp.uint32)
        step = jnp.where(it >= MAX_ITERS // 2, width // 2, step)  # safety net: bisection
        p = lo + jnp.clip(step, 1, jnp.maximum(width, 2) - 1)
        c = _counts(groups, p)
        live = ~finished(lo, hi, c_lo)
        up = live & (c >= ks)
        down = live & (c < ks)
        fc = (c - ks).astype(jnp.float32) + 0.5
        nflo = jnp.where(up, fc, jnp.where(down & (side == -1), flo / 2, flo))
        nfhi = jnp.where(down, fc, jnp.where(up & (side == 1), fhi / 2, fhi))
        return (jnp.where(up, p, lo), jnp.where(down, p, hi), jnp.where(up, c, c_lo), jnp.where(down, c, c_hi),
                nflo, nfhi, jnp.where(up, 1, jnp.where(down, -1, side)), it + 1)

    flo = (c_lo - ks).astype(jnp.float32) + 0.5
    fhi = (c_hi - ks).astype(jnp.float32) + 0.5
    st = (lo, hi, c_lo, c_hi, flo, fhi, jnp.zeros_like(ks), jnp.int32(0))
    lo, hi, c_lo, *_ = jax.lax.while_loop(cond, body, st)
    return lo, c_lo


def _topk_groups(groups, ks):
    groups = [[canonical(s) for s in xs] for xs in groups]
    sizes = [sum(int(x.size) for x in xs) for xs in groups]
    ks = jnp.clip(ks.astype(jnp.int32), 0, jnp.array(sizes, jnp.int32))
    lo, c_lo = group_cuts(groups, jnp.maximum(ks, 1))
    t = _pivot(lo)

    def exact():
        return [[(x >= t[g]) & (ks[g] > 0) for x in xs] for g, xs in enumerate(groups)]

    def tied():  # keep the first `need` entries equal to t, in flat order across leaves
        out = []
        for g, xs in enumerate(groups):
            need = ks[g] - sum(jnp.sum(x > t[g], dtype=jnp.int32) for x in xs)
            ms = []
            for x in xs:
                eq = x == t[g]
                rank = jnp.cumsum(eq.reshape(-1).astype(jnp.int32)).reshape(x.shape)
                ms.append(((x > t[g]) | (eq & (rank <= need))) & (ks[g] > 0))
                need = need - jnp.sum(eq, dtype=jnp.int32)
            out.append(ms)
        return out

    return jax.lax.cond(jnp.any(c_lo > ks), tied, exact)


_topk_groups_jit = jax.jit(_topk_groups)


def _check(scores, k, what="k"):
    scores = [jnp.asarray(s) for s in scores]
    check_no_nan(scores)
    total = sum(int(s.size) for s in scores)
    if total >= 2**31:
        raise ValueError(f"at most 2**31 - 1 scores are supported, got {total}")
    if not isinstance(k, jax.core.Tracer) and not 0 <= int(k) <= total:
        raise ValueError(f"{what} must be in [0, {total}], got {k}")
    return scores, total


def topk_masks(scores: Sequence[jax.Array], k) -> list[jax.Array]:
    """Bool masks keeping exactly the ``k`` largest scores over all arrays together.

    Args:
      scores: float score arrays (any shapes); NaN raises ``ValueError`` when concrete.
      k: number of entries to keep, ``0 <= k <= total`` (int or traced int32 scalar;
        a traced value is clipped into range).

    Returns:
      One bool array per input, same shapes; exactly ``k`` True in total, ties broken
      towards the lowest flat index. (Runs through a module-level ``jit``, so eager
      calls compile once per shape signature.)
    """
    scores, total = _check(scores, k)
    if total == 0:
        return [jnp.zeros(s.shape, bool) for s in scores]
    return _topk_groups_jit([scores], jnp.asarray(k, jnp.int32)[None])[0]


def topk_masks_each(scores: Sequence[jax.Array], ks) -> list[jax.Array]:
    """Layer-wise: keep the ``ks[i]`` largest of ``scores[i]`` for every ``i`` (one loop).

    Args:
      scores: float arrays; each is its own group.
      ks: sequence (or int32 vector) of keep counts, one per array (traced ok).
    """
    scores = [jnp.asarray(s) for s in scores]
    if not scores:
        return []
    ks_list = list(ks) if not isinstance(ks, jax.Array) else None
    if ks_list is not None:
        for s, k in zip(scores, ks_list):
            _check([s], k)
        if len(ks_list) != len(scores):
            raise ValueError(f"need one k per array: {len(ks_list)} ks for {len(scores)} arrays")
        ks = jnp.stack([jnp.asarray(k, jnp.int32) for k in ks_list])
    else:
        check_no_nan(scores)
    if any(int(s.size) == 0 for s in scores):
        raise ValueError("empty score arrays are not supported")
    return [g[0] for g in _topk_groups_jit([[s] for s in scores], ks.astype(jnp.int32))]
