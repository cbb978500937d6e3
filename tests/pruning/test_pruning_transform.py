"""The pruning Transform inside the jit train step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcompress.pruning as jp
from jaxcompress import layout, models, train, tree

X = jax.random.normal(jax.random.key(0), (32, 64))
Y = jnp.arange(32, dtype=jnp.int32) % 10


def small_mlp(name="mlp"):
    return models.create(name, (64,), 10, features=(32, 16))


def run(model, t, steps, lr=1e-2, tstate=None):
    opt = optax.adam(lr)
    params = jax.tree.map(jnp.copy, model.params)
    state = train.create_train_state(params, opt, t, tstate=tstate)
    step = train.make_train_step(model.apply_fn, opt, t)
    for _ in range(steps):
        state, _ = step(state, (X, Y))
    return state


def kernels(params):
    return {p: np.asarray(x) for p, x in tree.named_leaves(params) if p.endswith("kernel")}


def test_pruned_weights_stay_exactly_zero_after_50_adam_steps():
    m = small_mlp()
    t = jp.magnitude(0.8, schedule=jp.polynomial(begin=0, end=20, frequency=5))
    state = run(m, t, 50)
    masks = dict(jp.masks.named_masks(state.tstate.masks))
    for p, w in kernels(state.params).items():
        mk = np.asarray(masks[p])
        assert (w[~mk] == 0).all(), p
        assert (~mk).sum() == round(0.8 * w.size), p
        assert (w[mk] != 0).all(), p  # kept weights keep training
    assert int(state.tstate.count) == 5  # steps 0(init), 5, 10, 15, 20
    assert jp.params_sparsity(state.params) == pytest.approx(0.8, abs=1e-3)


def test_one_compilation_across_target_sparsities(count_traces):
    m = small_mlp()
    opt = optax.adam(1e-3)
    t = jp.magnitude(0.5, schedule=jp.polynomial(begin=0, end=4, frequency=2))
    inner = count_traces(train.make_train_step(m.apply_fn, opt, t, jit=False))
    step = jax.jit(inner)
    sparsities = []
    for s in (0.5, 0.9):
        tstate = jp.with_sparsity(t.init(m.params), s)
        state = train.create_train_state(jax.tree.map(jnp.copy, m.params), opt, t, tstate=tstate)
        for _ in range(5):
            state, _ = step(state, (X, Y))
        sparsities.append(jp.sparsity(state.tstate.masks))
    assert inner.traces == 1
    assert sparsities == [pytest.approx(0.5, abs=1e-3), pytest.approx(0.9, abs=1e-3)]


def test_works_on_nnx_state():
    m = small_mlp("nnx_mlp")
    t = jp.magnitude(0.75, schedule=jp.one_shot(2))
    state = run(m, t, 6)
    ks = kernels(state.params)
    assert set(ks) == {"hidden/0/kernel", "hidden/1/kernel", "out/kernel"}
    for p, w in ks.items():
        assert (w == 0).sum() == round(0.75 * w.size), p
    assert type(state.tstate.masks).__name__ == "State"


def test_global_scope_exact_total_and_normalize():
    m = small_mlp()
    for normalize in (False, True):
        st = jp.magnitude(0.9, scope="global", normalize=normalize).init(m.params)
        ms = [np.asarray(x) for _, x in jp.masks.named_masks(st.masks)]
        total = sum(x.size for x in ms)
        assert sum(x.sum() for x in ms) == total - round(0.9 * total)


def test_overrides_and_where():
    m = small_mlp()
    st = jp.magnitude(0.5, where=r"Dense_[01]/kernel", overrides={"Dense_1": 0.9}).init(m.params)
    assert jp.per_leaf_sparsity(st.masks) == {"Dense_0/kernel": 0.5, "Dense_1/kernel": 461 / 512}
    assert st.masks["Dense_2"]["kernel"] is None and st.masks["Dense_0"]["bias"] is None


def test_nm_transform_and_error_names_path():
    m = small_mlp()
    state = run(m, jp.magnitude(nm=(2, 4)), 3)
    for p, w in kernels(state.params).items():
        assert ((w.reshape(-1, 4, w.shape[-1]) != 0).sum(1) <= 2).all(), p
    cnn = models.create("cnn1d", (40,), 10)
    lay = layout.trace(cnn.apply_fn, jnp.zeros((1, 40)), params=cnn.params)
    with pytest.raises(ValueError, match="Conv_0/kernel.*divisible by 4"):
        jp.magnitude(nm=(2, 4), layout=lay).init(cnn.params)
    with pytest.raises(ValueError, match="Conv_0/kernel.*ambiguous"):
        jp.magnitude(nm=(2, 4)).init(cnn.params)
    with pytest.raises(ValueError, match="1 <= n < m"):
        jp.magnitude(nm=(4, 4))


def test_structured_masks_whole_units_with_bias():
    m = small_mlp()
    st = jp.magnitude(0.5, structured=2, where=r"Dense_[01]/kernel").init(m.params)
    k, b = np.asarray(st.masks["Dense_0"]["kernel"]), np.asarray(st.masks["Dense_0"]["bias"])
    assert (k == k[:1]).all() and (k[0] == b).all() and b.sum() == 16


def test_ste_forward_sparse_storage_dense_gradient_dense():
    m = small_mlp()
    t = jp.magnitude(0.9, ste=True)
    st = t.init(m.params)
    seen = t.apply(m.params, st)
    assert jp.params_sparsity(seen) == pytest.approx(0.9, abs=1e-3)
    g = jax.grad(lambda p: jnp.sum(t.apply(p, st)["Dense_0"]["kernel"] * 2.0))(m.params)
    assert (np.asarray(g["Dense_0"]["kernel"]) == 2.0).all()
    state = run(m, t, 3)
    assert jp.params_sparsity(state.params) == 0.0


@pytest.mark.parametrize("factory", [jp.movement, jp.saliency, jp.random])
def test_other_scores_reach_exact_sparsity(factory):
    m = small_mlp()
    state = run(m, factory(0.6, schedule=jp.one_shot(2)), 4)
    for p, w in kernels(state.params).items():
        assert (w == 0).sum() == round(0.6 * w.size), p


def test_selector_matching_nothing_lists_paths():
    m = small_mlp()
    with pytest.raises(ValueError, match="matches no parameter.*Dense_0/kernel"):
        jp.magnitude(0.5, where="Conv").init(m.params)


def test_mask_structure_mismatch_names_path():
    m = small_mlp()
    masks = jp.ones_like(m.params)
    bad = {k: v for k, v in masks.items() if k != "Dense_1"}
    with pytest.raises(ValueError, match="Dense_1"):
        jp.check_masks(m.params, bad)
    with pytest.raises(ValueError, match="Dense_1"):
        jp.fixed(bad).init(m.params)
    wrong = dict(masks, Dense_0={"kernel": jnp.ones((3, 3), bool), "bias": None})
    with pytest.raises(ValueError, match="Dense_0/kernel.*shape"):
        jp.check_masks(m.params, wrong)


def test_snip_and_fixed_mask_training():
    m = small_mlp()
    grads = jax.grad(lambda p: train.cross_entropy(m.apply_fn(p, X), Y))(m.params)
    masks = jp.snip(m.params, grads, 0.8)
    assert jp.sparsity(masks) == pytest.approx(0.8, abs=1e-4)
    state = run(m, jp.fixed(masks), 5)
    assert jp.params_sparsity(state.params) == pytest.approx(0.8, abs=1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown score"):
        jp.prune("taylor")
    with pytest.raises(ValueError, match="scope"):
        jp.magnitude(scope="model")
    with pytest.raises(ValueError, match="choose one"):
        jp.magnitude(scope="global", nm=(2, 4))


def test_schedule_and_masks_reusable_across_donating_runs():
    m = small_mlp()
    sched = jp.polynomial(begin=0, end=4, frequency=2)
    masks = jp.magnitude(0.5).init(m.params).masks
    for t in (jp.magnitude(0.5, schedule=sched), jp.magnitude(0.7, schedule=sched), jp.fixed(masks), jp.fixed(masks)):
        state = run(m, t, 2)
        assert jp.params_sparsity(state.params) > 0.4


def test_with_sparsity_validates_concrete_values_and_paths():
    params = {"Dense_0": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)}}
    st = jp.magnitude(0.5).init(params)
    for bad in (1.5, -0.5, 1.0):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            jp.with_sparsity(st, bad)
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        jp.with_sparsity(st, 0.5, {"Dense_0/kernel": 2.0})
    with pytest.raises(ValueError, match="Dense_9/kernel"):
        jp.with_sparsity(st, 0.5, {"Dense_9/kernel": 0.5})
    # traced values pass through (they cannot be checked); the compiled setter still works
    out = jax.jit(jp.with_sparsity)(st, jnp.float32(0.75))
    assert float(out.sparsity) == 0.75 and float(out.targets["Dense_0/kernel"]) == 0.75


def test_apply_masks_mismatch_names_the_path():
    params = {"Dense_0": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)}}
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        jp.apply_masks(params, {"Dense_0": {"kernel": jnp.ones((4, 3), bool), "bias": None}})
    with pytest.raises(ValueError, match="Dense_0"):
        jp.apply_masks(params, {"Dense_1": {"kernel": jnp.ones((4, 4), bool), "bias": None}})
