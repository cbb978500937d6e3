"""Activation quantization (linen and NNX), integer inference == fake quantization, integer QAT."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress.quantization as jq
from jaxcompress import layout, models
from jaxcompress.model import from_apply
from jaxcompress.quantization.spec import QuantSpec

ACT = QuantSpec(bits=8, granularity="tensor")


@pytest.mark.parametrize("name,shape", [("mlp", (16,)), ("cnn1d", (40,)), ("cnn2d", (64,)), ("nnx_mlp", (16,))])
def test_integer_inference_equals_fake_quant(name, shape):
    m = models.create(name, shape, 10, rng=0, **({"features": (12,)} if "mlp" in name else {}))
    x = jax.random.normal(jax.random.key(1), (64, *shape))
    ranges = jq.calibrate(m, m.params, [x[:32], x[32:]], ACT)
    lay = layout.trace(from_apply(m.apply_fn, m.params), x[:1])
    t = jq.quantize_weights(QuantSpec(bits=8), layout=lay)
    fq = jax.jit(jq.quantize_activations(m, ACT, ranges))(t.apply(m.params, t.init(m.params)), x)
    fi = jq.integer_apply(m, jq.convert(m.params, QuantSpec(bits=8), layout=lay), ranges)
    yi = fi(x)
    assert fi.num_integer_ops == len(lay)  # every Dense / Conv ran on integers
    np.testing.assert_array_equal(np.asarray(fq.argmax(-1)), np.asarray(yi.argmax(-1)))
    assert float(jnp.max(jnp.abs(fq - yi))) < 1e-4
    assert float(jnp.max(jnp.abs(fq - m.apply_fn(m.params, x)))) > 0  # quantization did something


def test_integer_path_uses_int32_accumulation():
    m = models.create("mlp", (16,), 10, rng=0, features=(12,))
    f = jq.integer_apply(m, jq.convert(m.params, QuantSpec(bits=8)))
    hlo = f.lower(jnp.ones((2, 16))).as_text()
    assert "xi8>" in hlo and "xi32>" in hlo


def test_integer_path_rejects_unsupported_specs():
    m = models.create("mlp", (16,), 10, rng=0, features=(12,))
    art = jq.convert(m.params, QuantSpec(bits=8, symmetric=False))
    with pytest.raises(ValueError, match="Dense_0.*symmetric"):
        jq.integer_apply(m, art)(jnp.ones((2, 16)))


def test_activation_quant_is_static_and_nnx_and_linen_agree():
    lin = models.create("mlp", (16,), 10, rng=0, features=(12,))
    x = jax.random.normal(jax.random.key(2), (8, 16))
    ranges = jq.calibrate(lin, lin.params, [x], ACT)
    f = jax.jit(jq.quantize_activations(lin, ACT, ranges))
    y = f(lin.params, x)
    _, inputs = jq.capture_inputs(lin)(lin.params, x)
    s, z = jq.compute_scale_zero_point(*ranges["Dense_1"], ACT)
    h = jq.quantize_dequantize(inputs["Dense_0"], ACT, *jq.compute_scale_zero_point(*ranges["Dense_0"], ACT))
    h = jax.nn.relu(h @ lin.params["Dense_0"]["kernel"] + lin.params["Dense_0"]["bias"][None])
    h = jq.quantize_dequantize(h, ACT, s, z)
    ref = h @ lin.params["Dense_1"]["kernel"] + lin.params["Dense_1"]["bias"][None]
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), atol=1e-5)
    with pytest.raises(ValueError, match="no calibrated range for layer 'Dense_1'"):
        jq.quantize_activations(lin, ACT, {"Dense_0": ranges["Dense_0"]})(lin.params, x)


def test_int_qat_matches_fake_quant_forward_and_gradients():
    m = models.create("mlp", (16,), 10, rng=0, features=(12,))
    x = jax.random.normal(jax.random.key(3), (8, 16))
    ranges = jq.calibrate(m, m.params, [x], ACT)
    t = jq.quantize_weights(QuantSpec(bits=8))
    st = t.init(m.params)
    fake_apply = jq.quantize_activations(m, ACT, ranges)
    int_apply = jq.int_qat_apply(m, QuantSpec(bits=8), ACT, ranges)
    loss_f = lambda p: jnp.sum(jnp.sin(fake_apply(t.apply(p, st), x)))  # noqa: E731
    loss_i = lambda p: jnp.sum(jnp.sin(int_apply(p, x)))  # noqa: E731
    np.testing.assert_allclose(float(loss_f(m.params)), float(loss_i(m.params)), rtol=1e-5)
    gf, gi = jax.jit(jax.grad(loss_f))(m.params), jax.jit(jax.grad(loss_i))(m.params)
    for a, b in zip(jax.tree.leaves(gf), jax.tree.leaves(gi)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-4)
