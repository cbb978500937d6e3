"""SparseGPT matches a plain numpy transcription of Algorithm 1 (Frantar & Alistarh 2023) and beats Wanda."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompress.calibration import gptq as G
from jaxcompress.calibration.sparsegpt import sparsegpt
from jaxcompress.pruning import wanda
from jaxcompress.quantization import grid


def np_grid(rows, bits):
    """Signed asymmetric min-max grid over axis 0 of ``rows`` (``(r, N)``) -> scale, zero ``(N,)``."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    lo, hi = np.minimum(rows.min(0), 0), np.maximum(rows.max(0), 0)
    s = np.where(hi > lo, (hi - lo) / (qmax - qmin), 1.0)
    return s, np.clip(np.floor(qmin - lo / s + 0.5), qmin, qmax)


def np_quant(w, s, z, bits):
    return s * (np.clip(np.floor(w / s + 0.5) + z, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) - z)


def np_sparsegpt(W, X, sparsity=0.5, nm=None, block=16, bits=None, group_size=None, damp=0.01):
    """Reference on the canonical (K, N) kernel: no lazy batching, float64; returns (W_hat, kept)."""
    W = W.astype(np.float64).copy()
    H = 2 * X.T.astype(np.float64) @ X / X.shape[0]
    K, N = W.shape
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[dead, :] = 0
    H += damp * np.mean(np.diag(H)) * np.eye(K)
    U = np.linalg.cholesky(np.linalg.inv(H)).T
    d = np.diag(U)
    pruned = np.zeros((K, N), bool)
    Q = np.zeros_like(W)
    if bits:
        s, z = np_grid(W, bits)
    for i in range(K):
        if nm is None and i % block == 0:  # per block, per output column: the lowest saliencies
            b1 = min(i + block, K)
            sal = W[i:b1] ** 2 / d[i:b1, None] ** 2
            n_pruned = int(np.round(sparsity * (b1 - i)))
            for o in range(N):
                pruned[i + np.argsort(sal[:, o], kind="stable")[:n_pruned], o] = True
        if nm is not None and i % nm[1] == 0:  # prune m - n of the next m rows, per column
            n, m = nm
            sal = W[i:i + m] ** 2 / d[i:i + m, None] ** 2
            for o in range(N):
                pruned[i + np.argsort(sal[:, o], kind="stable")[:m - n], o] = True
        q = np.where(pruned[i], 0.0, W[i])
        if bits:
            if group_size and i % group_size == 0:
                s, z = np_grid(W[i:i + group_size], bits)
            q = np_quant(q, s, z, bits)
        Q[i] = q
        err = (W[i] - q) / U[i, i]
        W[i:] -= np.outer(U[i, i:], err)
    return Q, ~pruned


def layer(seed=0, k=32, n=16):
    """Correlated inputs with uneven channel scales and a dead input 5; a random kernel."""
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(256, k)) @ rng.normal(size=(k, k)) * 0.3 * rng.uniform(0.2, 3.0, (1, k))).astype(np.float32)
    X[:, 5] = 0.0
    W = np.random.default_rng(seed + 100).normal(size=(k, n)).astype(np.float32)
    return X, W


@pytest.mark.parametrize("nm,bits,group_size", [(None, None, None), ((2, 4), None, None), ((2, 4), 4, 8),
                                                (None, 4, None)])
def test_matches_numpy_reference(nm, bits, group_size):
    X, W = layer(0)
    f = jax.jit(lambda w, h: sparsegpt(w, h, 0.5, nm=nm, block_size=16, bits=bits, group_size=group_size))
    r = f(jnp.asarray(W), G.hessian(jnp.asarray(X)))
    ref, kept = np_sparsegpt(W, X, 0.5, nm, 16, bits, group_size)
    np.testing.assert_array_equal(np.asarray(r.mask), kept)
    np.testing.assert_allclose(np.asarray(r.kernel), ref, atol=2e-4)
    k = np.asarray(r.kernel)
    assert np.all(k[~np.asarray(r.mask)] == 0) and np.all(k[5] == 0)  # pruned and dead entries are exact zeros
    if bits is None:
        assert r.codes is None and r.scale is None
    else:
        spec = G.grid_spec(bits, group_size)
        assert r.codes.dtype == jnp.int8 and r.scale.shape == spec.scale_shape(W.shape)
        np.testing.assert_allclose(np.asarray(grid.dequantize(r.codes, spec, r.scale, r.zero)), k, atol=1e-6)


def test_exact_sparsity_invariants():
    X, W = layer(1, k=48)
    w, h = jnp.asarray(W), G.hessian(jnp.asarray(X))
    solve = jax.jit(lambda w, h, s: sparsegpt(w, h, s, block_size=16).mask)
    m = np.asarray(solve(w, h, 0.25))
    np.testing.assert_array_equal(m.reshape(3, 16, 16).sum(1), 12)  # per block, per output column
    m = np.asarray(jax.jit(lambda w, h: sparsegpt(w, h, 0.5, block_size=20).mask)(w, h))  # blocks 20, 20, 8
    np.testing.assert_array_equal(m[:20].sum(0), 10)
    np.testing.assert_array_equal(m[40:].sum(0), 4)
    m = np.asarray(jax.jit(lambda w, h: sparsegpt(w, h, nm=(1, 4), block_size=6).mask)(w, h))  # block -> 8
    np.testing.assert_array_equal(m.reshape(12, 4, 16).sum(1), 1)


def test_traced_sparsity_one_compilation(count_traces):
    X, W = layer(2)
    f = count_traces(lambda w, h, s: sparsegpt(w, h, s, block_size=16).mask)
    jf = jax.jit(f)
    for s in (0.25, 0.5, 0.75):
        mask = np.asarray(jf(jnp.asarray(W), G.hessian(jnp.asarray(X)), jnp.float32(s)))
        assert mask.sum() == round((1 - s) * 16) * 2 * 16
    assert f.traces == 1


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_beats_magnitude_and_wanda(nm):
    rng = np.random.default_rng(3)
    X = jnp.asarray(rng.normal(size=(512, 64)) @ rng.normal(size=(64, 64)) * rng.uniform(0.1, 3, (1, 64)), jnp.float32)
    W = jnp.asarray(rng.normal(size=(64, 32)), jnp.float32)
    err = lambda k: float(jnp.sum((X @ (W - k)) ** 2))
    e_sgpt = err(jax.jit(lambda w, h: sparsegpt(w, h, 0.5, nm=nm, block_size=32).kernel)(W, G.hessian(X)))
    e_mag = err(wanda.prune(W, None, 0.5, nm)[0])
    e_wanda = err(wanda.prune(W, jnp.sqrt(wanda.input_sq_norms(X)), 0.5, nm)[0])
    assert e_sgpt < 0.9 * e_wanda and e_wanda < e_mag, (e_sgpt, e_wanda, e_mag)


def test_bad_input():
    w, h = jnp.ones((12, 4)), jnp.eye(12)
    with pytest.raises(ValueError, match=r"nm=\(2, 8\): m=8 must divide the input size K=12"):
        sparsegpt(w, h, nm=(2, 8))
    with pytest.raises(ValueError, match="N:M sparsity needs integers 1 <= n < m"):
        sparsegpt(w, h, nm=(4, 4))
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        sparsegpt(w, h, 1.0)
    with pytest.raises(ValueError, match="group_size=4 needs bits"):
        sparsegpt(w, h, group_size=4)
    with pytest.raises(ValueError, match="hessian h has shape"):
        sparsegpt(w, jnp.eye(4))
