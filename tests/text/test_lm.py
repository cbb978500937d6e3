"""The language-modelling pieces: the stdlib-source corpus, the GPT, windows and perplexity, the engine on a GPT."""

import math
import pathlib

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcompress import lm, train
from jaxcompress.calibration import methods as cm
from jaxcompress.data import code
from jaxcompress.models import gpt


def _tree(tmp_path: pathlib.Path, n: int = 40) -> str:
    root = tmp_path / "src"
    for i in range(n):
        d = root / ("pkg" if i % 3 else "") / ("test" if i == 5 else "")
        d.mkdir(parents=True, exist_ok=True)
        (d / f"mod_{i:02d}.py").write_text(
            "".join(f"def function_{i}_{j}(value, other=None):\n    return value * {j} + {i}\n\n" for j in range(20)))
    return str(root)


def test_corpus_splits_by_file_and_is_deterministic(tmp_path):
    root = _tree(tmp_path)
    files = code.stdlib_files(root)
    assert all("test" not in pathlib.Path(f).parts for f in files) and len(files) == 39
    a = code.stdlib_code(vocab_size=300, cache_dir=str(tmp_path / "c1"), root=root, fractions=(0.6, 0.2))
    b = code.stdlib_code(vocab_size=300, cache_dir=str(tmp_path / "c2"), root=root, fractions=(0.6, 0.2))
    cached = code.stdlib_code(vocab_size=300, cache_dir=str(tmp_path / "c1"), root=root, fractions=(0.6, 0.2))
    for s in code.SPLITS:
        np.testing.assert_array_equal(a.tokens[s], b.tokens[s])
        np.testing.assert_array_equal(a.tokens[s], cached.tokens[s])
        assert a.tokens[s].dtype == np.int32 and a.tokens[s].max() < 300
    assert a.tokenizer.to_str() == b.tokenizer.to_str()
    split_files = [set(a.files[s]) for s in code.SPLITS]
    assert sum(map(len, split_files)) == 39 and not (split_files[0] & split_files[1] or split_files[0] & split_files[2])
    for s in code.SPLITS:  # a file's split depends on its own path only
        assert all(code.split_of(f, (0.6, 0.2)) == s for f in a.files[s])
    # the text round-trips through the byte-level BPE
    first = a.tokens["train"][: list(a.tokens["train"]).index(a.tokenizer.token_to_id(code.EOT))]
    assert a.tokenizer.decode(first.tolist()).startswith("def function_")
    assert a.counts()["tokens_train"] == a.tokens["train"].size


def test_corpus_bad_settings(tmp_path):
    root = _tree(tmp_path, n=3)
    with pytest.raises(ValueError, match="split 'validation'|split 'test'|split 'train'"):
        code.stdlib_code(vocab_size=300, cache_dir=str(tmp_path / "c"), root=root, fractions=(0.9, 0.05))
    with pytest.raises(ValueError, match="vocab_size"):
        code.stdlib_code(vocab_size=10)
    with pytest.raises(ValueError, match="fractions"):
        code.stdlib_code(fractions=(0.9, 0.2))


def test_windows_and_perplexity_against_numpy():
    x, y = lm.windows(np.arange(11), context=4, stride=3)
    assert x.tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]] and (y == x + 1).all()
    rng = np.random.default_rng(0)
    table = rng.normal(size=(8, 8)).astype(np.float32)  # a bigram "model": logits of the next token
    toks = rng.integers(0, 8, 41)
    got = lm.perplexity(lambda p, ids: p[ids], jnp.asarray(table), toks, context=8, stride=4, batch_size=3)
    logp = table - np.log(np.exp(table).sum(-1, keepdims=True))
    nll = -np.mean([logp[toks[i], toks[i + 1]] for i in range(40)])  # every token after the first once
    assert got["tokens"] == 40 and math.isclose(got["nll"], nll, rel_tol=1e-5)
    with pytest.raises(ValueError, match="stride"):
        lm.perplexity(lambda p, ids: p[ids], table, toks, context=8, stride=9)
    with pytest.raises(ValueError, match="context"):
        lm.windows(np.arange(4), context=8)


def test_gpt_is_causal_and_checks_its_settings():
    m = gpt.create(vocab_size=50, context=16, d_model=32, n_layers=2, n_heads=2)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 16)), jnp.int32)
    out = m.apply_fn(m.params, ids)
    changed = m.apply_fn(m.params, ids.at[:, 10].set((ids[:, 10] + 1) % 50))
    np.testing.assert_allclose(out[:, :10], changed[:, :10], atol=1e-6)  # the future never leaks back
    assert not np.allclose(out[:, 10:], changed[:, 10:])
    with pytest.raises(ValueError, match="context=16"):
        m.apply_fn(m.params, jnp.zeros((1, 17), jnp.int32))
    with pytest.raises(ValueError, match="vocab_size=60"):
        lm.check_vocab(m, 60)
    with pytest.raises(ValueError, match="context=32"):
        lm.check_vocab(m, 50, context=32)
    with pytest.raises(ValueError, match="n_heads"):
        gpt.create(vocab_size=50, d_model=30, n_heads=4)
    tied = gpt.create(vocab_size=50, context=16, d_model=32, n_layers=1, n_heads=2, tie_embeddings=True)
    assert "lm_head" not in tied.params and tied.apply_fn(tied.params, ids).shape == (2, 16, 50)


def test_gpt_trains_and_the_engine_compresses_it():
    """Next-token training lowers the loss; GPTQ / SparseGPT run on the blocks, the head stays float."""
    rng = np.random.default_rng(0)
    toks = np.tile(rng.integers(0, 32, 17), 40)  # a repeating pattern: learnable
    x, y = lm.windows(toks, context=16)
    m = gpt.create(vocab_size=32, context=16, d_model=32, n_layers=2, n_heads=2)
    before = lm.perplexity(m, None, toks, context=16)["perplexity"]
    state, _ = train.fit(m, None, optax.adam(3e-3), x, y, steps=60, batch_size=8)
    m = m.replace(params=state.params)
    after = lm.perplexity(m, None, toks, context=16)["perplexity"]
    assert after < before / 2
    calib = [jnp.asarray(x[:8])]
    blocks_only = lambda p: p.startswith("blocks_")  # noqa: E731
    q = cm.gptq(m, calib, bits=4, group_size=32, blocks=gpt.BLOCKS, where=blocks_only)
    assert sorted(q.quantized) == sorted(f"blocks_{i}/{n}/kernel" for i in range(2)
                                         for n in ("query", "key", "value", "out", "fc", "proj"))
    s = cm.sparsegpt(m, calib, nm=(2, 4), blocks=gpt.BLOCKS, where=blocks_only)
    k = np.asarray(s.params["blocks_1"]["fc"]["kernel"])
    assert (np.count_nonzero(k.reshape(-1, 4, k.shape[1]), axis=1) <= 2).all()
    np.testing.assert_array_equal(s.params["lm_head"]["kernel"], m.params["lm_head"]["kernel"])
    for r in (q, s):
        assert lm.perplexity(m, r.params, toks, context=16)["perplexity"] < before
