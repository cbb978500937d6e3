"""The weight fake-quant Transform: selection, overrides, traced bits, NNX, pruning chain, LSQ."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcompress.quantization as jq
from jaxcompress import models, train
from jaxcompress.quantization.spec import QuantSpec
from jaxcompress.transform import Transform, chain


def _mlp():
    return models.create("mlp", (8,), 3, rng=0, features=(6,))


def test_only_selected_leaves_change_and_overrides_apply():
    m = _mlp()
    t = jq.quantize_weights(QuantSpec(bits=2), overrides={"Dense_1": 8})
    st = t.init(m.params)
    assert sorted(st["bits"]) == ["Dense_0/kernel", "Dense_1/kernel"]
    assert float(st["bits"]["Dense_1/kernel"]) == 8.0
    out = jax.jit(t.apply)(m.params, st)
    np.testing.assert_array_equal(out["Dense_0"]["bias"], m.params["Dense_0"]["bias"])
    assert len(np.unique(np.asarray(out["Dense_0"]["kernel"])[:, 0])) <= 4  # 2 bits: at most 4 levels
    assert len(np.unique(np.asarray(out["Dense_1"]["kernel"])[:, 0])) > 4


def test_override_none_keeps_float_and_bad_override_raises():
    m = _mlp()
    t = jq.quantize_weights(QuantSpec(bits=4), overrides={"Dense_0": None})
    assert sorted(t.init(m.params)["bits"]) == ["Dense_1/kernel"]
    with pytest.raises(ValueError, match="match no parameter"):
        jq.quantize_weights(QuantSpec(bits=4), overrides={"Dense_7": 8}).init(m.params)
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        jq.quantize_weights(QuantSpec(bits=4), overrides={"Dense_0": 9}).init(m.params)
    with pytest.raises(ValueError, match="Dense_0/kernel.*group_size 5"):
        jq.quantize_weights(QuantSpec(bits=4, granularity="group", group_size=5), where="Dense_0/kernel").init(m.params)


def test_one_compilation_across_bit_widths(count_traces):
    m = _mlp()
    t = jq.quantize_weights(QuantSpec(bits=8))
    fn = count_traces(lambda p, s: t.apply(p, s))
    f = jax.jit(fn)
    st = t.init(m.params)
    outs = {b: f(m.params, jq.set_bits(st, b)) for b in (8, 4, 3, 2)}
    assert fn.traces == 1
    levels = {b: len(np.unique(np.asarray(o["Dense_0"]["kernel"])[:, 0])) for b, o in outs.items()}
    assert levels[2] <= 4 < levels[4] <= 16 and levels[3] <= 8
    # the traced-bits result equals a transform built with that many bits statically
    ref = jq.quantize_weights(QuantSpec(bits=3))
    np.testing.assert_array_equal(outs[3]["Dense_0"]["kernel"], ref.apply(m.params, ref.init(m.params))["Dense_0"]["kernel"])


def test_works_on_nnx_state_and_trains():
    m = models.create("nnx_mlp", (8,), 3, rng=0, features=(6,))
    t = jq.quantize_weights(QuantSpec(bits=4), overrides={"out": 8})
    st = t.init(m.params)
    assert sorted(st["bits"]) == ["hidden/0/kernel", "out/kernel"]
    opt = optax.adam(1e-2)
    step = train.make_train_step(m.apply_fn, opt, t)
    state = train.create_train_state(m.params, opt, t)
    x, y = jnp.ones((4, 8)), jnp.array([0, 1, 2, 0])
    state, metrics = step(state, (x, y))
    assert np.isfinite(float(metrics["loss"]))
    w = t.apply(state.params, state.tstate)["hidden"][0]["kernel"]
    assert len(np.unique(np.asarray(w)[:, 0])) <= 16


def _mask_transform(mask_tree):
    """A tiny pruning transform: apply multiplies by fixed masks, update re-zeros stored weights."""

    def apply(p, s):
        return jax.tree.map(lambda w, m: w * m, p, s)

    return Transform(lambda p: mask_tree, apply, lambda p, s, ctx: (apply(p, s), s))


def test_chained_with_pruning_keeps_pruned_weights_zero():
    m = _mlp()
    masks = jax.tree.map(lambda w: (jax.random.uniform(jax.random.key(w.size), w.shape) > 0.5).astype(w.dtype), m.params)
    masks_np = jax.tree.map(np.asarray, masks)
    t = chain(_mask_transform(masks), jq.quantize_weights(QuantSpec(bits=4, symmetric=False)))
    opt = optax.adam(1e-2)
    step = train.make_train_step(m.apply_fn, opt, t)
    state = train.create_train_state(m.params, opt, t)
    rng = np.random.default_rng(0)
    for _ in range(5):
        state, _ = step(state, (jnp.asarray(rng.normal(size=(8, 8)), jnp.float32), jnp.asarray(rng.integers(0, 3, 8))))
    seen = t.apply(state.params, state.tstate)
    assert sum(int((mk == 0).sum()) for mk in jax.tree.leaves(masks_np)) > 10
    for w, mk, stored in zip(jax.tree.leaves(seen), jax.tree.leaves(masks_np), jax.tree.leaves(state.params)):
        assert (np.asarray(w)[np.asarray(mk) == 0] == 0).all()
        assert (np.asarray(stored)[np.asarray(mk) == 0] == 0).all()


def test_lsq_transform_trains_scales():
    m = _mlp()
    spec = QuantSpec(bits=2)
    wrapped = jq.lsq_init_params(m.params, spec)
    t = jq.lsq_weights(spec)
    opt = optax.sgd(0.1)
    step = train.make_train_step(m.apply_fn, opt, t)
    state = train.create_train_state(wrapped, opt, t)
    s0 = np.asarray(wrapped["lsq_scales"]["Dense_0/kernel"]).copy()
    state, _ = step(state, (jnp.ones((4, 8)), jnp.array([0, 1, 2, 0])))
    assert not np.allclose(np.asarray(state.params["lsq_scales"]["Dense_0/kernel"]), s0)
    seen = t.apply(state.params, state.tstate)
    assert jax.tree.structure(seen) == jax.tree.structure(m.params)
    with pytest.raises(ValueError, match="lsq_init_params"):
        t.init(m.params)


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse", "entropy"])
def test_weight_observers_give_grid_values(observer):
    m = _mlp()
    t = jq.quantize_weights(QuantSpec(bits=3), observer=observer)
    w = jax.jit(t.apply)(m.params, t.init(m.params))["Dense_0"]["kernel"]
    assert max(len(np.unique(np.asarray(w)[:, j])) for j in range(6)) <= 8
