"""Exact top-k by counting passes, against a numpy sort reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompress.pruning import threshold as T


def reference(xs, k):
    flat = np.concatenate([np.asarray(x, np.float32).ravel() for x in xs])
    order = np.lexsort((np.arange(flat.size), -flat))  # largest first, ties: lowest index
    keep = np.zeros(flat.size, bool)
    keep[order[:k]] = True
    return keep


def flat(masks):
    return np.concatenate([np.asarray(m).ravel() for m in masks])


@pytest.mark.parametrize("seed", range(6))
def test_matches_sort_reference_with_ties_and_infs(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(500, 5000, size=rng.integers(1, 4))
    xs = [rng.normal(size=n).astype(np.float32) for n in sizes]
    if seed % 2:
        xs = [np.round(x * 2).astype(np.float32) for x in xs]  # heavy ties
    if seed % 3 == 0:
        xs = [np.where(rng.uniform(size=x.shape) < 0.4, -np.inf, x).astype(np.float32) for x in xs]
    total = int(sum(sizes))
    fn = jax.jit(T.topk_masks)
    for k in (0, 1, total // 10, total // 2, total - 1, total):
        got = flat(fn([jnp.asarray(x) for x in xs], jnp.int32(k)))
        assert got.sum() == k
        np.testing.assert_array_equal(got, reference(xs, k))


def test_signed_zeros_and_negative_scores():
    x = jnp.array([-0.0, 0.0, -1.0, 2.0, -0.0, 0.0], jnp.float32)
    got = flat(T.topk_masks([x], 3))
    np.testing.assert_array_equal(got, [True, True, False, True, False, False])


def test_keys_preserve_order():
    x = jnp.array([-jnp.inf, -3.0, -1e-30, 0.0, 1e-30, 2.0, jnp.inf], jnp.float32)
    keys = np.asarray(T.float_keys(x)).astype(np.int64)
    assert (np.diff(keys) > 0).all()
    np.testing.assert_array_equal(np.asarray(T.key_to_float(T.float_keys(x))), np.asarray(x))


def test_large_leaf_uses_chunked_counts():
    # > 2**20 entries exercises the chunked exact float sums
    x = jax.random.uniform(jax.random.key(0), (1 << 20) + 777)
    k = 123_457
    got = T.topk_masks([x], k)[0]
    assert int(got.sum()) == k
    thr = np.sort(np.asarray(x))[-k]
    np.testing.assert_array_equal(np.asarray(got), np.asarray(x) >= thr)


def test_nan_scores_raise():
    with pytest.raises(ValueError, match="NaN"):
        T.topk_masks([jnp.array([1.0, jnp.nan, 2.0])], 1)


def test_bad_k_raises():
    with pytest.raises(ValueError, match="k must be in"):
        T.topk_masks([jnp.ones(4)], 5)
