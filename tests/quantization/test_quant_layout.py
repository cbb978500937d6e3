"""Quantization takes the weight layout; integer inference never silently runs in float.

Models are defined here (not the zoo): a linen block with ``nn.MultiHeadDotProductAttention``
and an NNX block with ``nnx.MultiHeadAttention`` (3-D DenseGeneral kernels ``(in, heads,
head_dim)`` and ``(heads, head_dim, out)``, 2-D q/k/v biases), a linen CNN with BatchNorm and
an NNX MLP with BatchNorm. Numerics are checked against plain numpy.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxcompress.quantization as jq
from jaxcompress import layout, tree
from jaxcompress.layout import WeightLayout
from jaxcompress.model import from_apply, from_linen, from_nnx
from jaxcompress.quantization.spec import QuantSpec

INT8 = QuantSpec(bits=8)
ACT = QuantSpec(bits=8, granularity="tensor")
D, HEADS = 16, 2


class LinenAttn(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.MultiHeadDotProductAttention(num_heads=HEADS, qkv_features=D)(nn.LayerNorm()(x))
        return nn.Dense(4)(jnp.mean(x + h, 1))


class NNXAttn(nnx.Module):
    def __init__(self, rngs):
        self.ln = nnx.LayerNorm(D, rngs=rngs)
        self.att = nnx.MultiHeadAttention(HEADS, D, D, decode=False, rngs=rngs)
        self.head = nnx.Linear(D, 4, rngs=rngs)

    def __call__(self, x):
        return self.head(jnp.mean(x + self.att(self.ln(x)), 1))


class LinenBNCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x[..., None]
        for c in (4, 8):
            x = nn.Conv(c, (3,), padding="SAME")(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.5)(x))
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


class NNXBNMLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(12, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, momentum=0.5, rngs=rngs)
        self.l2 = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.bn(self.l1(x))))


def _x_seq(n=4, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, 5, D)), jnp.float32)


def _x_vec(n=16, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, 12)), jnp.float32)


def _attn(kind):
    x = _x_seq()
    if kind == "linen":
        mod = LinenAttn()
        m = from_linen(mod, mod.init(jax.random.key(0), x))
    else:
        m = from_nnx(NNXAttn(nnx.Rngs(0)))
    return m, x, layout.trace(m, x)


def _bn_cnn():
    """A BatchNorm CNN whose running statistics are not the init ones (two train-mode steps)."""
    x = _x_vec()
    mod = LinenBNCNN()
    m = from_linen(mod, mod.init(jax.random.key(0), x))
    state = m.state
    for _ in range(2):
        _, state = m.forward(m.params, state, 3 * x + 1, train=True, rng=jax.random.key(1))
    m = m.replace(state=state)
    return mod, m, x, layout.trace(m, x)


def _qkv(lay):
    return [p for p in lay if p.rsplit("/", 2)[-2] in ("query", "key", "value")]


# ------------------------------------------------------------------ scales / selection --------
@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_one_scale_per_output_position(kind):
    m, _, lay = _attn(kind)
    assert len(_qkv(lay)) == 3
    specs = jq.resolve_specs(m.params, INT8, layout=lay)
    assert sorted(specs) == sorted(lay)
    leaves = dict(tree.named_leaves(m.params))
    for p, s in specs.items():
        w = np.asarray(leaves[p])
        expect = tuple(1 if i in lay[p].inputs else n for i, n in enumerate(w.shape))
        scale, zp = jq.weight_scale_zero_point(leaves[p], s)
        assert scale.shape == expect, (p, scale.shape)
        ref = np.abs(w).max(axis=lay[p].inputs, keepdims=True) / 127  # numpy reference
        np.testing.assert_allclose(np.asarray(scale), ref, rtol=1e-6)
        assert not np.any(np.asarray(zp))
    for p in _qkv(lay):
        assert specs[p].scale_shape(leaves[p].shape) == (1, HEADS, D // HEADS)


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_biases_untouched_and_values_on_grid(kind):
    m, _, lay = _attn(kind)
    t = jq.quantize_weights(QuantSpec(bits=4), layout=lay)
    out = dict(tree.named_leaves(jax.jit(t.apply)(m.params, t.init(m.params))))
    leaves = dict(tree.named_leaves(m.params))
    biases = [p for p in leaves if p.endswith("bias") and np.ndim(leaves[p]) == 2]
    assert len(biases) == 3  # the 2-D q/k/v biases exist and are not weights
    specs = jq.resolve_specs(m.params, QuantSpec(bits=4), layout=lay)
    for p, w in leaves.items():
        if p not in lay:  # biases (2-D ones included), LayerNorm: bit for bit
            np.testing.assert_array_equal(np.asarray(out[p]), np.asarray(w), err_msg=p)
            continue
        scale = np.asarray(jq.weight_scale_zero_point(w, specs[p])[0])
        q = np.asarray(out[p]) / scale
        np.testing.assert_allclose(q, np.round(q), atol=1e-4, err_msg=p)
        assert q.min() >= -8 - 1e-4 and q.max() <= 7 + 1e-4
        # numpy reference of the whole quantizer: round half up, clip to [-8, 7]
        ref = np.clip(np.floor(np.asarray(w) / scale + 0.5), -8, 7) * scale
        np.testing.assert_allclose(np.asarray(out[p]), ref, rtol=1e-6, atol=1e-7, err_msg=p)


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_ste_is_identity_inside_the_range_under_jit(kind):
    m, _, lay = _attn(kind)
    t = jq.quantize_weights(INT8, layout=lay)
    tst = t.init(m.params)
    coef = jax.tree.map(lambda w: jnp.asarray(np.random.default_rng(w.size).normal(size=w.shape), w.dtype), m.params)
    loss = lambda p: sum(jnp.sum(a * c) for a, c in zip(jax.tree.leaves(t.apply(p, tst)), jax.tree.leaves(coef)))  # noqa: E731
    g = dict(tree.named_leaves(jax.jit(jax.grad(loss))(m.params)))
    c = dict(tree.named_leaves(coef))
    specs = jq.resolve_specs(m.params, INT8, layout=lay)
    for p, w in tree.named_leaves(m.params):
        if p not in lay:
            np.testing.assert_allclose(np.asarray(g[p]), np.asarray(c[p]), err_msg=p)
            continue
        v = np.abs(np.asarray(w)) / np.asarray(jq.weight_scale_zero_point(w, specs[p])[0])
        inside = v < 127 - 1e-3
        assert inside.mean() > 0.9
        np.testing.assert_allclose(np.asarray(g[p])[inside], np.asarray(c[p])[inside], rtol=1e-6, err_msg=p)


def test_tuple_axis_works_end_to_end_and_equals_the_layout():
    m, x, lay = _attn("linen")
    q = next(p for p in _qkv(lay) if "query" in p)
    t = jq.quantize_weights(QuantSpec(bits=4, axis=(-2, -1)), where=q)  # no layout: explicit axes
    st_ = t.init(m.params)
    a = jax.jit(t.apply)(m.params, st_)
    tl = jq.quantize_weights(QuantSpec(bits=4), where=q, layout=lay)
    b = tl.apply(m.params, tl.init(m.params))
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    art = jq.convert(m.params, QuantSpec(bits=4, axis=(-2, -1)), where=q)
    qa = dict(tree.named_leaves(art, is_leaf=lambda z: isinstance(z, jq.QArray)))[q]
    assert qa.scale.shape == (1, HEADS, D // HEADS) and qa.spec.axis == (-2, -1)
    np.testing.assert_allclose(np.asarray(qa.dequantize()), np.asarray(dict(tree.named_leaves(a))[q]), atol=1e-7)
    assert m.apply_fn(a, x).shape == (4, 4)


def test_tuple_axis_groups_match_numpy():
    w = np.random.default_rng(3).normal(size=(8, 2, 3)).astype(np.float32)  # (in, heads, head_dim)
    spec = QuantSpec(bits=4, granularity="group", group_size=4, axis=(1, 2), contraction_axis=0)
    s, _ = jq.compute_scale_zero_point(*jq.minmax(jnp.asarray(w), spec), spec)
    assert s.shape == (2, 1, 2, 3)
    ref = np.abs(w.reshape(2, 4, 2, 3)).max(1, keepdims=True) / 7
    np.testing.assert_allclose(np.asarray(s), ref, rtol=1e-6)
    lay = {"w": WeightLayout((0,), (1, 2), 0, "dot_general")}
    assert QuantSpec(bits=4, granularity="group", group_size=4).resolve(w.shape, "w", lay) == spec.replace(
        axis=(1, 2))


def test_axes_validated():
    with pytest.raises(ValueError, match="w: quantization axis 3 does not exist"):
        QuantSpec(axis=(1, 3)).check_shape((8, 2, 3), "w")
    with pytest.raises(ValueError, match="w: quantization axis .* repeats"):
        QuantSpec(axis=(2, -1)).check_shape((8, 2, 3), "w")
    with pytest.raises(ValueError, match="w: contraction_axis and axis are both 1"):
        QuantSpec(granularity="group", group_size=2, axis=(1, 2), contraction_axis=1).check_shape((8, 2, 4), "w")
    with pytest.raises(ValueError, match="axis must be"):
        QuantSpec(axis=())
    with pytest.raises(ValueError, match="axis must be"):
        QuantSpec(axis=1.0)
    assert QuantSpec(axis=[1, 2]).axis == (1, 2)  # e.g. a spec read back from JSON stays hashable
    hash(QuantSpec(axis=[1, 2]))


def test_2d_results_are_bit_identical_with_and_without_layout():
    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))

    mod = MLP()
    x = _x_vec(4)
    m = from_linen(mod, mod.init(jax.random.key(0), x))
    lay = layout.trace(m, x)
    for spec in (INT8, QuantSpec(bits=4, granularity="group", group_size=4), QuantSpec(bits=3, symmetric=False)):
        outs = []
        for kw in ({}, {"layout": lay}):
            t = jq.quantize_weights(spec, **kw)
            outs.append(t.apply(m.params, t.init(m.params)))
        explicit = spec.replace(axis=-1, contraction_axis=-2)
        t = jq.quantize_weights(explicit)
        outs.append(t.apply(m.params, t.init(m.params)))
        for a, b, c in zip(*(jax.tree.leaves(o) for o in outs)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    assert jq.resolve_specs(m.params, INT8)["Dense_0/kernel"] == INT8.replace(axis=-1, contraction_axis=-2)


@settings(max_examples=15, deadline=None)
@given(heads=st.integers(1, 3), hd=st.integers(1, 4), din=st.integers(1, 5), bits=st.sampled_from([2, 4, 8]),
       seed=st.integers(0, 2**16))
def test_property_dense_general_scales_and_grid(heads, hd, din, bits, seed):
    w = np.random.default_rng(seed).normal(size=(din, heads, hd)).astype(np.float32)
    lay = {"k": WeightLayout((0,), (1, 2), 0, "dot_general")}
    spec = jq.resolve_specs({"k": jnp.asarray(w)}, QuantSpec(bits=bits), layout=lay)["k"]
    scale, _ = jq.weight_scale_zero_point(jnp.asarray(w), spec)
    qmax = 2 ** (bits - 1) - 1
    np.testing.assert_allclose(np.asarray(scale), np.abs(w).max(0, keepdims=True) / qmax, rtol=1e-6)
    y = np.asarray(jq.fake_quant(jnp.asarray(w), spec, scale, jnp.zeros_like(scale)))
    q = y / np.asarray(scale)
    np.testing.assert_allclose(q, np.round(q), atol=1e-4)
    assert np.abs(y - w).max() <= np.asarray(scale).max() / 2 + 1e-6  # inside the range: error <= half a step


# ------------------------------------------------------------------ bad input ------------------
def test_3d_kernel_per_channel_without_layout_names_the_leaf():
    m, _, lay = _attn("linen")
    q = next(p for p in _qkv(lay) if "query" in p)
    for fn in (lambda: jq.quantize_weights(INT8, where="query/kernel").init(m.params),
               lambda: jq.convert(m.params, INT8, where="query/kernel"),
               lambda: jq.lsq_init_params(m.params, INT8, where="query/kernel"),
               lambda: jq.quantize_weights(QuantSpec(bits=4, granularity="group", group_size=4, axis=(-2, -1)),
                                           where="query/kernel").init(m.params)):
        with pytest.raises(ValueError, match=f"{q}.*pass layout=.*or an explicit axis"):
            fn()
    # per-tensor needs no axes
    t = jq.quantize_weights(QuantSpec(bits=8, granularity="tensor"), where="query/kernel")
    assert t.apply(m.params, t.init(m.params)) is not None


def test_layout_naming_a_missing_leaf_is_named():
    m, _, lay = _attn("nnx")
    bad = {**lay, "att/nope/kernel": next(iter(lay.values()))}
    for fn in (lambda: jq.quantize_weights(INT8, layout=bad).init(m.params),
               lambda: jq.resolve_specs(m.params, INT8, layout=bad),
               lambda: jq.convert(m.params, INT8, layout=bad),
               lambda: jq.lsq_init_params(m.params, INT8, layout=bad),
               lambda: jq.lsq_weights(INT8, layout=bad).init({"params": m.params, "lsq_scales": {}})):
        with pytest.raises(ValueError, match="att/nope/kernel"):
            fn()


def test_lsq_with_layout():
    m, x, lay = _attn("nnx")
    wrapped = jq.lsq_init_params(m.params, QuantSpec(bits=4), layout=lay)
    q = _qkv(lay)[0]
    assert wrapped["lsq_scales"][q].shape == (1, HEADS, D // HEADS)
    t = jq.lsq_weights(QuantSpec(bits=4), layout=lay)
    out = t.apply(wrapped, t.init(wrapped))
    assert m.apply_fn(out, x).shape == (4, 4)
    with pytest.raises(ValueError, match="no scale in lsq_scales"):
        t.init({"params": m.params, "lsq_scales": {}})


# ------------------------------------------------------------------ integer inference ----------
def test_bn_cnn_variables_dict_runs_integer_with_running_stats():
    mod, m, x, lay = _bn_cnn()
    variables = {"params": m.params, **m.state}
    ranges = jq.calibrate(m, m.params, [x], ACT)
    t = jq.quantize_weights(INT8, layout=lay)
    fq = jax.jit(jq.quantize_activations(m, ACT, ranges))(t.apply(m.params, t.init(m.params)), x)
    art = jq.convert(variables, INT8, layout=lay)  # a variables dict: params converted, batch_stats kept
    assert isinstance(art["params"]["Conv_0"]["kernel"], jq.QArray)
    np.testing.assert_array_equal(np.asarray(art["batch_stats"]["BatchNorm_0"]["mean"]),
                                  np.asarray(m.state["batch_stats"]["BatchNorm_0"]["mean"]))
    results = []
    for model, a in ((m, art),                                             # Model + variables dict
                     (m, jq.convert(m.params, INT8, layout=lay)),          # Model + params
                     (lambda v, z: mod.apply(v, z), art)):                 # plain apply_fn of variables
        f = jq.integer_apply(model, a, ranges)
        y = f(x)
        assert f.num_integer_ops == 3 and f.integer_layers == ("Conv_0", "Conv_1", "Dense_0")
        results.append(y)
    for y in results:
        assert float(jnp.max(jnp.abs(y - fq))) < 1e-4
        np.testing.assert_array_equal(np.asarray(y.argmax(-1)), np.asarray(fq.argmax(-1)))
    # the running statistics were used: init statistics give a different output
    fresh = from_linen(mod, mod.init(jax.random.key(0), x))
    y0 = jq.integer_apply(fresh, jq.convert(m.params, INT8, layout=lay), ranges)(x)
    assert float(jnp.max(jnp.abs(y0 - results[0]))) > 1e-2


def test_bn_cnn_never_silently_float():
    mod, m, x, lay = _bn_cnn()
    variables = {"params": m.params, **m.state}
    with pytest.raises(ValueError, match="Conv_0/kernel"):  # conv kernels: no layout, no explicit axis
        jq.convert(variables, INT8)
    art = jq.convert(variables, QuantSpec(bits=8, axis=-1))  # explicit axis: fine without a layout
    f = jq.integer_apply(m, art)
    f(x)
    assert f.num_integer_ops == 3
    with pytest.raises(ValueError, match="no QArray"):
        jq.integer_apply(m, variables)
    with pytest.raises(ValueError, match="batch_stats.*from_linen"):  # a stateless model cannot take the stats
        jq.integer_apply(from_apply(lambda p, z: mod.apply({"params": p, **m.state}, z), m.params), art)
    with pytest.raises(ValueError, match="do not match"):
        jq.integer_apply(m, {"params": {"other": art["params"]["Dense_0"]}, **m.state})
    # a model that consumes the QArrays outside an intercepted layer: raises instead of running float
    other = jq.convert({"params": {"w": m.params["Dense_0"]["kernel"]}}, INT8, where="w")
    with pytest.raises(ValueError, match="'params/w'.*not consumed"):
        jq.integer_apply(lambda v, z: z.reshape(z.shape[0], -1) @ v["params"]["w"], other)(jnp.ones((2, 96)))


def test_hand_written_matmul_raises_everywhere():
    class Raw(nn.Module):
        @nn.compact
        def __call__(self, x):
            return x @ self.param("kernel", nn.initializers.lecun_normal(), (12, 3))

    mod = Raw()
    x = _x_vec(4)
    m = from_linen(mod, mod.init(jax.random.key(0), x))
    with pytest.raises(ValueError, match="'kernel'.*not consumed"):
        jq.integer_apply(m, jq.convert(m.params, INT8))(x)
    with pytest.raises(ValueError, match="no layer.*ran on integers"):
        jq.int_qat_apply(m, INT8, ACT)(m.params, x)
    with pytest.raises(ValueError, match="activations would stay float"):
        jq.quantize_activations(m, ACT)(m.params, x)


def test_nnx_bn_mlp_integer_uses_eval_mode_statistics():
    m = from_nnx(NNXBNMLP(nnx.Rngs(0)))
    x = _x_vec()
    _, state = m.forward(m.params, m.state, 2 * x + 1, train=True, rng=None)
    m = m.replace(state=state)
    t = jq.quantize_weights(INT8)
    fq = jq.quantize_activations(m, ACT)(t.apply(m.params, t.init(m.params)), x)
    f = jq.integer_apply(m, jq.convert(m.params, INT8))
    y = f(x)
    assert f.num_integer_ops == 2
    assert float(jnp.max(jnp.abs(y - fq))) < 1e-4


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_attention_block_runs_integer_per_head_scales(kind):
    m, x, lay = _attn(kind)
    t = jq.quantize_weights(INT8, layout=lay)
    fq = jax.jit(jq.quantize_activations(m, ACT))(t.apply(m.params, t.init(m.params)), x)
    f = jq.integer_apply(m, jq.convert(m.params, INT8, layout=lay))
    y = f(x)
    assert f.num_integer_ops == 5  # q, k, v, out, head
    assert float(jnp.max(jnp.abs(y - fq))) < 1e-4
    assert float(jnp.max(jnp.abs(y - m.apply_fn(m.params, x)))) > 0
    assert "xi32>" in f.lower(x).as_text()
    # integer QAT on the same block: forward equals fake quant, STE gradients flow
    iq = jq.int_qat_apply(m, INT8, ACT, layout=lay)
    loss_i = lambda p: jnp.sum(jnp.sin(iq(p, x)))  # noqa: E731
    loss_f = lambda p: jnp.sum(jnp.sin(jq.quantize_activations(m, ACT)(t.apply(p, t.init(p)), x)))  # noqa: E731
    np.testing.assert_allclose(float(jax.jit(loss_i)(m.params)), float(loss_f(m.params)), rtol=1e-4)
    assert iq.num_integer_ops == 5
    gi, gf = jax.jit(jax.grad(loss_i))(m.params), jax.jit(jax.grad(loss_f))(m.params)
    for a, b in zip(jax.tree.leaves(gi), jax.tree.leaves(gf)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="kernel.*pass layout="):
        jq.int_qat_apply(m, INT8, ACT)(m.params, x)


def test_layout_artifact_save_load_bit_exact(tmp_path):
    m, x, lay = _attn("linen")
    art = jq.convert(m.params, QuantSpec(bits=4), layout=lay)
    path = str(tmp_path / "a.npz")
    jq.save(path, art)
    back = jq.load(path, like=m.params)
    assert jax.tree.structure(back) == jax.tree.structure(art)  # specs with tuple axes come back equal
    for a, b in zip(jax.tree.leaves(art), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    f = jq.integer_apply(m, back)
    np.testing.assert_array_equal(np.asarray(f(x)), np.asarray(jq.integer_apply(m, art)(x)))
