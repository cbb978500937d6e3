"""GPTQ matches a plain numpy transcription of Algorithm 1 (Frantar et al. 2023)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompress.quantization import gptq as G


def np_gptq(W, X, bits, group_size, damp=0.01):
    """Straightforward reference: W is (out, in), X is (n, in); no lazy batching."""
    W = W.astype(np.float64).copy()
    H = 2 * X.T.astype(np.float64) @ X / X.shape[0]
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * np.mean(np.diag(H)) * np.eye(H.shape[0])
    U = np.linalg.cholesky(np.linalg.inv(H)).T
    maxq = 2**bits - 1

    def params(block):
        lo = np.minimum(block.min(1), 0)
        hi = np.maximum(block.max(1), 0)
        s = (hi - lo) / maxq
        return s, np.floor(-lo / s + 0.5)

    n_in = W.shape[1]
    Q = np.zeros_like(W)
    s, z = params(W)
    for i in range(n_in):
        if group_size and i % group_size == 0:
            s, z = params(W[:, i:i + group_size])
        w = W[:, i]
        code = np.clip(np.floor(w / s + 0.5) + z, 0, maxq)
        q = s * (code - z)
        Q[:, i] = q
        err = (w - q) / U[i, i]
        W[:, i:] -= np.outer(err, U[i, i:])
    return Q


@pytest.mark.parametrize("group_size,block_size", [(None, 128), (None, 8), (8, 128), (8, 16)])
def test_gptq_matches_numpy_reference(group_size, block_size):
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(256, 32)) @ rng.normal(size=(32, 32)) * 0.3).astype(np.float32)  # correlated inputs
    X[:, 5] = 0.0  # a dead input
    W = rng.normal(size=(32, 16)).astype(np.float32)  # kernel (in, out)
    f = jax.jit(lambda w, h: G.gptq(w, h, bits=4, group_size=group_size, block_size=block_size))
    r = f(jnp.asarray(W), G.hessian(jnp.asarray(X)))
    ref = np_gptq(W.T, X, 4, group_size).T
    np.testing.assert_allclose(np.asarray(r.kernel), ref, atol=2e-4)
    assert np.all(np.asarray(r.kernel)[5] == 0)
    # codes and grid reproduce the kernel
    rows = np.arange(32) // (group_size or 32)
    deq = np.asarray(r.scale)[rows] * (np.asarray(r.codes, np.float32) - np.asarray(r.zero)[rows])
    np.testing.assert_allclose(deq, np.asarray(r.kernel), atol=1e-6)
    assert np.asarray(r.codes).max() <= 15


def test_gptq_beats_rtn_on_output_error():
    rng = np.random.default_rng(1)
    X = jnp.asarray(rng.normal(size=(256, 32)) @ rng.normal(size=(32, 32)), jnp.float32)
    W = jnp.asarray(rng.normal(size=(32, 16)), jnp.float32)
    err = lambda k: float(jnp.mean((X @ k - X @ W) ** 2))
    for gs in (None, 16):
        e_gptq = err(jax.jit(lambda w, h: G.gptq(w, h, 4, gs).kernel)(W, G.hessian(X)))
        e_rtn = err(jax.jit(lambda w: G.rtn(w, 4, gs).kernel)(W))
        assert e_gptq < 0.7 * e_rtn, (gs, e_gptq, e_rtn)


def test_rtn_reference_and_traced_bits(count_traces):
    rng = np.random.default_rng(2)
    W = rng.normal(size=(16, 3)).astype(np.float32)
    f = count_traces(lambda w, b: G.rtn(w, b, group_size=8).kernel)
    jf = jax.jit(f)
    for bits in (3, 4, 8):
        out = np.asarray(jf(jnp.asarray(W), jnp.asarray(bits, jnp.float32)))
        ref = []
        for blk in W.reshape(2, 8, 3):
            lo, hi = np.minimum(blk.min(0), 0), np.maximum(blk.max(0), 0)
            s = (hi - lo) / (2**bits - 1)
            z = np.floor(-lo / s + 0.5)
            ref.append(s * (np.clip(np.floor(blk / s + 0.5) + z, 0, 2**bits - 1) - z))
        np.testing.assert_allclose(out, np.concatenate(ref), atol=1e-6)
    assert f.traces == 1


def test_hessian_mask_and_pack_roundtrip():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5, 4)), jnp.float32)
    mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    keep = np.asarray(x)[np.asarray(mask) == 1]
    np.testing.assert_allclose(np.asarray(G.hessian(x, mask)), 2 * keep.T @ keep / len(keep), rtol=1e-5)
    codes = jnp.asarray(np.random.default_rng(4).integers(0, 16, size=(7, 3)), jnp.uint8)
    packed = G.pack_int4(codes)
    assert packed.size == 11
    np.testing.assert_array_equal(np.asarray(G.unpack_int4(packed, (7, 3))), np.asarray(codes))


def test_bad_input():
    w = jnp.ones((12, 4))
    with pytest.raises(ValueError, match="group_size=5 must be positive and divide the input size 12"):
        G.rtn(w, 4, group_size=5)
    with pytest.raises(ValueError, match="hessian shape"):
        G.gptq(w, jnp.eye(4))
    with pytest.raises(ValueError, match="kernel must be 2-D"):
        G.gptq(jnp.ones(3), jnp.eye(3))
