"""Grid, fake quantization (STE) and LSQ against numpy / hand-computed references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress.quantization as jq
from jaxcompress.quantization.spec import QuantSpec

SPECS = [QuantSpec(bits=b, symmetric=s, granularity=g, narrow_range=n, **({"group_size": 4} if g == "group" else {}))
         for b, s, g, n in itertools.product((2, 3, 4, 8), (True, False), ("tensor", "channel", "group"), (False, True))
         if not (n and not s)]


def _scales(x, spec):
    lo, hi = jq.minmax(x, spec)
    return jq.compute_scale_zero_point(lo, hi, spec)


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_fake_quant_values_lie_on_grid(spec):
    x = jax.random.normal(jax.random.key(0), (8, 6)) * 3
    s, z = _scales(x, spec)
    out = jax.jit(lambda x: jq.fake_quant(x, spec, s, z))(x)
    qmin, qmax = (float(v) for v in jq.qrange(spec))
    k = np.asarray(out).reshape(spec.grouped_shape(x.shape)) / np.asarray(s) + np.asarray(z)
    np.testing.assert_allclose(k, np.round(k), atol=1e-3)
    assert k.min() >= qmin - 1e-3 and k.max() <= qmax + 1e-3
    # zero is exactly representable (asymmetric zero points are integers)
    assert float(jq.fake_quant(jnp.zeros_like(x), spec, s, z).max()) == 0.0


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_quantize_dequantize_error_at_most_half_scale(spec):
    x = jax.random.uniform(jax.random.key(1), (8, 12), minval=-2.0, maxval=5.0)
    s, z = _scales(x, spec)
    err = np.abs(np.asarray(jq.quantize_dequantize(x, spec, s, z)) - np.asarray(x))
    bound = np.broadcast_to(np.asarray(s), spec.grouped_shape(x.shape)).reshape(x.shape) / 2
    assert (err <= bound * (1 + 1e-5) + 1e-7).all()


def test_quantize_matches_numpy_reference():
    spec = QuantSpec(bits=4, symmetric=False, granularity="tensor")
    x = np.array([[-1.0, 0.0, 0.3, 2.0]], np.float32)
    s, z = jq.compute_scale_zero_point(x.min(), x.max(), spec)
    # asymmetric 4-bit signed grid [-8, 7]: scale = 3/15, zp = round(-8 + 1/0.2) = -3
    assert np.isclose(float(s), 0.2) and float(z) == -3.0
    np.testing.assert_array_equal(np.asarray(jq.quantize(jnp.asarray(x), spec, s, z)), [[-8, -3, -1, 7]])


def test_ste_gradient_identity_inside_zero_outside():
    spec = QuantSpec(bits=4, granularity="tensor")
    s, z = jnp.full((1,), 0.5), jnp.zeros((1,))  # range [-4, 3.5]
    x = jnp.array([-5.0, -4.0, -1.3, 0.0, 2.2, 3.5, 3.6, 10.0])
    g = jax.jit(jax.grad(lambda x: jnp.sum(jq.fake_quant(x, spec, s, z) * jnp.arange(8.0))))(x)
    np.testing.assert_array_equal(np.asarray(g), [0, 1, 2, 3, 4, 5, 0, 0])


def test_all_zero_channel_scale_is_finite():
    spec = QuantSpec(bits=8)
    w = jnp.zeros((4, 3)).at[:, 0].set(jnp.array([1.0, -2.0, 0.5, 0.0]))
    s, z = _scales(w, spec)
    assert np.isfinite(np.asarray(s)).all() and (np.asarray(s) > 0).all()
    g = jax.grad(lambda w: jq.fake_quant_dynamic(w, spec).sum())(w)
    assert np.isfinite(np.asarray(g)).all()
    np.testing.assert_array_equal(np.asarray(jq.fake_quant_dynamic(w, spec))[:, 1:], 0.0)


def test_stochastic_rounding_is_unbiased_and_needs_key():
    spec = QuantSpec(bits=8, granularity="tensor", rounding="stochastic")
    x = jnp.full((20000,), 0.3)
    s, z = jnp.ones((1,)), jnp.zeros((1,))
    out = jq.fake_quant(x, spec, s, z, key=jax.random.key(0))
    assert set(np.unique(np.asarray(out))) <= {0.0, 1.0}
    assert abs(float(out.mean()) - 0.3) < 0.02
    with pytest.raises(ValueError, match="PRNG key"):
        jq.fake_quant(x, spec, s, z)


def test_lsq_gradients_hand_computed():
    spec = QuantSpec(bits=3, granularity="tensor")  # qmin=-4, qmax=3
    x = jnp.array([0.3, 1.7, -5.0])
    s = jnp.full((1,), 0.5)
    out, vjp = jax.vjp(lambda x, s: jq.lsq_fake_quant(x, spec, s), x, s)
    np.testing.assert_allclose(np.asarray(out), [0.5, 1.5, -2.0])
    gx, gs = vjp(jnp.ones(3))
    np.testing.assert_allclose(np.asarray(gx), [1.0, 0.0, 0.0])
    # v = x/s = [0.6, 3.4, -10]: d/ds = (round(0.6) - 0.6) + qmax + qmin = 0.4 + 3 - 4 = -0.6; g = 1/sqrt(3*3)
    np.testing.assert_allclose(np.asarray(gs), [-0.6 / 3.0], rtol=1e-5)


def test_lsq_per_channel_gradient_scale_uses_entries_per_scale():
    spec = QuantSpec(bits=2)  # per channel of a (4, 2) kernel: N = 4, Qp = 1
    x = jnp.full((4, 2), 0.25)
    gs = jax.grad(lambda s: jq.lsq_fake_quant(x, spec, s).sum())(jnp.full((1, 2), 1.0))
    # v = 0.25, round = 0: each entry contributes -0.25; 4 entries; g = 1/sqrt(4*1)
    np.testing.assert_allclose(np.asarray(gs), [[-0.5, -0.5]], rtol=1e-6)
