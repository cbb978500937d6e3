"""Wanda scores follow |W_ij| * ||X_j||_2; masks keep the right weights per output."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompress.pruning import wanda


def test_scores_match_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 7, 12)).astype(np.float32)
    mask = (rng.random((3, 7)) > 0.3).astype(np.int32)
    k = rng.normal(size=(12, 5)).astype(np.float32)
    sq = jax.jit(wanda.input_sq_norms)(jnp.asarray(x), jnp.asarray(mask))
    norms = jnp.sqrt(sq)
    s = np.asarray(jax.jit(wanda.scores)(jnp.asarray(k), norms))
    xs = x[mask == 1]  # (tokens, in)
    ref = np.abs(k) * np.sqrt((xs ** 2).sum(0))[:, None]
    # formula written the paper's way: W is (out, in), S_ij = |W_ij| * ||X_j||
    W = k.T
    ref2 = np.array([[abs(W[i, j]) * np.linalg.norm(xs[:, j]) for j in range(12)] for i in range(5)]).T
    np.testing.assert_allclose(s, ref, rtol=1e-5)
    np.testing.assert_allclose(s, ref2, rtol=1e-5)


def test_masks_per_output():
    rng = np.random.default_rng(1)
    s = rng.random((16, 6)).astype(np.float32)
    m24 = np.asarray(jax.jit(lambda s: wanda.nm_mask(s, 2, 4))(jnp.asarray(s)))
    for o in range(6):
        for b in range(4):
            blk = s[4 * b:4 * b + 4, o]
            assert set(np.flatnonzero(m24[4 * b:4 * b + 4, o])) == set(np.argsort(-blk)[:2])
    f = jax.jit(wanda.per_output_mask)
    for sp in (0.5, 0.25):
        m = np.asarray(f(jnp.asarray(s), jnp.float32(sp)))
        k = int(round((1 - sp) * 16))
        for o in range(6):
            assert set(np.flatnonzero(m[:, o])) == set(np.argsort(-s[:, o])[:k])


def test_wanda_differs_from_magnitude_and_prune():
    k = jnp.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])
    norms = jnp.array([10.0, 1.0, 1.0, 1.0])
    pw, mw = wanda.prune(k, norms, nm=(2, 4))
    pm, mm = wanda.prune(k, None, nm=(2, 4))
    assert np.asarray(mw)[:, 0].tolist() == [True, False, False, True]
    assert np.asarray(mm)[:, 0].tolist() == [False, False, True, True]
    np.testing.assert_array_equal(np.asarray(pw), np.asarray(k) * np.asarray(mw))


def test_bad_input():
    with pytest.raises(ValueError, match=r"input_norms shape \(3,\) must be \(in,\) = \(4,\)"):
        wanda.scores(jnp.ones((4, 2)), jnp.ones(3))
    with pytest.raises(ValueError, match="N:M=2:4 needs"):
        wanda.nm_mask(jnp.ones((6, 2)), 2, 4)
    with pytest.raises(ValueError, match="mask shape"):
        wanda.input_sq_norms(jnp.ones((2, 3, 4)), jnp.ones((2, 4)))
