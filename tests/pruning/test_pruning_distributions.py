"""Sparsity distributions: ERK against the formula, uniform variants, per-path maps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress.pruning as jp
from jaxcompress.pruning import distributions as D

SHAPES = {"Conv_0/kernel": (5, 1, 25), "Conv_1/kernel": (5, 25, 25), "Conv_2/kernel": (5, 25, 25),
          "Dense_0/kernel": (200, 10)}


def erk_reference(shapes, sparsity):
    """Evci et al. 2020: density_l = eps * sum(shape)/prod(shape), capped at 1, re-solved."""
    n = {p: float(np.prod(s)) for p, s in shapes.items()}
    raw = {p: float(np.sum(s)) / n[p] for p, s in shapes.items()}
    dense = set()
    while True:
        budget = (1 - sparsity) * sum(n.values()) - sum(n[p] for p in dense)
        eps = budget / sum(n[p] * raw[p] for p in shapes if p not in dense)
        over = {p for p in shapes if p not in dense and eps * raw[p] > 1}
        if not over:
            return {p: 0.0 if p in dense else 1 - eps * raw[p] for p in shapes}
        dense |= over


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9, 0.95])
def test_erk_matches_formula_and_total(sparsity):
    got = jax.jit(lambda s: D.erk(SHAPES, s))(jnp.float32(sparsity))
    ref = erk_reference(SHAPES, sparsity)
    for p in SHAPES:
        assert abs(float(got[p]) - ref[p]) < 1e-5, p
    n = {p: np.prod(s) for p, s in SHAPES.items()}
    total = sum(n[p] * float(got[p]) for p in SHAPES) / sum(n.values())
    assert abs(total - sparsity) < 1e-5


def test_erk_caps_dense_layers_and_rescales():
    shapes = {"a": (100, 100), "b": (10, 10), "c": (50, 3)}
    got = D.erk(shapes, 0.6)
    ref = erk_reference(shapes, 0.6)
    assert ref["b"] == 0.0 and float(got["b"]) == 0.0
    for p in shapes:
        assert abs(float(got[p]) - ref[p]) < 1e-5


def test_first_last_dense_and_uniform():
    got = D.distribute(SHAPES, 0.7, "first_last_dense")
    assert [round(float(v), 6) for v in got.values()] == [0.0, 0.7, 0.7, 0.0]
    assert all(abs(float(v) - 0.7) < 1e-7 for v in D.distribute(SHAPES, 0.7, "uniform").values())


def test_per_path_map_and_overrides():
    got = D.distribute(SHAPES, 0.5, {"Conv_[12]": 0.9})
    assert [round(float(v), 6) for v in got.values()] == [0.5, 0.9, 0.9, 0.5]
    got = D.distribute(SHAPES, 0.5, "erk", overrides={"Dense": 0.0})
    assert float(got["Dense_0/kernel"]) == 0.0


def test_unused_pattern_and_bad_values_raise():
    with pytest.raises(ValueError, match="match no pruned parameter"):
        D.distribute(SHAPES, 0.5, {"Dense_7": 0.9})
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        D.distribute(SHAPES, 0.5, {"Dense": 1.0})
    with pytest.raises(ValueError, match="unknown distribution"):
        D.distribute(SHAPES, 0.5, "erdos")


def test_erk_transform_sparsity_on_model():
    from jaxcompress import models
    m = models.create("cnn1d", (40,), 10)
    st = jp.magnitude(0.9, distribution="erk").init(m.params)
    assert abs(jp.sparsity(st.masks) - 0.9) < 2e-3
