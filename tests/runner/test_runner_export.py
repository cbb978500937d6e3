"""The compact artifact: real bytes, loaded back without pickle, equal to what was saved."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompress import export, models, quantization, tree


def _sparse_params(sparsity=0.9, seed=0):
    m = models.create("mlp", (64,), 10, rng=seed, features=(100, 50))
    rng = np.random.default_rng(seed)

    def prune(path, x):
        x = np.asarray(x)
        if x.ndim < 2:
            return jnp.asarray(x)
        return jnp.asarray(np.where(rng.random(x.shape) < sparsity, 0.0, x).astype(np.float32))

    return m, tree.map_with_path(prune, m.params)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_roundtrip_equals_saved_and_library_dequantization(tmp_path, bits):
    _, params = _sparse_params()
    size, saved = export.save(str(tmp_path / "m.jxc"), params, bits=bits)
    assert size == (tmp_path / "m.jxc").stat().st_size
    loaded = export.load(str(tmp_path / "m.jxc"))
    assert sorted(loaded) == sorted(saved)
    for p in saved:
        np.testing.assert_array_equal(loaded[p], saved[p])
    # the codes are the library's: equal to quantization.convert -> dequantize_tree
    ref = dict(tree.named_leaves(quantization.dequantize_tree(
        quantization.convert(params, quantization.QuantSpec(bits=bits)))))
    for p, v in ref.items():
        np.testing.assert_array_equal(loaded[p], np.asarray(v))


def test_sparse_low_bit_is_small_and_keeps_zeros(tmp_path):
    m, params = _sparse_params(0.9)
    size, saved = export.save(str(tmp_path / "m.jxc"), params, bits=4, float_dtype="float16")
    float32_bytes = 4 * tree.count_params(params)
    assert float32_bytes / size > 10  # 90 % zeros + 4-bit codes + lzma
    back = export.load(str(tmp_path / "m.jxc"), like=params)
    k = np.asarray(params["Dense_0"]["kernel"])
    assert np.all(np.asarray(back["Dense_0"]["kernel"])[k == 0] == 0)
    # a hand reference for one channel: symmetric scale = max|w| / 7, codes = round(w / scale)
    col = k[:, 0]
    s = np.float32(np.abs(col).max() / np.float32(7))
    np.testing.assert_allclose(np.asarray(back["Dense_0"]["kernel"])[:, 0], np.rint(col / s) * s, atol=1e-6)
    assert m.apply_fn(back, jnp.zeros((2, 64))).shape == (2, 10)


def test_nnx_state_roundtrip(tmp_path):
    m = models.create("nnx_mlp", (64,), 10, rng=0, features=(16,))
    size, saved = export.save(str(tmp_path / "n.jxc"), m.params, bits=4)
    back = export.load(str(tmp_path / "n.jxc"), like=m.params)
    assert jax.tree.structure(back) == jax.tree.structure(m.params)
    for (p, a), (_, b) in zip(tree.named_leaves(back), tree.named_leaves(m.params)):
        np.testing.assert_array_equal(np.asarray(a), saved[p])


def test_bad_input_raises_value_error(tmp_path):
    _, params = _sparse_params()
    with pytest.raises(ValueError, match="bits must be an integer in"):
        export.compress(params, bits=1)
    with pytest.raises(ValueError, match="codec must be one of"):
        export.compress(params, codec="gzip")
    bad = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), params)
    with pytest.raises(ValueError, match="Dense_0/bias"):
        export.compress(bad)
    blob, _ = export.compress(params)
    with pytest.raises(ValueError, match="damaged jaxcompress artifact"):
        export.decompress(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="bad magic"):
        export.decompress(b"PK\x03\x04" + blob[4:])
