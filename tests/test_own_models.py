"""Bring your own model: 2:4 pruning + int8 QAT + KD through one step on models defined here (not the zoo).

Each model is written as a user would write it (linen with BatchNorm and Dropout, NNX with Dropout and
BatchNorm, a transformer block with linen / NNX multi-head attention and its 3-D DenseGeneral kernels) and
plugs in through ``jaxcompress.model`` without an adapter of our own. For each: running statistics update,
pruned weights stay zero, N:M counts hold along the input axes, scales have one entry per output position,
biases are untouched and eval mode is deterministic.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxcompress.pruning as jp
import jaxcompress.quantization as jq
from jaxcompress import distillation, layout, train, tree
from jaxcompress.model import Model, from_linen, from_nnx
from jaxcompress.transform import chain, finalize

NUM_CLASSES = 8


# ------------------------------------------------------------------ the users' models ----------
class LinenBNCNN(nn.Module):
    """1-D CNN: conv -> BatchNorm -> relu (x2) -> dropout -> dense."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x[..., None].repeat(4, axis=-1)  # 4 input channels, so 2:4 applies to the first conv too
        for c in (8, 16):
            x = nn.Conv(c, (3,), strides=(2,), padding="SAME")(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.5)(x))
        x = nn.Dropout(0.3, deterministic=not train)(x.reshape(x.shape[0], -1))
        return nn.Dense(NUM_CLASSES)(x)


class NNXBNMLP(nnx.Module):
    def __init__(self, din: int, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(din, 32, rngs=rngs)
        self.bn = nnx.BatchNorm(32, momentum=0.5, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.l2 = nnx.Linear(32, NUM_CLASSES, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(nnx.relu(self.bn(self.l1(x)))))


class LinenBlock(nn.Module):
    """Pre-LN transformer block with a padding mask, mean-pooled to logits; inputs ``(x, mask)``."""

    @nn.compact
    def __call__(self, x, mask, deterministic: bool = True):
        att = nn.make_attention_mask(mask, mask)
        h = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=16, dropout_rate=0.1,
                                            deterministic=deterministic)(nn.LayerNorm()(x), mask=att)
        x = x + h
        x = x + nn.Dense(16)(nn.gelu(nn.Dense(32)(nn.LayerNorm()(x))))
        pooled = jnp.sum(x * mask[..., None], 1) / jnp.sum(mask, 1, keepdims=True)
        return nn.Dense(NUM_CLASSES)(pooled)


class NNXBlock(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.ln = nnx.LayerNorm(16, rngs=rngs)
        self.att = nnx.MultiHeadAttention(2, 16, 16, dropout_rate=0.1, decode=False, rngs=rngs)
        self.mlp = nnx.Linear(16, 32, rngs=rngs)
        self.head = nnx.Linear(32, NUM_CLASSES, rngs=rngs)

    def __call__(self, x, mask):
        h = self.att(self.ln(x), mask=nnx.make_attention_mask(mask, mask))
        h = nnx.gelu(self.mlp(x + h))
        return self.head(jnp.sum(h * mask[..., None], 1) / jnp.sum(mask, 1, keepdims=True))


def _seq_inputs(n: int, seed: int):
    r = np.random.default_rng(seed)
    x = jnp.asarray(r.normal(size=(n, 6, 16)), jnp.float32)
    lengths = r.integers(2, 7, n)
    mask = jnp.asarray(np.arange(6)[None, :] < lengths[:, None], jnp.float32)
    return x, mask


def _build(kind: str, seed: int):
    """``(Model, inputs of 16 examples)`` of each user model."""
    key = jax.random.key(seed)
    if kind == "linen_bn_cnn":
        x = jnp.asarray(np.random.default_rng(seed).normal(size=(16, 12)), jnp.float32)
        mod = LinenBNCNN()
        return from_linen(mod, mod.init(key, x)), x
    if kind == "nnx_bn_mlp":
        x = jnp.asarray(np.random.default_rng(seed).normal(size=(16, 12)), jnp.float32)
        return from_nnx(NNXBNMLP(12, nnx.Rngs(seed))), x
    inputs = _seq_inputs(16, seed)
    if kind == "linen_block":
        mod = LinenBlock()
        return from_linen(mod, mod.init(key, *inputs)), inputs
    return from_nnx(NNXBlock(nnx.Rngs(seed))), inputs


KINDS = ["linen_bn_cnn", "nnx_bn_mlp", "linen_block", "nnx_block"]
INT8 = jq.QuantSpec(bits=8)


def _compress(kind: str, steps: int = 3):
    """Student + dense teacher of the same architecture; 2:4 + int8 QAT + KD for ``steps`` steps."""
    student, inputs = _build(kind, 0)
    teacher, _ = _build(kind, 1)
    lay = layout.trace(student, inputs)
    t = chain(jp.magnitude(nm=(2, 4), layout=lay), jq.quantize_weights(INT8, layout=lay))
    step = distillation.make_distill_step(student, teacher, optax.adam(1e-2), distillation.kd(4.0, 0.5), t)
    state = step.init(student, inputs)
    first = state
    labels = jnp.asarray(np.arange(16) % NUM_CLASSES, jnp.int32)
    history = [jax.device_get(first)]
    for _ in range(steps):
        state, metrics = step(state, (inputs, labels))
        history.append(jax.device_get(state))
    assert np.isfinite(float(metrics["loss"]))
    return student, teacher, inputs, lay, t, history


@pytest.fixture(scope="module", params=KINDS)
def compressed(request):
    return request.param, _compress(request.param)


# ------------------------------------------------------------------ layout ---------------------
def test_layout_lists_weights_only(compressed):
    kind, (student, _, _, lay, _, _) = compressed
    all_paths = tree.paths(student.params)
    assert lay, kind
    for p in lay:
        assert p.rsplit("/", 1)[-1] == "kernel", (kind, p)  # never a bias, norm scale or embedding
    kernels = [p for p in all_paths if p.endswith("kernel")]
    assert sorted(lay) == sorted(kernels)


def test_attention_kernels_have_heads_as_outputs():
    for kind in ("linen_block", "nnx_block"):
        student, inputs = _build(kind, 0)
        lay = layout.trace(student, inputs)
        qkv = [p for p in lay if any(n in p for n in ("query", "key", "value"))]
        out = [p for p in lay if "/out/" in p]
        assert len(qkv) == 3 and len(out) == 1, (kind, list(lay))
        for p in qkv:  # (in, heads, head_dim)
            assert lay[p].inputs == (0,) and lay[p].outputs == (1, 2) and lay[p].group_axis == 0
        assert lay[out[0]].inputs == (0, 1) and lay[out[0]].outputs == (2,) and lay[out[0]].group_axis == 1


# ------------------------------------------------------------------ the compressed step ---------
def _masks(tstate):
    return dict(jp.masks.named_masks(tstate[0].masks))


def test_pruned_weights_stay_zero_and_nm_along_inputs(compressed):
    kind, (_, _, _, lay, _, history) = compressed
    final = history[-1]
    params = dict(tree.named_leaves(final.params))
    masks = _masks(final.tstate)
    assert sorted(masks) == sorted(lay)
    for p, mk in masks.items():
        mk = np.asarray(mk)
        assert np.all(np.asarray(params[p])[~mk] == 0), p  # stored weights: pruned stay exactly zero
        g = np.moveaxis(mk, lay[p].group_axis, -1)
        groups = g.reshape(*g.shape[:-1], g.shape[-1] // 4, 4)
        assert np.all(groups.sum(-1) == 2), (kind, p)  # exactly 2 of every 4 consecutive inputs
    # the masks did not move between steps (one-shot 2:4) and the zeros survived Adam
    assert all(np.array_equal(np.asarray(_masks(history[1].tstate)[p]), np.asarray(masks[p])) for p in masks)


def test_scales_one_per_output_position(compressed):
    kind, (_, _, _, lay, _, history) = compressed
    specs = jq.resolve_specs(history[-1].params, INT8, layout=lay)
    params = dict(tree.named_leaves(history[-1].params))
    for p, s in specs.items():
        shape = np.shape(params[p])
        sshape = s.scale_shape(shape)
        expect = tuple(1 if i in lay[p].inputs else n for i, n in enumerate(shape))
        assert sshape == expect, (kind, p, sshape, expect)
        scale, _ = jq.weight_scale_zero_point(params[p], s)
        assert scale.shape == expect


def test_shipped_weights_on_grid_and_biases_untouched(compressed):
    kind, (_, _, _, lay, t, history) = compressed
    final = history[-1]
    shipped = dict(tree.named_leaves(finalize(final.params, final.tstate, t)))
    stored = dict(tree.named_leaves(final.params))
    specs = jq.resolve_specs(final.params, INT8, layout=lay)
    for p, w in shipped.items():
        if p not in lay:  # biases, norms: passed through bit for bit
            np.testing.assert_array_equal(np.asarray(w), np.asarray(stored[p]), err_msg=p)
            continue
        scale, _ = jq.weight_scale_zero_point(stored[p] * np.asarray(_masks(final.tstate)[p]), specs[p])
        q = np.asarray(w) / np.asarray(scale)
        np.testing.assert_allclose(q, np.round(q), atol=1e-3, err_msg=p)
        assert np.abs(q).max() <= 128 + 1e-3


def test_running_statistics_update_and_params_train(compressed):
    kind, (student, teacher, _, _, _, history) = compressed
    first, final = history[0], history[-1]
    changed = [not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(final.params))]
    assert any(changed)
    if kind in ("linen_bn_cnn", "nnx_bn_mlp"):
        stats = [(p, np.asarray(a), np.asarray(b)) for (p, a), (_, b) in
                 zip(tree.named_leaves(first.model_state), tree.named_leaves(final.model_state))
                 if "mean" in p or "var" in p]
        assert stats and all(not np.allclose(a, b) for _, a, b in stats), [p for p, *_ in stats]
        # the optimizer never saw the statistics
        assert not any("mean" in p or "var" in p for p in tree.paths(final.params))
    # the teacher's own state is untouched by the student's steps
    for a, b in zip(jax.tree.leaves(teacher.state), jax.tree.leaves(_build(kind, 1)[0].state)):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_eval_mode_is_deterministic(compressed):
    kind, (student, _, inputs, _, t, history) = compressed
    final = history[-1]
    shipped = finalize(final.params, final.tstate, t)
    f = jax.jit(lambda p, ms, x: student.forward(p, ms, x, train=False, rng=None)[0])
    a, b = f(shipped, final.model_state, inputs), f(shipped, final.model_state, inputs)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # train mode draws dropout: two keys give two outputs, one key gives one
    g = jax.jit(lambda p, ms, x, k: student.forward(p, ms, x, train=True, rng=k)[0])
    k1, k2 = jax.random.key(1), jax.random.key(2)
    np.testing.assert_array_equal(np.asarray(g(shipped, final.model_state, inputs, k1)),
                                  np.asarray(g(shipped, final.model_state, inputs, k1)))
    assert not np.allclose(np.asarray(g(shipped, final.model_state, inputs, k1)),
                           np.asarray(g(shipped, final.model_state, inputs, k2)))


# ------------------------------------------------------------------ bad input ------------------
def test_train_mode_without_rng_names_the_stream():
    for kind in ("linen_bn_cnn", "nnx_bn_mlp"):
        m, x = _build(kind, 0)
        with pytest.raises(ValueError, match="rng|RNG"):
            m.forward(m.params, m.state, x, train=True, rng=None)


def test_mutable_collection_missing_is_named():
    mod = LinenBNCNN()
    v = mod.init(jax.random.key(0), jnp.zeros((1, 12)))
    with pytest.raises(ValueError, match="cache"):
        from_linen(mod, v, mutable=("batch_stats", "cache"))


def test_collection_the_model_never_returns_is_named():
    mod = LinenBNCNN()
    v = mod.init(jax.random.key(0), jnp.zeros((1, 12)))

    def forward(params, state, x, *, train, rng):  # a hand-written forward that drops batch_stats in train mode
        out = mod.apply({"params": params, **state}, x, train=train, rngs={"dropout": rng}, mutable=["batch_stats"])
        return out[0], {}

    m = Model(forward, v["params"], {"batch_stats": v["batch_stats"]})
    opt = optax.sgd(0.1)
    step = train.make_train_step(m, opt)
    with pytest.raises(ValueError, match="batch_stats"):
        step(train.create_train_state(m, opt), (jnp.zeros((4, 12)), jnp.zeros((4,), jnp.int32)))


def test_layout_for_missing_leaf_is_named():
    m, x = _build("linen_block", 0)
    lay = dict(layout.trace(m, x))
    lay["Dense_9/kernel"] = lay["Dense_0/kernel"]
    with pytest.raises(ValueError, match="Dense_9/kernel"):
        jp.magnitude(0.5, layout=lay).init(m.params)
    with pytest.raises(ValueError, match="Dense_9/kernel"):
        jq.quantize_weights(INT8, layout=lay).init(m.params)


def test_nm_on_output_axis_is_named():
    m, x = _build("linen_block", 0)
    lay = layout.trace(m, x)
    with pytest.raises(ValueError, match="query/kernel"):
        jp.magnitude(nm=(2, 4, 2), layout=lay, where="query/kernel").init(m.params)


def test_ambiguous_kernel_without_layout_is_named():
    m, _ = _build("linen_block", 0)
    with pytest.raises(ValueError, match="kernel"):
        jp.magnitude(nm=(2, 4), where="query/kernel").init(m.params)
    with pytest.raises(ValueError, match="query/kernel"):
        jq.quantize_weights(INT8, where="query/kernel").init(m.params)
