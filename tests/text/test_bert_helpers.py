"""The MiniLM helpers (student, calibration batches, distillation onto stored embeddings) and a
compressed BERT stored and read back, on a tiny random BERT (plain Flax: nothing in the model knows
about compression)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompress.calibration import methods as cm
from jaxcompress.distillation.targets import fit_targets
from jaxcompress.model import from_linen
from jaxcompress.models import bert

CFG = bert.BertConfig(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_position=16)
MODULE = bert.BertEncoder(CFG)
ENGINE = dict(blocks=r"layer_\d+", token_mask=lambda inputs: inputs[1])


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
MODEL = from_linen(MODULE, {"params": PARAMS})


def embed(params, module=MODULE):
    return np.concatenate([np.asarray(module.apply({"params": params}, i, m)) for i, m in BATCHES])


REF = embed(PARAMS)


def test_models_are_plain_flax():
    """``jaxcompress.models`` imports no technique; the encoder's layers are plain ``nn.Dense``."""
    import ast
    import pathlib

    import jaxcompress.models as pkg

    techniques = ("quantization", "pruning", "distillation", "calibration", "interception")
    for f in pathlib.Path(pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else [])
            for n in names:
                assert not any(n.startswith(f"jaxcompress.{t}") for t in techniques), (f.name, n)
    assert "sow(" not in pathlib.Path(bert.__file__).read_text()
    assert set(PARAMS["layer_0"]["query"]) == {"kernel", "bias"}


def test_student_and_fit_targets_reduce_the_loss():
    smod, sp = bert.student(MODULE, PARAMS, (1,))
    assert smod.config.num_layers == 1 and sp["layer_0"]["query"]["kernel"] is not PARAMS["layer_1"]["query"]["kernel"]
    np.testing.assert_array_equal(sp["layer_0"]["query"]["kernel"], PARAMS["layer_1"]["query"]["kernel"])
    ids = np.concatenate([b[0] for b in BATCHES])
    mask = np.concatenate([b[1] for b in BATCHES])
    sm = bert.student_model(smod, sp)
    assert sorted(sm.params) == ["layer_0"]
    before = float(np.mean(1 - np.sum(embed(sp, smod) * REF, -1)))
    trained = {**sm.state, **fit_targets(sm, (ids, mask), REF, steps=30, batch_size=6, lr=3e-3)}
    after = float(np.mean(1 - np.sum(embed(trained, smod) * REF, -1)))
    assert after < before
    np.testing.assert_array_equal(trained["word_embeddings"]["embedding"], sp["word_embeddings"]["embedding"])


def test_bad_input():
    with pytest.raises(ValueError, match="teacher_layers"):
        bert.student(MODULE, PARAMS, (2,))
    with pytest.raises(ValueError, match="teacher_layers"):
        bert.student(MODULE, PARAMS, ())
    with pytest.raises(ValueError, match="rows"):
        fit_targets(bert.student_model(MODULE, PARAMS), BATCHES[0], REF, steps=1)
    with pytest.raises(ValueError, match="positive"):
        fit_targets(bert.student_model(MODULE, PARAMS), BATCHES[0], REF[:3], steps=0)


def _variants():
    sp = cm.wanda(MODEL, BATCHES, nm=(2, 4), **ENGINE)
    pruned = from_linen(MODULE, {"params": sp.params})
    return {"float": cm.Compressed(PARAMS, {}, {}, {}),
            "w8a8": cm.embeddings(MODEL, BATCHES[0], cm.w8a8(MODEL, BATCHES)),
            "w8a8_tensor": cm.w8a8(MODEL, BATCHES, activations="tensor", token_mask=ENGINE["token_mask"]),
            "w4": cm.embeddings(MODEL, BATCHES[0], cm.gptq(MODEL, BATCHES, group_size=8, **ENGINE)),
            "sp24_w8": cm.w8a8(pruned, BATCHES)}


def test_compressed_round_trip_and_sizes(tmp_path):
    variants = _variants()
    sizes = {}
    for name, r in variants.items():
        path = str(tmp_path / f"{name}.npz")
        sizes[name] = r.save(path)
        back = cm.Compressed.load(path)
        assert sorted(back.quantized) == sorted(r.quantized), name
        for a, b in zip(jax.tree.leaves(r.params), jax.tree.leaves(back.params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        for p in r.act_scales:
            np.testing.assert_array_equal(np.asarray(back.act_scales[p]), np.asarray(r.act_scales[p]))
        np.testing.assert_array_equal(embed(back.params), embed(r.params))
    w8 = variants["w8a8"].quantized
    emb = w8["word_embeddings/embedding"]  # int8 rows, one scale each
    assert emb.spec.bits == 8 and emb.scale.shape == (CFG.vocab_size, 1)
    np.testing.assert_allclose(np.asarray(emb.scale)[:, 0], np.abs(PARAMS["word_embeddings"]["embedding"]).max(1) / 127,
                               rtol=1e-6)
    tables = {p for p in w8 if not p.startswith("layer_")}
    assert tables == {"word_embeddings/embedding", "position_embeddings/embedding", "token_type_embeddings/embedding"}
    only = cm.embeddings(MODEL, BATCHES[0], where=lambda p: p.startswith("word_embeddings/"))
    assert sorted(only.quantized) == ["word_embeddings/embedding"]
    np.testing.assert_array_equal(only.params["position_embeddings"]["embedding"],
                                  PARAMS["position_embeddings"]["embedding"])
    shapes = [(16, 16)] * 4 + [(16, 32), (32, 16)]  # q, k, v, attention_out, intermediate, output
    lin = lambda r: sum(r.quantized[p].nbytes for p in r.quantized if p.startswith("layer_"))
    assert lin(variants["w8a8"]) == CFG.num_layers * sum(i * o + 4 * o for i, o in shapes)  # int8 + f32 scale
    assert lin(variants["w4"]) == CFG.num_layers * sum(i * o // 2 + 5 * (i // 8) * o for i, o in shapes)  # + i8 zero
    assert max(sizes["w8a8"], sizes["w4"]) < sizes["float"]  # (group 8: 4-bit codes + scales ~ 1.1 bytes/weight)


def test_stored_w8a8_runs_the_integer_path(tmp_path):
    r = _variants()["w8a8_tensor"]
    r.save(str(tmp_path / "a.npz"))
    back = cm.Compressed.load(str(tmp_path / "a.npz"))
    fn = jax.jit(cm.integer_apply(MODEL, back))
    y = np.concatenate([np.asarray(fn(back.params, b)) for b in BATCHES])
    f0 = jax.jit(cm.integer_apply(MODEL, r))
    y0 = np.concatenate([np.asarray(f0(r.params, b)) for b in BATCHES])
    np.testing.assert_array_equal(y, y0)
    assert float(np.mean(np.sum(y * REF, -1))) > 0.95


def test_calibration_batches_pad_with_masked_rows():
    class Tok:  # the tokenizers.Tokenizer calls calibration_batches makes
        def no_padding(self):
            pass

        def enable_truncation(self, max_length):
            self.n = max_length

        def encode_batch(self, sents):
            return [type("E", (), {"ids": [1] * min(len(s), self.n)}) for s in sents]

    b = bert.calibration_batches(Tok(), ["abc", "a", "abcdefghij"], batch_size=2, max_length=6)
    assert [x[0].shape for x in b] == [(2, 6), (2, 6)]
    assert b[0][1].sum(1).tolist() == [3, 1] and b[1][1].sum(1).tolist() == [6, 0]
    with pytest.raises(ValueError, match="at least one"):
        bert.calibration_batches(Tok(), [])
