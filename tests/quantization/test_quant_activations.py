"""Activation interception covers Einsum layers of linen and NNX models (no model edits)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxcompress.quantization as jq
from jaxcompress import tree
from jaxcompress.model import from_apply
from jaxcompress.models import nnx_to_apply
from jaxcompress.quantization.spec import QuantSpec

ACT = QuantSpec(bits=2, granularity="tensor")


class _LinenEinsum(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Einsum((4, 3), "bi,io->bo")(x)


class _NNXEinsum(nnx.Module):
    def __init__(self, rngs):
        self.e = nnx.Einsum("bi,io->bo", (4, 3), rngs=rngs)

    def __call__(self, x):
        return self.e(x)


def _check(model, params, layer):
    x = jax.random.normal(jax.random.key(0), (5, 4))
    _, inputs = jq.capture_inputs(model)(params, x)
    assert list(inputs) == [layer]
    np.testing.assert_array_equal(np.asarray(inputs[layer]), np.asarray(x))
    ranges = jq.calibrate(model, params, [x], ACT)
    y = jax.jit(jq.quantize_activations(model, ACT, ranges))(params, x)
    s, z = jq.compute_scale_zero_point(*ranges[layer], ACT)
    xq = jq.quantize_dequantize(x, ACT, s, z)
    leaves = dict(tree.named_leaves(params))
    ref = xq @ leaves[f"{layer}/kernel"]
    if f"{layer}/bias" in leaves:  # linen Einsum has a bias by default, nnx Einsum not
        ref = ref + leaves[f"{layer}/bias"][None]
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), atol=1e-5)
    assert float(jnp.max(jnp.abs(y - model.apply_fn(params, x)))) > 1e-3  # 2-bit inputs changed the output


def test_linen_einsum_inputs_are_intercepted():
    mod = _LinenEinsum()
    params = mod.init(jax.random.key(0), jnp.zeros((1, 4)))["params"]
    model = from_apply(lambda p, x: mod.apply({"params": p}, x), params, mod)
    _check(model, params, "Einsum_0")


def test_nnx_einsum_inputs_are_intercepted():
    mod = _NNXEinsum(nnx.Rngs(0))
    apply_fn, params = nnx_to_apply(mod)
    _check(from_apply(apply_fn, params, mod), params, "e")
