"""Structured surgery: smaller modules whose outputs equal the masked model's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress.pruning as jp
from jaxcompress import layout, models
from jaxcompress.pruning.surgery import flops


@pytest.mark.parametrize("name,shape,kw,where", [
    ("mlp", (64,), {"features": (32, 16)}, r"Dense_[01]/kernel"),
    ("cnn1d", (40,), {}, r"Conv_\d/kernel"),
    ("cnn2d", (64,), {}, r"Conv_\d/kernel"),
])
def test_surgery_matches_masked_model(name, shape, kw, where):
    m = models.create(name, shape, 10, **kw)
    # perturb biases so that dead units with live biases would be caught
    params = jax.tree.map(lambda x: x + 0.1 if x.ndim == 1 else x, m.params)
    x = jax.random.normal(jax.random.key(1), (8, *shape))
    lay = layout.trace(m.apply_fn, x[:1], params=params)  # conv kernels (*window, in, out) need it
    t = jp.magnitude(0.5, structured=1, where=where, layout=lay)
    st = t.init(params)
    masked_out = m.apply_fn(t.apply(params, st), x)
    small, sp, info = jp.shrink(m.module, params, st.masks)
    small_out = small.apply({"params": sp}, x)
    assert float(jnp.max(jnp.abs(masked_out - small_out))) <= 1e-5
    assert info["params_after"] < info["params_before"]
    before = info["widths_before"]
    assert info["widths_after"] == tuple(w - round(0.5 * w) for w in before)
    assert flops(small.apply, {"params": sp}, x) < flops(m.module.apply, {"params": params}, x)


def test_surgery_rejects_pruned_outputs_and_unknown_models():
    m = models.create("mlp", (64,), 10, features=(16,))
    st = jp.magnitude(0.5, structured=1).init(m.params)  # includes the logits layer
    with pytest.raises(ValueError, match="output units of 'Dense_1'"):
        jp.shrink(m.module, m.params, st.masks)
    nn = models.create("nnx_mlp", (64,), 10, features=(16,))
    with pytest.raises(ValueError, match="supports the zoo"):
        jp.shrink(nn.module, nn.params)


def test_surgery_after_unstructured_keeps_widths():
    m = models.create("mlp", (64,), 10, features=(16,))
    st = jp.magnitude(0.5).init(m.params)
    small, sp, info = jp.shrink(m.module, m.params, st.masks)
    assert info["widths_after"] == (16,)
    x = jnp.ones((2, 64))
    np.testing.assert_allclose(small.apply({"params": sp}, x), m.apply_fn(jp.apply_masks(m.params, st.masks), x),
                               atol=1e-5)
