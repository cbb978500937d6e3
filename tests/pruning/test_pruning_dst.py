"""SET / RigL: constant sparsity, zero-initialised regrowth, optimizer-state reset."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcompress.pruning as jp
from jaxcompress import models, train

X = jax.random.normal(jax.random.key(0), (32, 64))
Y = jnp.arange(32, dtype=jnp.int32) % 10


@pytest.mark.parametrize("factory", [jp.rigl, jp.set_])
def test_constant_sparsity_and_regrowth(factory):
    m = models.create("mlp", (64,), 10, features=(32, 16))
    t = factory(0.8, every=3, drop_fraction=0.5, end=30, distribution="uniform")
    opt = optax.adam(1e-2)
    state = train.create_train_state(jax.tree.map(jnp.copy, m.params), opt, t)
    step = jax.jit(train.make_train_step(m.apply_fn, opt, t, jit=False))
    counts0 = {p: int(v.sum()) for p, v in jp.masks.named_masks(state.tstate.masks)}
    changed = 0
    for i in range(12):
        old = state.tstate.masks
        state, _ = step(state, (X, Y))
        new = state.tstate.masks
        for p, v in jp.masks.named_masks(new):
            assert int(v.sum()) == counts0[p], (i, p)  # constant per-leaf count
        grown = {p: np.asarray(n) & ~np.asarray(o) for (p, o), (_, n) in
                 zip(jp.masks.named_masks(old), jp.masks.named_masks(new))}
        mu = state.opt_state[0].mu
        for p, g in grown.items():
            layer, leaf = p.split("/")
            w = np.asarray(state.params[layer][leaf])
            assert (w[g] == 0).all()  # regrown weights start at zero
            assert (np.asarray(mu[layer][leaf])[g] == 0).all()  # and their Adam moments are reset
            assert (np.asarray(state.opt_state[0].nu[layer][leaf])[g] == 0).all()
            changed += int(g.sum())
        for p, v in jp.masks.named_masks(new):  # stored pruned weights are zero
            layer, leaf = p.split("/")
            assert (np.asarray(state.params[layer][leaf])[~np.asarray(v)] == 0).all()
    assert changed > 0
    assert int(state.tstate.count) == 4
    assert state.tstate.masks["Dense_0"]["bias"] is None  # biases stay dense


def test_rigl_grows_where_gradient_is_largest():
    params = {"Dense_0": {"kernel": jnp.array([[3.0, 0.0, 0.1, 0.0]]), "bias": jnp.zeros(4)}}
    t = jp.rigl(0.5, every=1, drop_fraction=0.5, distribution="uniform")
    st = t.init(params)
    st = st._replace(masks={"Dense_0": {"kernel": jnp.array([[True, False, True, False]]), "bias": None}})
    grads = {"Dense_0": {"kernel": jnp.array([[0.0, 0.1, 0.0, 5.0]]), "bias": jnp.zeros(4)}}
    new_params, new_st = t.update(params, st, jp.transform.Context(jnp.int32(1), grads, jax.random.key(0)))
    np.testing.assert_array_equal(np.asarray(new_st.masks["Dense_0"]["kernel"]), [[True, False, False, True]])
    np.testing.assert_array_equal(np.asarray(new_params["Dense_0"]["kernel"]), [[3.0, 0.0, 0.0, 0.0]])


def test_dst_works_on_nnx_and_erk():
    m = models.create("nnx_mlp", (64,), 10, features=(32,))
    t = jp.set_(0.7, every=2)
    st = t.init(m.params)
    assert jp.sparsity(st.masks) == pytest.approx(0.7, abs=2e-3)


def test_dst_bad_arguments():
    with pytest.raises(ValueError, match="every"):
        jp.rigl(0.9, every=0)
    with pytest.raises(ValueError, match="drop_fraction"):
        jp.set_(0.9, drop_fraction=1.5)
    with pytest.raises(ValueError, match="sparsity"):
        jp.rigl(1.0)
