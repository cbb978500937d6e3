import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcompress import data, models, train
from jaxcompress.transform import Transform


def test_training_lowers_loss_digits():
    ds = data.load("digits")
    m = models.create("mlp", ds.input_shape, features=(64,), rng=0)
    ev = train.make_eval_fn(m.apply_fn)
    before = ev(m.params, (), ds.x_test, ds.y_test)
    state, _ = train.fit(m.apply_fn, m.params, optax.adam(1e-3), ds.x_train, ds.y_train, steps=200, batch_size=64)
    after = ev(state.params, state.tstate, ds.x_test, ds.y_test)
    assert after["loss"] < 0.5 * before["loss"]
    assert after["accuracy"] > 0.85


def test_nnx_model_trains():
    ds = data.load("digits")
    m = models.create("nnx_mlp", ds.input_shape, features=(32,), rng=0)
    state, info = train.fit(m.apply_fn, m.params, optax.adam(1e-3), ds.x_train, ds.y_train, steps=100, batch_size=64)
    acc = train.make_eval_fn(m.apply_fn)(state.params, state.tstate, ds.x_test, ds.y_test)["accuracy"]
    assert acc > 0.7
    assert type(state.params) is type(m.params)


def test_transform_seam_is_used():
    """A transform that zeroes the first kernel in the forward pass: no gradient reaches it."""
    ds = data.load("digits")
    m = models.create("mlp", ds.input_shape, features=(8,), rng=0)
    zero_first = Transform(
        init=lambda p: (),
        apply=lambda p, s: {**p, "Dense_0": {**p["Dense_0"], "kernel": p["Dense_0"]["kernel"] * 0.0}},
        update=lambda p, s, ctx: (p, s),
    )
    opt = optax.sgd(0.1)
    state = train.create_train_state(m.params, opt, zero_first)
    step = train.make_train_step(m.apply_fn, opt, zero_first, donate=False)
    new, _ = step(state, (ds.x_train[:32], ds.y_train[:32]))
    np.testing.assert_array_equal(new.params["Dense_0"]["kernel"], m.params["Dense_0"]["kernel"])
    assert not np.array_equal(new.params["Dense_1"]["bias"], m.params["Dense_1"]["bias"])


def test_data_parallel_step_matches_single_device():
    assert len(jax.devices()) == 8
    ds = data.load("digits")
    m = models.create("mlp", ds.input_shape, features=(32,), rng=0)
    opt = optax.adam(1e-3)
    step = train.make_train_step(m.apply_fn, opt, donate=False)
    batches = data.BatchIterator(ds.x_train, ds.y_train, 64, seed=0)
    single = train.create_train_state(m.params, opt)
    mesh = data.make_mesh(8)
    multi = data.replicate(train.create_train_state(m.params, opt), mesh)
    for s in range(3):
        b = batches.batch_at(s)
        single, ms = step(single, jax.device_put(b, jax.devices()[0]))
        multi, mm = step(multi, data.shard_batch(b, mesh))
    assert len(multi.params["Dense_0"]["kernel"].sharding.device_set) == 8
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(multi.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    np.testing.assert_allclose(float(ms["loss"]), float(mm["loss"]), atol=1e-5)


def test_fit_rejects_bad_sizes():
    x, y = np.zeros((10, 4), np.float32), np.zeros(10, np.int32)
    m = models.create("mlp", (4,), features=(4,))
    with pytest.raises(ValueError, match="steps"):
        train.fit(m.apply_fn, m.params, optax.sgd(0.1), x, y, steps=0, batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        train.fit(m.apply_fn, m.params, optax.sgd(0.1), x, y, steps=1, batch_size=11)


def test_eval_matches_numpy_reference():
    m = models.create("mlp", (4,), features=(4,), num_classes=3)
    x = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2, 0], np.int32)
    logits = np.asarray(m.apply_fn(m.params, jnp.asarray(x)), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ref_loss = -logp[np.arange(7), y].mean()
    out = train.make_eval_fn(m.apply_fn, batch_size=3)(m.params, (), x, y)
    np.testing.assert_allclose(out["loss"], ref_loss, rtol=1e-5)
    np.testing.assert_allclose(out["accuracy"], (logits.argmax(-1) == y).mean())
