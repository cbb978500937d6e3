"""QArray conversion, int4/int2 packing, save/load without pickle (bit-exact), sizes on disk."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress.quantization as jq
from jaxcompress import layout, models, tree
from jaxcompress.model import from_apply
from jaxcompress.quantization.spec import QuantSpec


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("n", [1, 7, 8])
def test_pack_unpack_roundtrip(bits, n):
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = np.random.default_rng(bits * n).integers(lo, hi + 1, size=(n, 3))
    packed = jq.pack(q, bits)
    assert packed.dtype == np.uint8 and packed.size == -(-q.size // (4 if bits == 2 else 2))
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda p: jq.unpack(p, bits, q.shape))(packed)), q)


def test_qarray_codes_match_fake_quant():
    m = models.create("cnn1d", (40,), 10, rng=0)
    spec = QuantSpec(bits=4)
    lay = layout.trace(from_apply(m.apply_fn, m.params), jnp.zeros((1, 40)))
    with pytest.raises(ValueError, match="Conv_0/kernel"):  # conv kernels need a layout
        jq.convert(m.params, spec)
    art = jq.convert(m.params, spec, layout=lay)
    t = jq.quantize_weights(spec, layout=lay)
    fq = t.apply(m.params, t.init(m.params))
    deq = jq.dequantize_tree(art)
    for a, b in zip(jax.tree.leaves(fq), jax.tree.leaves(deq)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert isinstance(art["Conv_1"]["kernel"], jq.QArray) and not isinstance(art["Conv_1"]["bias"], jq.QArray)


@pytest.mark.parametrize("spec", [QuantSpec(bits=8), QuantSpec(bits=4), QuantSpec(bits=3, symmetric=False),
                                  QuantSpec(bits=2, granularity="tensor"), QuantSpec(bits=16),
                                  QuantSpec(bits=4, granularity="group", group_size=4)], ids=str)
def test_save_load_bit_exact(tmp_path, spec):
    m = models.create("mlp", (16,), 10, rng=0, features=(12,))
    art = jq.convert(m.params, spec)
    path = os.path.join(tmp_path, "m.npz")
    size = jq.save(path, art)
    assert size == os.path.getsize(path)
    back = jq.load(path)
    for a, b in zip(jax.tree.leaves(art), jax.tree.leaves(back)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree.structure(art) == jax.tree.structure(back)
    with np.load(path, allow_pickle=False) as z:  # readable without pickle
        assert "__meta__" in z.files


def test_save_load_nnx_state_and_sizes(tmp_path):
    m = models.create("nnx_mlp", (256,), 10, rng=0, features=(512,))
    path8, path4 = os.path.join(tmp_path, "a8.npz"), os.path.join(tmp_path, "a4.npz")
    s8 = jq.save(path8, jq.convert(m.params, QuantSpec(bits=8)))
    s4 = jq.save(path4, jq.convert(m.params, QuantSpec(bits=4)))
    fbytes = tree.nbytes(m.params)
    assert fbytes / s8 > 3.8 and fbytes / s4 > 7.0
    back = jq.load(path4, like=m.params)
    assert jax.tree.structure(jq.dequantize_tree(back)) == jax.tree.structure(m.params)
    y = m.apply_fn(jq.dequantize_tree(back), jnp.ones((2, 256)))
    assert y.shape == (2, 10)
    with pytest.raises(ValueError, match="differ at paths"):
        jq.load(path4, like={"other": jnp.ones(2)})
