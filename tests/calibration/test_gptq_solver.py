"""GPTQ matches a plain numpy transcription of Algorithm 1 (Frantar et al. 2023), with and without act_order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompress.calibration import gptq as G
from jaxcompress.quantization import grid
from jaxcompress.quantization.convert import QArray, pack, quantize_array
from jaxcompress.quantization.spec import qrange


def np_grid(rows, bits, symmetric=False):
    """Signed min-max grid over axis 0 of ``rows`` (``(r, N)``) -> scale, zero ``(N,)``."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if symmetric:
        s = np.maximum(np.abs(rows.min(0)), np.abs(rows.max(0))) / qmax
        return np.where(s > 0, s, 1.0), np.zeros(rows.shape[1])
    lo, hi = np.minimum(rows.min(0), 0), np.maximum(rows.max(0), 0)
    s = (hi - lo) / (qmax - qmin)
    s = np.where(s > 0, s, 1.0)
    return s, np.clip(np.floor(qmin - lo / s + 0.5), qmin, qmax)


def np_quant(w, s, z, bits):
    """Dequantized ``w`` on the signed grid ``(s, z)``."""
    code = np.clip(np.floor(w / s + 0.5) + z, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return s * (code - z)


def np_gptq(W, X, bits, group_size, damp=0.01, act_order=False, symmetric=False):
    """Straightforward reference on the canonical (K, N) kernel; no lazy batching, float64."""
    W = W.astype(np.float64).copy()
    H = 2 * X.T.astype(np.float64) @ X / X.shape[0]
    K = W.shape[0]
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[dead, :] = 0
    g = group_size or K
    static = [np_grid(W[i:i + g], bits, symmetric) for i in range(0, K, g)]  # from the original rows
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(K)
    W, H = W[perm], H[perm][:, perm]
    H += damp * np.mean(np.diag(H)) * np.eye(K)
    U = np.linalg.cholesky(np.linalg.inv(H)).T
    Q = np.zeros_like(W)
    s, z = static[0]
    for i in range(K):
        if act_order or not group_size:
            s, z = static[perm[i] // g]
        elif i % g == 0:
            s, z = np_grid(W[i:i + g], bits, symmetric)  # dynamic groups: the updated rows
        Q[i] = np_quant(W[i], s, z, bits)
        err = (W[i] - Q[i]) / U[i, i]
        W[i:] -= np.outer(U[i, i:], err)
    return Q[np.argsort(perm)]


def correlated(seed, n=256, k=32, dead=5):
    """Correlated inputs with uneven channel scales (so act_order permutes) and one dead input."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, k)) @ rng.normal(size=(k, k)) * 0.3 * rng.uniform(0.2, 3.0, size=(1, k))
    X[:, dead] = 0.0
    return X.astype(np.float32)


CASES = [(None, 128, False), (None, 8, False), (8, 128, False), (8, 16, False),
         (None, 8, True), (8, 128, True), (8, 16, True)]


@pytest.mark.parametrize("group_size,block_size,act_order", CASES)
def test_gptq_matches_numpy_reference(group_size, block_size, act_order):
    X = correlated(0)
    W = np.random.default_rng(1).normal(size=(32, 16)).astype(np.float32)
    f = jax.jit(lambda w, h: G.gptq(w, h, bits=4, group_size=group_size, block_size=block_size, act_order=act_order))
    r = f(jnp.asarray(W), G.hessian(jnp.asarray(X)))
    ref = np_gptq(W, X, 4, group_size, act_order=act_order)
    np.testing.assert_allclose(np.asarray(r.kernel), ref, atol=2e-4)
    assert np.all(np.asarray(r.kernel)[5] == 0)
    # codes and grid reproduce the kernel, on the spec's signed range and scale shape
    spec = G.grid_spec(4, group_size)
    assert r.codes.dtype == jnp.int8 and r.scale.shape == r.zero.shape == spec.scale_shape((32, 16))
    np.testing.assert_allclose(np.asarray(grid.dequantize(r.codes, spec, r.scale, r.zero)), np.asarray(r.kernel),
                               atol=1e-6)
    qmin, qmax = qrange(spec)
    assert float(qmin) <= int(np.asarray(r.codes).min()) and int(np.asarray(r.codes).max()) <= float(qmax)
    np.testing.assert_array_equal(np.asarray(r.zero), np.round(np.asarray(r.zero)))


def test_symmetric_act_order_matches_reference():
    X = correlated(2)
    W = np.random.default_rng(3).normal(size=(32, 16)).astype(np.float32)
    r = jax.jit(lambda w, h: G.gptq(w, h, 3, 8, act_order=True, symmetric=True))(jnp.asarray(W), G.hessian(jnp.asarray(X)))
    np.testing.assert_allclose(np.asarray(r.kernel), np_gptq(W, X, 3, 8, act_order=True, symmetric=True), atol=2e-4)
    assert np.all(np.asarray(r.zero) == 0)


def test_solution_is_a_qarray():
    """The signed codes, scale and zero point are exactly what :class:`QArray` stores."""
    X = jnp.asarray(correlated(4))
    W = jnp.asarray(np.random.default_rng(5).normal(size=(32, 16)), jnp.float32)
    spec = G.grid_spec(4, 8)
    r = G.gptq(W, G.hessian(X), 4, 8, act_order=True)
    qa = QArray(jnp.asarray(pack(np.asarray(r.codes), 4)), r.scale, r.zero.astype(jnp.int8),
                        (32, 16), spec, True)
    np.testing.assert_array_equal(np.asarray(qa.dequantize()), np.asarray(r.kernel))
    rt = G.rtn(W, 4, 8)
    np.testing.assert_array_equal(np.asarray(quantize_array(W, spec, rt.scale, rt.zero).codes()),
                                  np.asarray(rt.codes))


def test_gptq_beats_rtn_on_output_error():
    rng = np.random.default_rng(1)
    X = jnp.asarray(rng.normal(size=(256, 32)) @ rng.normal(size=(32, 32)), jnp.float32)
    W = jnp.asarray(rng.normal(size=(32, 16)), jnp.float32)
    err = lambda k: float(jnp.mean((X @ k - X @ W) ** 2))
    for gs in (None, 16):
        e_rtn = err(jax.jit(lambda w: G.rtn(w, 4, gs).kernel)(W))
        for ao in (False, True):
            e_gptq = err(jax.jit(lambda w, h: G.gptq(w, h, 4, gs, act_order=ao).kernel)(W, G.hessian(X)))
            assert e_gptq < 0.7 * e_rtn, (gs, ao, e_gptq, e_rtn)


def test_rtn_reference_and_traced_bits(count_traces):
    rng = np.random.default_rng(2)
    W = rng.normal(size=(16, 3)).astype(np.float32)
    f = count_traces(lambda w, b: G.rtn(w, b, group_size=8).kernel)
    jf = jax.jit(f)
    for bits in (3, 4, 8):
        out = np.asarray(jf(jnp.asarray(W), jnp.asarray(bits, jnp.float32)))
        ref = np.concatenate([np_quant(blk, *np_grid(blk, bits), bits) for blk in W.reshape(2, 8, 3)])
        np.testing.assert_allclose(out, ref, atol=1e-6)
    assert f.traces == 1


def test_traced_bits_and_damp_one_compilation(count_traces):
    X = jnp.asarray(correlated(6))
    W = jnp.asarray(np.random.default_rng(7).normal(size=(32, 16)), jnp.float32)
    f = count_traces(lambda w, h, b, d: G.gptq(w, h, b, 8, damp=d).kernel)
    jf = jax.jit(f)
    for bits, damp in ((3, 0.01), (4, 0.1)):
        out = jf(W, G.hessian(X), jnp.float32(bits), jnp.float32(damp))
        np.testing.assert_allclose(np.asarray(out), np_gptq(np.asarray(W), np.asarray(X), bits, 8, damp), atol=2e-4)
    assert f.traces == 1


def test_hessian_mask():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5, 4)), jnp.float32)
    mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    keep = np.asarray(x)[np.asarray(mask) == 1]
    np.testing.assert_allclose(np.asarray(G.hessian(x, mask)), 2 * keep.T @ keep / len(keep), rtol=1e-5)


def test_not_positive_definite():
    h = jnp.asarray([[1.0, 2.0], [2.0, 1.0]])  # indefinite; 1% damping does not help
    with pytest.raises(ValueError, match=r"not positive definite after damping damp=0.01; raise damp"):
        G.check_hessian(h, 0.01)
    G.check_hessian(h, 2.0)  # enough damping
    G.check_hessian(jnp.diag(jnp.asarray([0.0, 1.0])), 0.0)  # a dead input is not a failure
    r = jax.jit(lambda w, h: G.gptq(w, h, 4))(jnp.ones((2, 3)), h)
    assert np.all(np.isnan(np.asarray(r.kernel)))


def test_bad_input():
    w = jnp.ones((12, 4))
    with pytest.raises(ValueError, match="group_size=5 must be a positive int dividing the input size K=12"):
        G.rtn(w, 4, group_size=5)
    with pytest.raises(ValueError, match=r"hessian h has shape \(4, 4\), must be \(K, K\)"):
        G.gptq(w, jnp.eye(4))
    with pytest.raises(ValueError, match="kernel w must be 2-D"):
        G.gptq(jnp.ones(3), jnp.eye(3))
    with pytest.raises(ValueError, match="bits=16"):
        G.rtn(w, 16)
    with pytest.raises(ValueError, match="must be square"):
        G.check_hessian(jnp.ones((2, 3)))
