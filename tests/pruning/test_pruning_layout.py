"""Pruning with a weight layout: attention blocks the tests define (linen and NNX), 3-D kernels.

The layout (``jaxcompress.layout.trace``) decides what is pruned by default (weight operands only:
never biases, the 2-D q/k/v biases or LayerNorm scales), which axis N:M groups run along (the input
axis: ``in`` for q/k/v ``(in, heads, head_dim)``, ``head_dim`` for out ``(heads, head_dim, features)``)
and which positions structured pruning removes (output positions over all output axes).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxcompress.pruning as jp
from jaxcompress import layout, train, tree
from jaxcompress.layout import WeightLayout
from jaxcompress.model import from_linen, from_nnx
from jaxcompress.transform import Context

FEAT, CLASSES = 16, 8
X = jax.random.normal(jax.random.key(0), (8, 4, FEAT))
Y = jnp.arange(8, dtype=jnp.int32) % CLASSES


class LinenBlock(nn.Module):
    """Pre-LN attention + MLP, mean-pooled to logits."""

    @nn.compact
    def __call__(self, x):
        x = x + nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=16)(nn.LayerNorm()(x))
        x = x + nn.Dense(FEAT)(nn.gelu(nn.Dense(32)(nn.LayerNorm()(x))))
        return nn.Dense(CLASSES)(jnp.mean(x, 1))


class NNXBlock(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.ln = nnx.LayerNorm(FEAT, rngs=rngs)
        self.att = nnx.MultiHeadAttention(2, FEAT, 16, decode=False, rngs=rngs)
        self.mlp = nnx.Linear(FEAT, 32, rngs=rngs)
        self.head = nnx.Linear(32, CLASSES, rngs=rngs)

    def __call__(self, x):
        h = nnx.gelu(self.mlp(x + self.att(self.ln(x))))
        return self.head(jnp.mean(h, 1))


def linen_model():
    mod = LinenBlock()
    return from_linen(mod, mod.init(jax.random.key(1), X[:1]))


def nnx_model():
    return from_nnx(NNXBlock(nnx.Rngs(1)))


MODELS = {"linen": (linen_model, "MultiHeadDotProductAttention_0/"), "nnx": (nnx_model, "att/")}


@pytest.fixture(params=list(MODELS))
def block(request):
    make, att = MODELS[request.param]
    m = make()
    return m, layout.trace(m, X[:1]), att


def named(masks):
    return dict(jp.masks.named_masks(masks))


def groups(mask, axis, m=4):
    g = np.moveaxis(np.asarray(mask), axis, -1)
    return g.reshape(*g.shape[:-1], -1, m).sum(-1)


def test_default_selection_is_weight_operands_only(block):
    m, lay, att = block
    for t in (jp.magnitude(0.5, layout=lay), jp.magnitude(0.5), jp.rigl(0.5, layout=lay)):
        masked = set(named(jax.jit(t.init)(m.params).masks))
        assert masked == set(lay), masked
        assert not any(p.endswith(("bias", "scale")) for p in masked)
    assert f"{att}query/bias" in tree.paths(m.params)  # the 2-D (heads, head_dim) bias exists, untouched
    assert set(named(jp.ones_like(m.params, layout=lay))) == set(lay)
    assert jp.params_sparsity(m.params, layout=lay) == 0.0


def test_nm_2_4_along_the_input_axis_of_attention_kernels(block):
    m, lay, att = block
    t = jp.magnitude(nm=(2, 4), layout=lay)
    state = train.create_train_state(m, optax.adam(1e-3), t)
    step = train.make_train_step(m, optax.adam(1e-3), t)
    for _ in range(2):
        state, _ = step(state, (X, Y))
    pv = dict(tree.named_leaves(state.params))
    for name in ("query", "key", "value"):  # (in, heads, head_dim): groups along in
        p = f"{att}{name}/kernel"
        assert lay[p].group_axis == 0 and pv[p].ndim == 3
        assert (groups(pv[p] != 0, 0) <= 2).all() and (groups(named(state.tstate.masks)[p], 0) == 2).all(), p
    p = f"{att}out/kernel"  # (heads, head_dim, features): the innermost contracted axis, head_dim
    assert lay[p].group_axis == 1
    assert (groups(named(state.tstate.masks)[p], 1) == 2).all()
    assert (groups(pv[p] != 0, 1) <= 2).all()
    assert set(named(state.tstate.masks)) == set(lay)  # no bias (the (heads, head_dim) q/k/v ones included)


def test_explicit_nm_axis(block):
    m, lay, att = block
    q = f"{att}query/kernel"
    with pytest.raises(ValueError, match=f"N:M axis -1 is an output axis of '{q}'"):
        jp.magnitude(nm=(2, 4, -1), where="query/kernel", layout=lay).init(m.params)
    with pytest.raises(ValueError, match=f"N:M axis 1 is an output axis of '{q}'"):
        jp.magnitude(nm=(2, 4, 1), where="query/kernel", layout=lay).init(m.params)
    # without a layout an explicit axis is the user's word
    mk = named(jax.jit(jp.magnitude(nm=(2, 4, -1), where="query/kernel").init)(m.params).masks)[q]
    assert (groups(mk, 2) == 2).all()
    with pytest.raises(ValueError, match=f"axis 3 is out of range for parameter '{q}'"):
        jp.magnitude(nm=(2, 4, 3), where="query/kernel").init(m.params)


def test_3d_kernel_without_layout_raises_naming_it(block):
    m, _, att = block
    for t in (jp.magnitude(nm=(2, 4)), jp.magnitude(0.5, structured=1)):
        with pytest.raises(ValueError, match=f"'{att}key/kernel'.*ambiguous"):
            t.init(m.params)


def test_layout_naming_a_missing_leaf_raises_naming_it(block):
    m, lay, _ = block
    bad = dict(lay, **{"Decoder_9/kernel": WeightLayout((0,), (1,), 0, "dot_general")})
    for fn in (jp.magnitude(0.5, layout=bad).init, jp.set_(0.5, layout=bad).init,
               lambda p: jp.ones_like(p, layout=bad)):
        with pytest.raises(ValueError, match="Decoder_9/kernel"):
            fn(m.params)


def test_layout_leaf_not_listed_needs_axes(block):
    m, lay, att = block
    part = {p: w for p, w in lay.items() if "query" not in p}
    with pytest.raises(ValueError, match=f"'{att}query/kernel' is not a weight operand in the layout"):
        jp.magnitude(nm=(2, 4), where="kernel", layout=part).init(m.params)
    st_ = jp.magnitude(0.5, where="kernel", layout=part).init(m.params)  # unstructured needs no axes
    assert f"{att}query/kernel" in named(st_.masks)


def test_structured_removes_whole_head_positions_of_dense_general(count_traces):
    mod = nn.DenseGeneral((2, 8))  # kernel (in, heads, head_dim), bias (heads, head_dim)
    m = from_linen(mod, mod.init(jax.random.key(0), jnp.zeros((1, FEAT))))
    lay = layout.trace(m, jnp.zeros((1, FEAT)))
    t = jp.magnitude(0.5, structured=2, layout=lay, schedule=jp.polynomial(begin=0, end=2, frequency=1))
    inner = count_traces(lambda p, s, step: t.update(p, s, Context(step=step)))
    update = jax.jit(inner)
    for target in (0.5, 0.75):
        s = jp.with_sparsity(jax.jit(t.init)(m.params), target)
        params = m.params
        for i in range(1, 4):
            params, s = update(params, s, jnp.int32(i))
        k, b = np.asarray(s.masks["kernel"]), np.asarray(s.masks["bias"])
        assert k.shape == (FEAT, 2, 8) and b.shape == (2, 8)
        assert (k == b[None]).all()  # a (head, head_dim) position is kept or removed whole, with its bias
        assert b.sum() == 16 - round(target * 16)
        w = np.asarray(params["kernel"])
        assert (w[:, ~b] == 0).all() and (w[:, b] != 0).all()
        norms = np.sqrt((np.asarray(m.params["kernel"]) ** 2).sum(0))
        assert norms[b].min() >= norms[~b].max()
    assert inner.traces == 1


def test_structured_attention_out_kernel_masks_features_and_bias(block):
    m, lay, att = block
    st_ = jax.jit(jp.magnitude(0.5, structured=1, where="out/kernel", layout=lay).init)(m.params)
    mk = named(st_.masks)
    k, b = np.asarray(mk[f"{att}out/kernel"]), np.asarray(mk[f"{att}out/bias"])
    assert k.shape == (2, 8, FEAT) and b.shape == (FEAT,)
    assert (k == b[None, None]).all() and b.sum() == FEAT // 2


@settings(max_examples=12, deadline=None)
@given(n_m=st.sampled_from([(1, 4), (2, 4), (3, 4), (2, 8)]), pos=st.integers(0, 2),
       groups_=st.integers(1, 3), others=st.tuples(st.integers(1, 3), st.integers(1, 3)), seed=st.integers(0, 99))
def test_nm_counts_exact_along_the_group_axis(n_m, pos, groups_, others, seed):
    n, m = n_m
    shape = list(others)
    shape.insert(pos, groups_ * m)
    shape = tuple(shape)
    outs = tuple(a for a in range(3) if a != pos)
    lay = {"w/kernel": WeightLayout((pos,), outs, pos, "dot_general")}
    params = {"w": {"kernel": jax.random.normal(jax.random.key(seed), shape), "bias": jnp.zeros(shape[outs[-1]])}}
    t = jp.magnitude(nm=(n, m), layout=lay)
    s = jax.jit(t.init)(params)
    assert s.masks["w"]["bias"] is None
    mk = np.asarray(s.masks["w"]["kernel"])
    assert (groups(mk, pos, m) == n).all()
    w = np.moveaxis(np.abs(np.asarray(params["w"]["kernel"])), pos, -1).reshape(*groups(mk, pos, m).shape, m)
    g = np.moveaxis(mk, pos, -1).reshape(w.shape)
    assert (np.where(g, w, np.inf).min(-1) >= np.where(g, -np.inf, w).max(-1)).all()


class Transposed(nn.Module):
    """A user layer storing its weight as (out, in) and computing ``x @ w.T``."""

    @nn.compact
    def __call__(self, x):
        w = self.param("kernel", nn.initializers.normal(1.0), (12, x.shape[-1]))
        b = self.param("bias", nn.initializers.zeros, (12,))
        return x @ w.T + b[None]


def test_layout_of_a_transposed_weight_drives_nm_and_structured():
    mod = Transposed()
    m = from_linen(mod, mod.init(jax.random.key(0), jnp.zeros((1, FEAT))))
    lay = layout.trace(m, jnp.zeros((1, FEAT)))
    assert lay["kernel"].inputs == (1,) and lay["kernel"].outputs == (0,)
    mk = np.asarray(jax.jit(jp.magnitude(nm=(2, 4), layout=lay).init)(m.params).masks["kernel"])
    assert (groups(mk, 1) == 2).all()  # along in = axis 1 (axis 0, 12 rows, would also divide by 4)
    with pytest.raises(ValueError, match="output axis of 'kernel'"):
        jp.magnitude(nm=(2, 4, 0), layout=lay).init(m.params)
    s = jax.jit(jp.magnitude(0.25, structured=1, layout=lay).init)(m.params)
    k, b = np.asarray(s.masks["kernel"]), np.asarray(s.masks["bias"])
    assert (k == b[:, None]).all() and b.sum() == 9  # whole rows (output units) with their bias
