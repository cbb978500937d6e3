"""Layer-wise, global, N:M and structured selection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress.pruning as jp


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.75, 0.9, 0.95, 0.999])
def test_layerwise_exact_sparsity(sparsity):
    x = jax.random.normal(jax.random.key(1), (300, 101))
    m = jax.jit(jp.topk_mask)(jnp.abs(x), sparsity)
    assert int(m.sum()) == x.size - round(sparsity * x.size)
    kept_min = float(jnp.min(jnp.where(m, jnp.abs(x), jnp.inf)))
    dropped_max = float(jnp.max(jnp.where(m, -jnp.inf, jnp.abs(x))))
    assert kept_min >= dropped_max


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_global_exact_sparsity_and_single_threshold(sparsity):
    xs = [jax.random.normal(jax.random.key(i), s) * (i + 1) for i, s in enumerate([(64, 30), (30, 20), (20, 10)])]
    ms = jp.global_masks([jnp.abs(x) for x in xs], sparsity)
    total = sum(x.size for x in xs)
    assert sum(int(m.sum()) for m in ms) == total - round(sparsity * total)
    kept = min(float(jnp.min(jnp.where(m, jnp.abs(x), jnp.inf))) for m, x in zip(ms, xs))
    dropped = max(float(jnp.max(jnp.where(m, -jnp.inf, jnp.abs(x)))) for m, x in zip(ms, xs))
    assert kept >= dropped


@pytest.mark.parametrize("n,m,axis", [(2, 4, -2), (1, 4, 0), (4, 8, -1), (2, 4, 1)])
def test_nm_exactly_n_per_group(n, m, axis):
    x = jax.random.normal(jax.random.key(0), (16, 24))
    mask = np.asarray(jax.jit(jp.nm_mask, static_argnums=(1, 2, 3))(x, n, m, axis))
    g = np.moveaxis(mask, axis, -1)
    g = g.reshape(*g.shape[:-1], -1, m)
    assert (g.sum(-1) == n).all()
    # the kept ones are the n largest of each group
    xs = np.moveaxis(np.asarray(x), axis, -1).reshape(g.shape)
    assert (np.where(g, xs, np.inf).min(-1) >= np.where(g, -np.inf, xs).max(-1)).all()


def test_nm_ties_keep_exactly_n():
    mask = jp.nm_mask(jnp.ones((8, 4)), 2, 4, axis=-1)
    assert (np.asarray(mask).sum(-1) == 2).all()


@pytest.mark.parametrize("n,m", [(4, 4), (5, 4), (0, 4), (2.0, 4)])
def test_nm_bad_n_m(n, m):
    with pytest.raises(ValueError, match="1 <= n < m"):
        jp.nm_mask(jnp.ones((4, 4)), n, m)


def test_nm_axis_not_divisible():
    with pytest.raises(ValueError, match="divisible by 4"):
        jp.nm_mask(jnp.ones((6, 8)), 2, 4, axis=0)


def test_unit_mask_removes_whole_columns_by_norm():
    w = jnp.array([[1.0, -5.0, 0.1, 2.0], [1.0, 0.0, 0.1, -2.0]])
    m = np.asarray(jp.unit_mask(w, 0.5, ord=1))
    np.testing.assert_array_equal(m[0], [False, True, False, True])
    assert (m[0] == m[1]).all()
    m2 = np.asarray(jp.unit_mask(w, 0.5, ord=2))  # L2: col1 5.0, col3 2.83 > col0 1.41
    np.testing.assert_array_equal(m2[0], [False, True, False, True])


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_out_of_range(bad):
    with pytest.raises(ValueError, match="sparsity must be in"):
        jp.topk_mask(jnp.ones(10), bad)
    with pytest.raises(ValueError, match="sparsity must be in"):
        jp.magnitude(sparsity=bad)
