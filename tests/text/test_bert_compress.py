"""jaxcompress.bert_compress on a tiny random BERT: calibration, each method, the stored artifact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompress import bert_compress as bc
from jaxcompress.models import bert
from jaxcompress.pruning import wanda
from jaxcompress.quantization import gptq

CFG = bert.BertConfig(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_position=16)
MODULE = bert.BertEncoder(CFG)


def _batches():
    r = np.random.default_rng(0)
    out = []
    for _ in range(2):
        ids = r.integers(1, 40, (3, 8)).astype(np.int32)
        mask = np.ones((3, 8), np.int32)
        mask[0, 5:] = 0  # padding must not count
        out.append((ids, mask))
    return out


BATCHES = _batches()
PARAMS = MODULE.init(jax.random.key(0), *BATCHES[0])["params"]


def embed(params, module=MODULE):
    return np.concatenate([np.asarray(module.apply({"params": params}, i, m)) for i, m in BATCHES])


def captured(params, block, name):
    """The unpadded inputs of ``block/name`` over all batches, straight from ``mutable=["inputs"]``."""
    xs = []
    for ids, mask in BATCHES:
        _, st = MODULE.apply({"params": params}, ids, mask, mutable=["inputs"])
        x = np.asarray(st["inputs"][block][name]["x"][0])
        xs.append(x[mask.astype(bool)])
    return np.concatenate(xs)


REF = embed(PARAMS)


def test_block_statistics_match_captured_inputs():
    x = captured(PARAMS, "layer_1", "intermediate").astype(np.float64)
    h = bc.block_statistics(MODULE, PARAMS, BATCHES, "layer_1", "hessian")["intermediate"]
    np.testing.assert_allclose(h, 2 * x.T @ x / len(x), rtol=1e-4, atol=1e-5)
    sq = bc.block_statistics(MODULE, PARAMS, BATCHES, "layer_1", "sqnorm")["intermediate"]
    np.testing.assert_allclose(sq, (x ** 2).sum(0), rtol=1e-4)


def test_sequential_calibrates_on_the_already_compressed_blocks():
    seen = {}

    def zero_block(b, pb, stats):
        seen[b] = stats["query"]
        return {n: ({"kernel": jnp.zeros_like(v["kernel"]), "bias": v["bias"]} if n in bc.LINEARS else v)
                for n, v in pb.items()}

    bc.sequential(MODULE, PARAMS, BATCHES, "sqnorm", zero_block)
    zeroed = {**PARAMS, "layer_0": zero_block("x", PARAMS["layer_0"], {"query": None})}
    np.testing.assert_allclose(seen["layer_1"], (captured(zeroed, "layer_1", "query") ** 2).sum(0), rtol=1e-4)
    assert not np.allclose(seen["layer_1"], (captured(PARAMS, "layer_1", "query") ** 2).sum(0), rtol=1e-2)


def test_w8a8_per_token_and_static_per_tensor():
    p = bc.quantize_w8a8(PARAMS)
    q = p["layer_0"]["value"]
    assert q["qkernel"].dtype == jnp.int8 and q["scale"].shape == (1, CFG.hidden_size)
    np.testing.assert_allclose(np.asarray(q["qkernel"]) * np.asarray(q["scale"]), PARAMS["layer_0"]["value"]["kernel"],
                               atol=float(np.max(q["scale"])) / 2 + 1e-7)
    assert np.mean(np.sum(embed(p) * REF, -1)) > 0.999
    scales = bc.calibrate_activation_scales(MODULE, PARAMS, BATCHES, observer="minmax")
    x = captured(PARAMS, "layer_1", "output")
    assert float(scales["layer_1"]["output"]) == pytest.approx(np.abs(x).max() / 127, rel=1e-6)
    pt = bc.quantize_w8a8(PARAMS, "tensor", scales)
    assert pt["layer_1"]["key"]["act_scale"] == scales["layer_1"]["query"]  # q, k, v share one input
    assert np.mean(np.sum(embed(pt) * REF, -1)) > 0.99


def test_static_per_tensor_linear_matches_numpy():
    x = np.random.default_rng(1).normal(size=(2, 3, 16)).astype(np.float32)
    k = np.random.default_rng(2).normal(size=(16, 4)).astype(np.float32)
    qk = np.clip(np.round(k / (np.abs(k).max(0) / 127)), -127, 127).astype(np.int8)
    ws = (np.abs(k).max(0) / 127)[None].astype(np.float32)
    a_s = np.float32(np.abs(x).max() / 127)
    p = {"qkernel": qk, "scale": ws, "bias": np.zeros(4, np.float32), "act_scale": a_s}
    y = bert.Linear(4).apply({"params": p}, x)
    xq = np.clip(np.round(x / a_s), -127, 127).astype(np.int32)
    np.testing.assert_allclose(y, (xq @ qk.astype(np.int32)) * a_s * ws, rtol=1e-6)


@pytest.mark.parametrize("method, group_size", [("rtn", 8), ("gptq", 8), ("gptq", None)])
def test_weight_only_runs_packed_codes(method, group_size):
    p = bc.quantize_weights(MODULE, PARAMS, BATCHES, method=method, bits=4, group_size=group_size,
                            int8_embeddings=False)
    lp = p["layer_1"]["intermediate"]
    codes = np.asarray(gptq.unpack_int4(lp["packed"], (16, 32)))
    assert codes.max() <= 15 and lp["scale"].shape == (16 // (group_size or 16), 32)
    if method == "rtn":
        ref = gptq.rtn(PARAMS["layer_1"]["intermediate"]["kernel"], bits=4, group_size=group_size)
        np.testing.assert_array_equal(codes, ref.codes)
    # the packed layer computes the same as its dequantized float kernel
    rows = np.arange(16) // (16 // lp["scale"].shape[0])
    deq = np.asarray(lp["scale"])[rows] * (codes - np.asarray(lp["zero"])[rows])
    x = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    np.testing.assert_allclose(bert.Linear(32).apply({"params": lp}, x), x @ deq + np.asarray(lp["bias"]), rtol=1e-5,
                               atol=1e-5)
    assert np.mean(np.sum(embed(p) * REF, -1)) > 0.9


def test_gptq_beats_rtn_on_the_model():
    err = {}
    for m in ("rtn", "gptq"):
        p = bc.quantize_weights(MODULE, PARAMS, BATCHES, method=m, bits=3, group_size=None, int8_embeddings=False)
        err[m] = float(np.mean(1 - np.sum(embed(p) * REF, -1)))
    assert err["gptq"] < err["rtn"]


def test_prune_wanda_and_magnitude():
    sp, masks = bc.prune(MODULE, PARAMS, BATCHES, score="wanda", nm=(2, 4))
    for (b, n), m in masks.items():
        k = np.asarray(sp[b][n]["kernel"])
        assert ((k != 0).reshape(-1, 4, k.shape[1]).sum(1) <= 2).all() and np.asarray(m).mean() == 0.5
    # block 0's Wanda mask is the formula on block 0's calibration inputs
    norms = np.sqrt((captured(PARAMS, "layer_0", "intermediate") ** 2).sum(0))
    expect = wanda.nm_mask(wanda.scores(PARAMS["layer_0"]["intermediate"]["kernel"], jnp.asarray(norms)), 2, 4)
    np.testing.assert_array_equal(masks[("layer_0", "intermediate")], expect)
    mag, mmasks = bc.prune(MODULE, PARAMS, score="magnitude", sparsity=0.25)
    k = np.asarray(PARAMS["layer_1"]["output"]["kernel"])
    keep = np.asarray(mmasks[("layer_1", "output")])
    assert (keep.sum(0) == 24).all()  # 25 % of 32 inputs dropped in every output column
    for j in range(k.shape[1]):
        assert np.abs(k[keep[:, j], j]).min() >= np.abs(k[~keep[:, j], j]).max()


def test_student_and_distillation_reduce_the_loss():
    smod, sp = bc.make_student(MODULE, PARAMS, (1,))
    assert smod.config.num_layers == 1 and sp["layer_0"] is not PARAMS["layer_1"]
    np.testing.assert_array_equal(sp["layer_0"]["query"]["kernel"], PARAMS["layer_1"]["query"]["kernel"])
    ids = np.concatenate([b[0] for b in BATCHES])
    mask = np.concatenate([b[1] for b in BATCHES])
    before = float(np.mean(1 - np.sum(embed(sp, smod) * REF, -1)))
    trained = bc.distill_student(smod, sp, ids, mask, REF, steps=30, batch_size=6, lr=3e-3)
    after = float(np.mean(1 - np.sum(embed(trained, smod) * REF, -1)))
    assert after < before
    np.testing.assert_array_equal(trained["word_embeddings"]["embedding"], sp["word_embeddings"]["embedding"])


@pytest.mark.parametrize("density, expect", [(1.0, "values"), (0.5, "nm_values"), (0.2, "sparse_values")])
def test_pack_kernel_picks_the_smallest_exact_encoding(density, expect):
    r = np.random.default_rng(0)
    k = r.normal(size=(16, 8)).astype(np.float32)
    if density == 0.5:
        k = np.asarray(wanda.prune(jnp.asarray(k), nm=(2, 4))[0])
    elif density < 1:
        k[r.random(k.shape) > density] = 0
    enc = bc.pack_kernel(k)
    assert expect in enc
    np.testing.assert_array_equal(bc.unpack_kernel(enc), k)
    q = np.round(k * 10).astype(np.int8)
    np.testing.assert_array_equal(bc.unpack_kernel(bc.pack_kernel(q)), q)


def test_artifact_round_trip_and_sizes(tmp_path):
    sp, _ = bc.prune(MODULE, PARAMS, BATCHES, score="wanda", nm=(2, 4))
    variants = {"float": PARAMS, "w8a8": bc.quantize_w8a8(PARAMS), "w4": bc.quantize_weights(MODULE, PARAMS, BATCHES, group_size=8),
                "sp24_w8": bc.quantize_w8a8(sp)}
    sizes = {}
    for name, p in variants.items():
        path = str(tmp_path / f"{name}.npz")
        sizes[name] = bc.save_artifact(path, p)
        back = bc.load_artifact(path)
        for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(back)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(embed(back), embed(p))
    assert bc.artifact(variants["w8a8"])["word_embeddings"].keys() == {"q", "scale"}
    assert bc.artifact(PARAMS)["word_embeddings"].keys() == {"embedding"}
    lin = {n: bc.artifact_bytes(p, linear_only=True) for n, p in variants.items()}
    shapes = [(16, 16)] * 4 + [(16, 32), (32, 16)]  # q, k, v, attention_out, intermediate, output

    def expect(per_layer):
        return CFG.num_layers * sum(per_layer(i, o) for i, o in shapes)

    assert lin["float"] == expect(lambda i, o: 4 * i * o + 4 * o)
    assert lin["w8a8"] == expect(lambda i, o: i * o + 4 * o + 4 * o)  # int8 + scale + bias
    assert lin["w4"] == expect(lambda i, o: i * o // 2 + 5 * (i // 8) * o + 4 * o)  # nibbles + f32 scale + u8 zero
    # 2:4 int8: 2 values per 4 inputs + 4 bits of positions per group, + the int32 shape
    assert lin["sp24_w8"] == expect(lambda i, o: i * o // 2 + i * o // 8 + 8 + 4 * o + 4 * o)


def test_bad_input():
    p8 = bc.quantize_w8a8(PARAMS)
    with pytest.raises(ValueError, match="layer_0/query"):
        bc.quantize_weights(MODULE, p8, BATCHES)
    with pytest.raises(ValueError, match="act_scales"):
        bc.quantize_w8a8(PARAMS, "tensor")
    with pytest.raises(ValueError, match="activations"):
        bc.quantize_w8a8(PARAMS, "channel")
    with pytest.raises(ValueError, match="method"):
        bc.quantize_weights(MODULE, PARAMS, BATCHES, method="awq")
    with pytest.raises(ValueError, match="calibration batches"):
        bc.quantize_weights(MODULE, PARAMS, None, method="gptq", group_size=8)
    with pytest.raises(ValueError, match="calibration batches"):
        bc.prune(MODULE, PARAMS, None, score="wanda")
    with pytest.raises(ValueError, match="group_size=5 .* of layer_0/query"):
        bc.quantize_weights(MODULE, PARAMS, BATCHES, group_size=5)
    with pytest.raises(ValueError, match="teacher_layers"):
        bc.make_student(MODULE, PARAMS, (2,))
    with pytest.raises(ValueError, match="observer"):
        bc.calibrate_activation_scales(MODULE, PARAMS, BATCHES, observer="max")


def test_pure_methods_work_under_jit():
    for activations, scales in (("token", None), ("tensor", bc.calibrate_activation_scales(MODULE, PARAMS, BATCHES))):
        eager = bc.quantize_w8a8(PARAMS, activations, scales)
        jitted = jax.jit(lambda p, s: bc.quantize_w8a8(p, activations, s))(PARAMS, scales)
        for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    eager, _ = bc.prune(MODULE, PARAMS, score="magnitude", sparsity=0.5)
    jitted = jax.jit(lambda p, sp: bc.prune(MODULE, p, score="magnitude", sparsity=sp)[0])(PARAMS, 0.5)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
