"""Lottery tickets: IMP with rewinding, driven by a real (tiny) training function."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcompress.pruning as jp
from jaxcompress import models, train

X = jax.random.normal(jax.random.key(0), (64, 16))
Y = (jnp.sum(X[:, :4], axis=1) > 0).astype(jnp.int32)


def test_imp_rewinds_and_prunes_iteratively():
    m = models.create("mlp", (16,), 2, features=(16,))
    opt = optax.sgd(0.1)
    calls = []

    def train_fn(params, masks, start, stop):
        calls.append((start, stop))
        t = jp.fixed(masks)
        state = train.create_train_state(jax.tree.map(jnp.copy, params), opt, t)
        step = train.make_train_step(m.apply_fn, opt, t, donate=False)
        for _ in range(stop - start):
            state, _ = step(state, (X, Y))
        return state.params

    r = jp.imp(m.params, train_fn, steps=6, rounds=3, fraction=0.5, rewind_step=2, keep_history=True)
    assert calls == [(0, 2), (2, 6), (2, 6), (2, 6), (2, 6)]
    assert r.sparsities == pytest.approx([0.5, 0.75, 0.875], abs=2e-3)
    masks_hist = [h[1] for h in r.history]
    for a, b in zip(masks_hist[1:], masks_hist[2:]):  # nested: pruned stays pruned
        for (_, ma), (_, mb) in zip(jp.masks.named_masks(a), jp.masks.named_masks(b)):
            assert not (np.asarray(mb) & ~np.asarray(ma)).any()
    for (p, mk), (_, w) in zip(jp.masks.named_masks(r.masks), [(p, r.params[p.split("/")[0]]["kernel"])
                                                               for p, _ in jp.masks.named_masks(r.masks)]):
        assert (np.asarray(w)[~np.asarray(mk)] == 0).all()
    # the rewind point is the dense run's step-2 weights, not the initialisation
    assert not np.allclose(np.asarray(r.rewind_params["Dense_0"]["kernel"]), np.asarray(m.params["Dense_0"]["kernel"]))


def test_imp_bad_arguments():
    f = lambda p, m, a, b: p  # noqa: E731
    with pytest.raises(ValueError, match="fraction"):
        jp.imp({"k": jnp.ones((2, 2))}, f, steps=4, rounds=1, fraction=1.0)
    with pytest.raises(ValueError, match="rewind_step"):
        jp.imp({"k": jnp.ones((2, 2))}, f, steps=4, rounds=1, rewind_step=4)
