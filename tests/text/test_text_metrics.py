"""Embedding-quality metrics and the stdlib text corpus."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompress import text_metrics as tm
from jaxcompress.data import text


def test_metrics_against_numpy():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(20, 8)).astype(np.float32)
    emb = ref + 0.5 * rng.normal(size=(20, 8)).astype(np.float32)
    cos = np.sum(ref * emb, 1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(emb, axis=1)
    assert float(jax.jit(tm.mean_cosine)(emb, ref)) == pytest.approx(cos.mean(), rel=1e-5)

    def nn(e):
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        s = e @ e.T
        np.fill_diagonal(s, -np.inf)
        return s.argmax(1)

    expect = np.mean(nn(emb) == nn(ref))
    assert 0 < expect < 1  # the test can tell right from wrong
    assert float(jax.jit(tm.nn_agreement)(emb, ref)) == pytest.approx(expect)
    with pytest.raises(ValueError, match="equal shapes"):
        tm.mean_cosine(jnp.ones((3, 2)), jnp.ones((3, 4)))


def test_corpus_deterministic_disjoint_and_large():
    c = text.stdlib_corpus()
    assert len(c.eval) >= 1000 and len(c.calib) >= 500
    assert len(set(c.calib)) == len(c.calib) and len(set(c.eval)) == len(c.eval)
    assert not set(c.calib) & set(c.eval)
    text.stdlib_corpus.cache_clear()
    c2 = text.stdlib_corpus()
    assert c2.calib == c.calib and c2.eval == c.eval
    assert all(5 <= len(s.split()) <= 60 for s in c.eval[:200])
    with pytest.raises(ValueError, match="calib_fraction"):
        text.stdlib_corpus(calib_fraction=1.5)
