"""QArray conversion, int4/int2 packing, save/load without pickle (bit-exact), sizes on disk, sparsity encoding."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxcompress.quantization as jq
from jaxcompress import layout, models, pruning, tree
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


# --- sparsity encoding of the stored artifact (non-zero values + bitmask) ---------------------------------------


def _bits(a) -> np.ndarray:
    a = np.asarray(a)
    return a.reshape(-1).view(np.dtype(f"u{a.dtype.itemsize}"))


def _meta(path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return json.loads(bytes(z["__meta__"]).decode())


def _rewrite(path, edit) -> None:
    """Re-save the .npz at ``path`` after ``edit(arrays, meta)`` changed its arrays / header in place."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays["__meta__"]).decode())
    edit(arrays, meta)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)


DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16, np.int8, np.int32]


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(0, 9), max_size=4).map(tuple), dtype=st.sampled_from(DTYPES),
       density=st.sampled_from([0.0, 0.05, 0.3, 0.5, 0.9, 1.0]), neg_zero=st.booleans(), seed=st.integers(0, 2**16))
def test_sparse_save_load_roundtrip_property(tmp_path_factory, shape, dtype, density, neg_zero, seed):
    rng = np.random.default_rng(seed)
    a = (rng.normal(size=shape) * 50).astype(dtype)
    a = np.where(rng.random(shape) < density, a, np.zeros((), dtype)).astype(dtype)
    if neg_zero and np.dtype(dtype).kind != "i":
        a = np.where(rng.random(shape) < 0.2, -np.zeros((), dtype), a).astype(dtype)  # -0.0 must come back as -0.0
    codes = np.where(a.astype(np.float32) != 0, rng.integers(-128, 128, size=shape), 0).astype(np.int8)
    qa = jq.QArray(jnp.asarray(codes), jnp.ones((), jnp.float32), jnp.zeros((), jnp.int8), shape,
                   QuantSpec(bits=8, granularity="tensor"), False)
    art = {"w": jnp.asarray(a), "q": qa}
    d = tmp_path_factory.mktemp("rt")
    size = jq.save(str(d / "s.npz"), art)
    dense = jq.save(str(d / "d.npz"), art, sparse=False)
    assert size <= dense  # the bitmask is only chosen where it makes the file smaller
    back = jq.load(str(d / "s.npz"))
    w = back["w"]
    assert w.dtype == np.dtype(dtype) and w.shape == shape
    np.testing.assert_array_equal(_bits(w), _bits(a))
    q = back["q"]
    assert isinstance(q, jq.QArray) and q.shape == shape and q.values.dtype == np.int8 and not q.packed
    np.testing.assert_array_equal(np.asarray(q.codes()), codes)
    meta = _meta(str(d / "s.npz"))
    assert meta["w"]["enc"] in ("dense", "bitmask") and meta["w"]["shape"] == list(shape)
    if meta["w"]["enc"] == "bitmask" or meta["q"]["values"]["enc"] == "bitmask":
        assert size < dense


@pytest.mark.parametrize("shape", [(), (0,), (5,), (3, 0, 2), (40, 40), (2, 3, 4, 5, 6)])
def test_sparse_all_zero_scalar_and_empty_leaves(tmp_path, shape):
    art = {"z": jnp.zeros(shape), "o": jnp.ones(shape, jnp.bfloat16), "n": -jnp.zeros(shape, jnp.float16)}
    path = str(tmp_path / "z.npz")
    jq.save(path, art)
    back = jq.load(path)
    for k in art:
        assert back[k].dtype == art[k].dtype and back[k].shape == shape
        np.testing.assert_array_equal(_bits(back[k]), _bits(art[k]))
    if shape == (40, 40):  # 6400 zero bytes -> 200 mask bytes
        assert _meta(path)["z"]["enc"] == "bitmask" and _meta(path)["o"]["enc"] == "dense"


def test_sparse_50pct_float32_kernel_file_smaller(tmp_path):
    k = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    pruned = np.where(np.abs(k) >= np.median(np.abs(k)), k, 0).astype(np.float32)  # 50 % unstructured
    assert (pruned == 0).mean() == 0.5
    dense = jq.save(str(tmp_path / "dense.npz"), {"d": {"kernel": jnp.asarray(k)}})
    as_dense = jq.save(str(tmp_path / "as_dense.npz"), {"d": {"kernel": jnp.asarray(pruned)}}, sparse=False)
    sparse = jq.save(str(tmp_path / "sparse.npz"), {"d": {"kernel": jnp.asarray(pruned)}})
    assert sparse < 0.6 * dense and sparse < 0.6 * as_dense
    assert _meta(str(tmp_path / "dense.npz"))["d/kernel"]["enc"] == "dense"  # no zeros: dense is smaller
    assert _meta(str(tmp_path / "sparse.npz"))["d/kernel"] == {"kind": "f", "enc": "bitmask", "shape": [64, 64],
                                                               "dtype": "float32"}
    back = jq.load(str(tmp_path / "sparse.npz"))["d"]["kernel"]
    assert back.dtype == jnp.float32 and back.shape == (64, 64)
    np.testing.assert_array_equal(np.asarray(back), pruned)


def test_sparse_2of4_int8_qarray_roundtrip(tmp_path):
    k = jnp.asarray(np.random.default_rng(1).normal(size=(128, 64)), jnp.float32)
    k24 = jnp.where(pruning.nm_mask(jnp.abs(k), 2, 4, axis=0), k, 0.0)  # 2 of every 4 inputs per output
    params = {"d": {"kernel": k24, "bias": jnp.zeros(64)}}
    art = jq.convert(params, QuantSpec(bits=8))
    codes = np.asarray(art["d"]["kernel"].codes())
    assert ((codes.reshape(32, 4, 64) != 0).sum(1) <= 2).all()
    path = str(tmp_path / "q24.npz")
    size = jq.save(path, art)
    dense = jq.save(str(tmp_path / "qd.npz"), art, sparse=False)
    assert dense - size > 0.3 * codes.size  # codes: 1/2 of the int8 bytes + 1/8 for the mask instead of all
    assert _meta(path)["d/kernel"]["values"] == {"enc": "bitmask", "shape": [128, 64], "dtype": "int8"}
    back = jq.load(path, like=params)
    assert jax.tree.structure(back) == jax.tree.structure(art)
    for a, b in zip(jax.tree.leaves(art), jax.tree.leaves(back)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(jq.dequantize_tree(back)["d"]["kernel"]),
                                  np.asarray(jq.dequantize_tree(art)["d"]["kernel"]))
    art4 = jq.convert(params, QuantSpec(bits=4, symmetric=False))  # packed codes are stored as they are
    p4 = str(tmp_path / "q4.npz")
    jq.save(p4, art4)
    assert _meta(p4)["d/kernel"]["values"]["enc"] == "dense"
    back4 = jq.load(p4)
    np.testing.assert_array_equal(np.asarray(back4["d"]["kernel"].values), np.asarray(art4["d"]["kernel"].values))
    np.testing.assert_array_equal(np.asarray(back4["d"]["kernel"].zero_point),
                                  np.asarray(art4["d"]["kernel"].zero_point))


def _bad_file(tmp_path):
    k = np.where(np.arange(64 * 64).reshape(64, 64) % 2 == 0, 1.0, 0.0).astype(np.float32)
    art = {"a": {"kernel": jnp.asarray(k), "dense": jnp.ones((8, 8))},
           "q": {"kernel": jq.convert({"kernel": jnp.asarray(k)}, QuantSpec(bits=8))["kernel"]},
           "z": {"kernel": jq.convert({"kernel": jnp.ones((8, 4))}, QuantSpec(bits=8, symmetric=False))["kernel"]}}
    path = str(tmp_path / "bad.npz")
    jq.save(path, art)
    m = _meta(path)
    assert m["a/kernel"]["enc"] == "bitmask" and m["a/dense"]["enc"] == "dense"
    assert m["q/kernel"]["values"]["enc"] == "bitmask"
    return path


@pytest.mark.parametrize("edit, leaf, msg", [
    (lambda a, m: a.pop("a/dense"), "a/dense", "array 'a/dense' is missing"),
    (lambda a, m: a.pop("a/kernel::mask"), "a/kernel", "'a/kernel::mask' is missing"),
    (lambda a, m: a.pop("a/kernel::nz"), "a/kernel", "'a/kernel::nz' is missing"),
    (lambda a, m: a.pop("q/kernel::values::nz"), "q/kernel", "'q/kernel::values::nz' is missing"),
    (lambda a, m: a.pop("q/kernel::scale"), "q/kernel", "'q/kernel::scale' is missing"),
    (lambda a, m: a.pop("z/kernel::zero_point"), "z/kernel", "'z/kernel::zero_point' is missing"),
    (lambda a, m: m["a/dense"].update(shape=[4, 16]), "a/dense", r"header shape \(4, 16\) but stored 'a/dense' "
                                                                 r"has shape \(8, 8\)"),
    (lambda a, m: m["a/kernel"].update(shape=[64, 65]), "a/kernel", r"header shape \(64, 65\)"),
    (lambda a, m: m["a/kernel"].update(shape=[64, 63]), "a/kernel", r"\(4032 entries\) needs a uint8 bitmask of 504"),
    (lambda a, m: a.update({"a/kernel::nz": a["a/kernel::nz"][:-1]}), "a/kernel", "bitmask marks 2048 non-zeros"),
    (lambda a, m: m["q/kernel"].update(shape=[64, 32]), "q/kernel", r"header shape \(64, 32\)"),
    (lambda a, m: m["z/kernel"].update(zp_shape=[1, 32]), "z/kernel", "zero-point shape"),
    (lambda a, m: m["a/dense"].update(dtype="int8"), "a/dense", "header dtype int8"),
    (lambda a, m: m["a/kernel"].update(enc="rle"), "a/kernel", "unknown encoding 'rle'"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_load_rejects_missing_arrays_and_bad_header_shapes(tmp_path, edit, leaf, msg):
    path = _bad_file(tmp_path)
    _rewrite(path, edit)
    with pytest.raises(ValueError, match=f"bad.npz: leaf '{leaf}': .*{msg}"):
        jq.load(path)


def test_load_rejects_file_without_header_and_reads_old_dense_files(tmp_path):
    path = str(tmp_path / "plain.npz")
    np.savez(path, w=np.ones(3))
    with pytest.raises(ValueError, match="plain.npz: no '__meta__'"):
        jq.load(path)
    old = str(tmp_path / "old.npz")  # the header before the sparsity encoding: no enc / shape / dtype
    q = jq.convert({"kernel": jnp.ones((4, 2))}, QuantSpec(bits=8))["kernel"]
    meta = {"b": {"kind": "f"}, "k": {"kind": "q", "shape": [4, 2], "spec": dataclasses.asdict(q.spec),
                                      "packed": False, "zp_shape": list(q.zero_point.shape), "zp_dtype": "int8"}}
    np.savez(old, b=np.arange(3.0, dtype=np.float32), __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8),
             **{"k::values": np.asarray(q.values), "k::scale": np.asarray(q.scale)})
    back = jq.load(old)
    np.testing.assert_array_equal(np.asarray(back["b"]), [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(np.asarray(back["k"].codes()), np.asarray(q.codes()))

