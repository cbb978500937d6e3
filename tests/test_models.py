import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcompress import models, tree


@pytest.mark.parametrize("name, shape", [("mlp", (64,)), ("cnn2d", (64,)), ("cnn1d", (40,)), ("nnx_mlp", (64,))])
def test_output_shapes(name, shape):
    m = models.create(name, shape, num_classes=7, rng=0)
    out = jax.jit(m.apply_fn)(m.params, jnp.zeros((5, *shape)))
    assert out.shape == (5, 7)


def test_default_sizes():
    assert tree.count_params(models.create("mlp", (64,)).params) == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    # shared/BENCHMARKS.md: the MNIST-1D CNN has about 8.4K parameters
    assert tree.count_params(models.create("cnn1d", (40,)).params) == 8460


def test_unknown_model_lists_names():
    with pytest.raises(ValueError, match=r"mlp.*cnn1d"):
        models.create("resnet", (64,))


def test_nnx_adapter_matches_module_and_is_a_pytree():
    module = models.NNXMLP(6, (5,), 3, rngs=nnx.Rngs(1))
    apply_fn, params = models.nnx_to_apply(module)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6)), jnp.float32)
    np.testing.assert_allclose(apply_fn(params, x), module(x), rtol=1e-6)
    assert isinstance(params, nnx.State)
    assert tree.paths(params) == ["hidden/0/bias", "hidden/0/kernel", "out/bias", "out/kernel"]
    # a pure function of params: scaling the last kernel changes outputs, under jit too
    doubled = jax.tree.map(lambda a: a * 2, params)
    assert not np.allclose(jax.jit(apply_fn)(doubled, x), apply_fn(params, x))
