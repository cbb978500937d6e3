"""AWQ's scale search and SmoothQuant's factors against numpy, and their error claims on outlier layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompress.calibration import awq as A
from jaxcompress.calibration import gptq as G
from jaxcompress.calibration import smoothquant as S
from jaxcompress.quantization import grid
from jaxcompress.quantization.spec import QuantSpec


def np_rtn(W, bits, g):
    """Asymmetric signed min-max RTN per group of ``g`` rows (float64)."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    out = []
    for blk in W.reshape(-1, g, W.shape[1]):
        lo, hi = np.minimum(blk.min(0), 0), np.maximum(blk.max(0), 0)
        s = np.where(hi > lo, (hi - lo) / (qmax - qmin), 1.0)
        z = np.clip(np.floor(qmin - lo / s + 0.5), qmin, qmax)
        out.append(s * (np.clip(np.floor(blk / s + 0.5) + z, qmin, qmax) - z))
    return np.concatenate(out)


def salient_layer(seed=0, k=32, n=16, tokens=256):
    """Inputs where a few channels are 10-30x larger than the rest (AWQ's salient channels)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(tokens, k)) * np.where(np.arange(k) % 8 == 3, rng.uniform(10, 30, k), 1.0)[None]
    X[:, 6] = 0.0  # a dead channel
    return X.astype(np.float32), rng.normal(size=(k, n)).astype(np.float32)


def test_awq_search_matches_numpy():
    X, W = salient_layer(0)
    xm = np.abs(X).mean(0)
    H = 2 * X.T.astype(np.float64) @ X / len(X)
    losses, cands = [], []
    for i in range(10):
        c = np.maximum(xm.astype(np.float64) ** (i / 10), 1e-4)
        s = c / np.sqrt(c.max() * c.min())
        dw = W - np_rtn(W * s[:, None], 3, 8) / s[:, None]
        losses.append(np.trace(dw.T @ H @ dw))
        cands.append(s)
    best = int(np.argmin(losses))
    assert best > 0  # the search does something on this layer
    f = jax.jit(lambda w, h, xm: A.search_scale(w, h, xm, bits=3, group_size=8, n_grid=10))
    s = f(jnp.asarray(W), G.hessian(jnp.asarray(X)), jnp.asarray(xm))
    np.testing.assert_allclose(np.asarray(s), cands[best], rtol=1e-5)


@pytest.mark.parametrize("group_size", [None, 8])
def test_awq_never_worse_than_rtn_and_solution_consistent(group_size):
    X, W = salient_layer(1)
    x, w = jnp.asarray(X), jnp.asarray(W)
    h = G.hessian(x)
    r, s = jax.jit(lambda w, h, xm: A.awq(w, h, xm, 3, group_size, n_grid=10))(w, h, jnp.mean(jnp.abs(x), 0))
    rt = G.rtn(w, 3, group_size)
    loss = lambda k: float(A.output_error(w - k, h))
    assert loss(r.kernel) < 0.9 * loss(rt.kernel)
    # ||X dW||^2 = n / 2 tr(dW^T H dW)
    dw = w - r.kernel
    np.testing.assert_allclose(float(jnp.sum((x @ dw) ** 2)), len(X) / 2 * loss(r.kernel), rtol=1e-4)
    # stored form: codes of diag(s) W, inputs scaled by 1 / s, run the same as the effective kernel
    spec = G.grid_spec(3, group_size)
    assert r.codes.dtype == jnp.int8 and r.scale.shape == spec.scale_shape(W.shape) and r.mask is None
    deq = grid.dequantize(r.codes, spec, r.scale, r.zero)
    np.testing.assert_allclose(np.asarray((x * (1.0 / s)[None]) @ deq), np.asarray(x @ r.kernel), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(r.codes), np.asarray(G.rtn(w * s[:, None], 3, group_size).codes))


def test_awq_alpha_zero_is_rtn_and_scales():
    X, W = np.zeros((4, 8), np.float32), np.random.default_rng(2).normal(size=(8, 4)).astype(np.float32)
    h = G.hessian(jnp.asarray(X))  # no signal: every alpha ties, the first (alpha = 0, s = 1) wins
    r, s = jax.jit(lambda w, h, xm: A.awq(w, h, xm, bits=4, group_size=None, n_grid=4))(jnp.asarray(W), h, jnp.zeros(8))
    np.testing.assert_array_equal(np.asarray(s), 1.0)
    np.testing.assert_array_equal(np.asarray(r.kernel), np.asarray(G.rtn(jnp.asarray(W), 4).kernel))
    c = np.asarray(A.scales(jnp.asarray([4.0, 1.0, 0.0]), 0.5))  # [2, 1, 1e-4] / sqrt(2e-4)
    np.testing.assert_allclose(c, np.array([2.0, 1.0, 1e-4]) / np.sqrt(2e-4), rtol=1e-5)


def test_awq_bad_input():
    w, h = jnp.ones((16, 4)), jnp.eye(16)
    with pytest.raises(ValueError, match=r"x_absmean has shape \(8,\), must be \(K,\) = \(16,\)"):
        A.search_scale(w, h, jnp.ones(8), group_size=8)
    with pytest.raises(ValueError, match="group_size=128 must be a positive int dividing the input size K=16"):
        A.awq(w, h, jnp.ones(16))
    with pytest.raises(ValueError, match="n_grid=0"):
        A.search_scale(w, h, jnp.ones(16), group_size=8, n_grid=0)


def test_smooth_factors_formula():
    rng = np.random.default_rng(3)
    xm = rng.uniform(0.1, 50, 6).astype(np.float32)
    xm[4] = 0.0  # dead input
    W = rng.normal(size=(6, 5)).astype(np.float32)
    W[2] = 0.0  # dead weight row
    xm[5], W[5] = 1e-12, 1.0  # tiny activation: s clamps at 1e-5
    for alpha in (0.5, 0.8):
        wm = np.abs(W).max(1).astype(np.float64)
        live = (xm > 0) & (wm > 0)
        ref = np.where(live, xm.astype(np.float64), 1.0) ** alpha / np.where(live, wm, 1.0) ** (1 - alpha)
        ref = np.where(live, np.maximum(ref, 1e-5), 1.0)
        s = S.smooth_factors(jnp.asarray(xm), jnp.asarray(W), alpha)
        np.testing.assert_allclose(np.asarray(s), ref, rtol=1e-5)
        assert s[2] == 1.0 and s[4] == 1.0 and s[5] == pytest.approx(1e-5)
    sc = float(S.static_act_scale(jnp.asarray(xm), s))
    assert sc == pytest.approx(np.max(xm / np.asarray(s)) / 127, rel=1e-6)
    assert float(S.static_act_scale(jnp.zeros(3), jnp.ones(3))) == 1.0
    with pytest.raises(ValueError, match=r"x_absmax has shape \(5,\), must be \(K,\)"):
        S.smooth_factors(jnp.ones(5), jnp.ones((6, 2)))


def outlier_layer(seed=4):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(256, 32)).astype(np.float32)
    X[:, 7] *= 50.0  # one 50x outlier input channel
    return jnp.asarray(X), jnp.asarray(rng.normal(size=(32, 16)), jnp.float32)


def test_smoothing_is_exact_in_float_and_flattens_activations():
    x, w = outlier_layer()
    xmax = jnp.max(jnp.abs(x), 0)
    s = S.smooth_factors(xmax, w, 0.5)
    np.testing.assert_allclose(np.asarray((x / s[None]) @ (s[:, None] * w)), np.asarray(x @ w), rtol=1e-4, atol=1e-3)
    ratio = lambda v: float(jnp.max(v) / jnp.min(v))
    assert ratio(jnp.max(jnp.abs(x / s[None]), 0)) < 0.2 * ratio(xmax)


def w8a8_error(x, w, s):
    """Output error of static per-tensor int8 activations of ``x / s`` and per-channel int8 weights of ``diag(s) w``."""
    a_spec = QuantSpec(bits=8, symmetric=True, granularity="tensor", narrow_range=True)
    a_scale = S.static_act_scale(jnp.max(jnp.abs(x), 0), s)
    xq = grid.quantize_dequantize(x / s[None], a_spec, a_scale, 0.0)
    w_spec = G.grid_spec(8, None, symmetric=True).replace(narrow_range=True)
    ws = s[:, None] * w
    w_scale, w_zero = grid.compute_scale_zero_point(*grid.minmax(ws, w_spec), w_spec)
    wq = grid.quantize_dequantize(ws, w_spec, w_scale, w_zero)
    return float(jnp.mean((xq @ wq - x @ w) ** 2))


def test_w8a8_error_drops_with_smoothing():
    x, w = outlier_layer()
    s = S.smooth_factors(jnp.max(jnp.abs(x), 0), w, 0.5)
    plain, smooth = w8a8_error(x, w, jnp.ones(32)), w8a8_error(x, w, s)
    assert smooth < 0.5 * plain, (smooth, plain)
