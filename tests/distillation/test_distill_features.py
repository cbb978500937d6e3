import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompress import distillation as distill
from jaxcompress import models


def test_linen_features_by_path():
    m = models.create("cnn1d", (40,), rng=0)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 40)), jnp.float32)
    apply = distill.with_features(m.module, ["Conv_0", "Conv_2"])
    logits, feats = jax.jit(apply)(m.params, x)
    np.testing.assert_allclose(logits, m.apply_fn(m.params, x), rtol=1e-6)
    assert feats["Conv_0"].shape == (3, 38, 25) and feats["Conv_2"].shape == (3, 8, 25)
    # Conv_0's output is the pre-activation of the first layer: check by hand.
    k, b = m.params["Conv_0"]["kernel"], m.params["Conv_0"]["bias"]
    ref = jax.lax.conv_general_dilated(x[..., None], k, (1,), [(1, 1)], dimension_numbers=("NWC", "WIO", "NWC"))
    np.testing.assert_allclose(feats["Conv_0"], ref + b.reshape(1, 1, -1), rtol=1e-5, atol=1e-5)


def test_nnx_features_by_path():
    m = models.create("nnx_mlp", (40,), features=(16, 8), rng=0)
    assert distill.available_features(m.module, m.params, jnp.zeros((1, 40))) == ["hidden/0", "hidden/1", "out"]
    logits, feats = jax.jit(distill.with_features(m.module, ["hidden/1"]))(m.params, jnp.ones((2, 40)))
    assert feats["hidden/1"].shape == (2, 8)
    np.testing.assert_allclose(logits, m.apply_fn(m.params, jnp.ones((2, 40))), rtol=1e-6)


def test_linen_sow_is_captured():
    class Sower(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Dense(4)(x)
            self.sow("intermediates", "hint", h * 2.0)
            return nn.Dense(3)(h)

    mod = Sower()
    params = mod.init(jax.random.key(0), jnp.zeros((1, 5)))["params"]
    _, feats = distill.with_features(mod, "hint")(params, jnp.ones((2, 5)))
    _, dense = distill.with_features(mod, "Dense_0")(params, jnp.ones((2, 5)))
    np.testing.assert_allclose(feats["hint"], 2.0 * dense["Dense_0"], rtol=1e-6)


@pytest.mark.parametrize("name", ["cnn1d", "nnx_mlp"])
def test_unknown_path_lists_available(name):
    m = models.create(name, (40,), rng=0)
    with pytest.raises(ValueError, match=r"\['Nope'\] not found; available: \[") as e:
        distill.with_features(m.module, ["Nope"], who="student")(m.params, jnp.zeros((1, 40)))
    assert ("Conv_1" if name == "cnn1d" else "hidden/0") in str(e.value)


def test_projection_shapes_and_init():
    s = {"step": jax.ShapeDtypeStruct((4, 18, 8), jnp.float32)}
    t = [distill.Outputs(None, {"t": jax.ShapeDtypeStruct((4, 18, 25), jnp.float32)})]
    term = distill.feature_loss("step", "t", "mse")
    proj = term.init(jax.random.key(0), distill.Outputs(None, s), t)
    assert proj["kernel"].shape == (8, 25) and proj["bias"].shape == (25,)
    assert distill.project(proj, jnp.ones((4, 18, 8))).shape == (4, 18, 25)
    # equal widths: no projection unless asked
    same = [distill.Outputs(None, {"t": jax.ShapeDtypeStruct((4, 18, 8), jnp.float32)})]
    assert term.init(jax.random.key(0), distill.Outputs(None, s), same) is None
    forced = distill.feature_loss("step", "t", "cosine", project_features=True).init(
        jax.random.key(0), distill.Outputs(None, s), same)
    assert forced["kernel"].shape == (8, 8)
    bad = [distill.Outputs(None, {"t": jax.ShapeDtypeStruct((4, 9, 25), jnp.float32)})]
    with pytest.raises(ValueError, match="spatial"):
        term.init(jax.random.key(0), distill.Outputs(None, s), bad)


def test_feature_losses_match_numpy():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(4, 6, 3)).astype(np.float32), rng.normal(size=(4, 6, 5)).astype(np.float32)
    t3 = rng.normal(size=(4, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(distill.mse_loss(s, t3), np.mean((s - t3) ** 2), rtol=1e-6)
    cos = np.sum(s * t3, -1) / (np.linalg.norm(s, axis=-1) * np.linalg.norm(t3, axis=-1))
    np.testing.assert_allclose(distill.cosine_loss(s, t3), np.mean(1 - cos), rtol=1e-5)

    def at(f):
        a = np.mean(f**2, -1).reshape(4, -1)
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    np.testing.assert_allclose(jax.jit(distill.attention_loss)(s, t), np.mean((at(s) - at(t)) ** 2), rtol=1e-5)
    with pytest.raises(ValueError, match="spatial"):
        distill.attention_loss(s, t[:, :5])
    with pytest.raises(ValueError, match="feature maps"):
        distill.attention_map(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="kind"):
        distill.feature_loss("a", "b", "l1")
