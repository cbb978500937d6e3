import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcompress import distillation as distill
from jaxcompress import models
from jaxcompress.transform import Transform

TEACHER_WIDTH = 37  # a width no student uses, to find the teacher's matmuls in the program


def _data(n=64, d=8, k=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32)
    return x, y


def _pair(student="mlp", **kw):
    t = models.create("mlp", (8,), 3, rng=0, features=(TEACHER_WIDTH,))
    s = models.create(student, (8,), 3, rng=1, features=kw.get("features", (5,)))
    return t, s


def _copy(tree):
    return jax.tree.map(lambda a: np.array(a, copy=True), tree)


def test_teacher_frozen_and_student_trains():
    t, s = _pair()
    x, y = _data()
    before = _copy(t.params)
    step = distill.make_distill_step(s.apply_fn, t.apply_fn, optax.adam(1e-2), distill.kd(2.0, 0.5),
                                     teacher_params=t.params)
    state = step.init(s.params, x)
    first = None
    for i in range(30):
        state, m = step(state, (x, y))
        first = float(m["loss"]) if first is None else first
    assert float(m["loss"]) < 0.7 * first
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), t.params, before)
    assert not any(a.is_deleted() for a in jax.tree.leaves(t.params))


def _dot_shapes(jaxpr):
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            out.append(tuple(v.aval.shape for v in eqn.invars))
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (list, tuple)) else [p]):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    out += _dot_shapes(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    out += _dot_shapes(sub)
    return out


def test_no_teacher_gradient_in_program():
    t, s = _pair()
    x, y = _data()
    step = distill.make_distill_step(s.apply_fn, t.apply_fn, optax.adam(1e-2), teacher_params=t.params)
    state = step.init(s.params, x)
    jaxpr = jax.make_jaxpr(step.raw)(state, (x, y), t.params).jaxpr
    dots = _dot_shapes(jaxpr)
    teacher_dots = [d for d in dots if any(TEACHER_WIDTH in shape for shape in d)]
    # forward only: x @ W1 and h @ W2; a backward pass through the teacher would add 2-3 more.
    assert len(teacher_dots) == 2, teacher_dots
    # the student's forward (2) + backward (3: dW1, dW2, dh) matmuls are all there.
    assert len(dots) - len(teacher_dots) == 5
    hlo = step.lower(state, (x, y)).as_text()
    assert "jax.buffer_donor" in hlo or "tf.aliasing_output" in hlo


def test_one_compilation_across_temperature_and_alpha(count_traces):
    t, s = _pair()
    x, y = _data()
    student_apply = count_traces(s.apply_fn)
    step = distill.make_distill_step(student_apply, t.apply_fn, optax.sgd(1e-2), distill.kd(1.0, 0.1),
                                     teacher_params=t.params)
    state = step.init(s.params, x)
    losses = []
    for temp in (1.0, 2.0, 4.0, 8.0, 20.0):
        for alpha in (0.1, 0.5, 0.9):
            st = step.set_hparams(step.init(s.params, x), temperature=temp, alpha=alpha)
            _, m = step(st, (x, y))
            losses.append(float(m["loss"]))
    assert student_apply.traces == 1
    assert len(set(losses)) == 15  # the traced values really changed the loss
    with pytest.raises(ValueError, match="temperature"):
        step.set_hparams(state, temperature=0.0)
    with pytest.raises(ValueError, match="alpha"):
        step.set_hparams(state, alpha=1.01)
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        step.set_hparams(state, temprature=2.0)


def _fixed_mask_transform(masks):
    """A tiny hand-made pruning transform: fixed masks on the kernels."""

    def apply(params, state):
        return jax.tree.map(lambda p, m: p if m is None else p * m, params, state, is_leaf=lambda v: v is None)

    def update(params, state, ctx):
        return apply(params, state), state

    return Transform(init=lambda params: masks, apply=apply, update=update)


def test_composes_with_pruning_mask():
    t, s = _pair(features=(16,))
    x, y = _data()
    masks = jax.tree_util.tree_map_with_path(
        lambda kp, p: (jnp.abs(p) > jnp.median(jnp.abs(p))).astype(p.dtype) if kp[-1].key == "kernel" else None,
        s.params)
    transform = _fixed_mask_transform(masks)
    step = distill.make_distill_step(s.apply_fn, t.apply_fn, optax.adam(1e-2), distill.kd(4.0, 0.9), transform,
                                     teacher_params=t.params)
    state = step.init(s.params, x)
    for _ in range(10):
        state, m = step(state, (x, y))
    for name in ("Dense_0", "Dense_1"):
        k, mk = np.asarray(state.params[name]["kernel"]), np.asarray(masks[name]["kernel"])
        assert np.all(k[mk == 0] == 0.0)
        assert np.all(k[mk == 1] != 0.0)
        assert 0.4 < mk.mean() < 0.6


def test_nnx_student():
    t, s = _pair("nnx_mlp", features=(6,))
    x, y = _data()
    step = distill.make_distill_step(s.apply_fn, t.apply_fn, optax.adam(1e-2), teacher_params=t.params)
    state = step.init(s.params, x)
    kd0 = None
    for _ in range(40):
        state, m = step(state, (x, y))
        kd0 = float(m["kd"]) if kd0 is None else kd0
    assert float(m["kd"]) < 0.5 * kd0
    assert type(state.params) is type(s.params)


def test_cached_logits_match_fused_step():
    t, s = _pair()
    x, y = _data()
    logits = distill.precompute_teacher_logits(t.apply_fn, t.params, x, batch_size=24)
    np.testing.assert_allclose(logits, t.apply_fn(t.params, x), rtol=1e-5, atol=1e-6)
    fused = distill.make_distill_step(s.apply_fn, t.apply_fn, optax.adam(1e-2), teacher_params=t.params, donate=False)
    cached = distill.make_distill_step(s.apply_fn, None, optax.adam(1e-2), donate=False)
    s1, m1 = fused(fused.init(s.params, x), (x, y))
    s2, m2 = cached(cached.init(s.params, x), (x, y, logits))
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), s1.params, s2.params)
    xb, yb, tb = next(distill.cached_batches(x, y, logits, 16, seed=0))
    assert xb.shape == (16, 8) and tb.shape == (16, 3)
    np.testing.assert_allclose(tb, t.apply_fn(t.params, xb), rtol=1e-5, atol=1e-6)


def test_feature_distillation_step_learns_projection():
    t = models.create("cnn1d", (40,), 10, rng=0)
    s = models.create("cnn1d", (40,), 10, rng=1, channels=(8, 8, 8))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 40)).astype(np.float32), rng.integers(0, 10, 16).astype(np.int32)
    loss = distill.combine(distill.kd(4.0, 0.5), distill.feature_loss("Conv_1", "Conv_1", "mse", weight=1.0),
                           distill.feature_loss("Conv_2", "Conv_2", "attention", weight=10.0))
    step = distill.make_distill_step(distill.with_features(s.module, ["Conv_1", "Conv_2"], "student"),
                                     distill.with_features(t.module, ["Conv_1", "Conv_2"], "teacher"),
                                     optax.adam(1e-2), loss, teacher_params=t.params)
    state = step.init(s.params, x)
    proj0 = np.array(state.loss_params[1]["kernel"])
    assert proj0.shape == (8, 25) and state.loss_params[2] is None
    first = None
    for _ in range(8):
        state, m = step(state, (x, y))
        first = float(m["mse_loss"]) if first is None else first
    assert float(m["mse_loss"]) < first
    assert {"kd", "ce", "mse_loss", "attention_loss"} <= set(m)
    assert not np.allclose(np.asarray(state.loss_params[1]["kernel"]), proj0)


def test_several_teachers_step():
    t1, s = _pair()
    t2 = models.create("mlp", (8,), 3, rng=5, features=(9,))
    x, y = _data()
    step = distill.make_distill_step(s.apply_fn, [t1.apply_fn, t2.apply_fn], optax.adam(1e-2),
                                     distill.kd(2.0, 1.0, teacher_weights=[1.0, 0.0]),
                                     teacher_params=[t1.params, t2.params], donate=False)
    only_t1 = distill.make_distill_step(s.apply_fn, t1.apply_fn, optax.adam(1e-2), distill.kd(2.0, 1.0),
                                        teacher_params=t1.params, donate=False)
    _, m = step(step.init(s.params, x), (x, y))
    _, m1 = only_t1(only_t1.init(s.params, x), (x, y))
    np.testing.assert_allclose(m["loss"], m1["loss"], rtol=1e-6)


def test_step_bad_input():
    t, s = _pair()
    x, y = _data()
    with pytest.raises(ValueError, match="teacher_params is required"):
        distill.make_distill_step(s.apply_fn, t.apply_fn, optax.sgd(0.1))
    with pytest.raises(ValueError, match="cached teacher logits carry no features"):
        distill.make_distill_step(s.apply_fn, None, optax.sgd(0.1), distill.feature_loss("Dense_0", "Dense_0"))
    step = distill.make_distill_step(s.apply_fn, t.apply_fn, optax.sgd(0.1), distill.feature_loss("Dense_0", "Dense_0"),
                                     teacher_params=t.params)
    with pytest.raises(ValueError, match="with_features"):
        step.init(s.params, x)
    with pytest.raises(ValueError, match="temperature"):
        distill.make_distill_step(s.apply_fn, t.apply_fn, optax.sgd(0.1), teacher_params=t.params).init(
            s.params, x, temperature=-2.0)
    wide = models.create("mlp", (8,), 4, rng=1, features=(5,))
    step = distill.make_distill_step(wide.apply_fn, t.apply_fn, optax.sgd(0.1), teacher_params=t.params)
    with pytest.raises(ValueError, match="class counts: 4 vs 3"):
        step(step.init(wide.params, x), (x, y))


def test_composes_with_fake_quant_ste():
    """QAT+KD: the forward pass sees the transform's (straight-through) quantized weights."""
    t, s = _pair()
    x, y = _data()
    quant = lambda w: jnp.round(w * 4.0) / 4.0  # noqa: E731
    ste = Transform(init=lambda p: (), update=lambda p, st, ctx: (p, st),
                    apply=lambda p, st: jax.tree.map(lambda w: w + jax.lax.stop_gradient(quant(w) - w), p))
    step = distill.make_distill_step(s.apply_fn, t.apply_fn, optax.sgd(0.1), distill.kd(2.0, 0.5), ste,
                                     teacher_params=t.params, donate=False)
    state = step.init(s.params, x)
    new, m = step(state, (x, y))
    want, _ = distill.kd_objective(s.apply_fn(jax.tree.map(quant, s.params), x), t.apply_fn(t.params, x), y, 2.0, 0.5)
    np.testing.assert_allclose(m["loss"], want, rtol=1e-5)
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), new.params, state.params)
    assert all(jax.tree.leaves(moved))  # straight-through gradients reached every float weight


def test_vmap_over_temperatures_matches_separate_runs():
    t, s = _pair()
    x, y = _data()
    step = distill.make_distill_step(s.apply_fn, t.apply_fn, optax.adam(1e-2), teacher_params=t.params)
    states = [step.set_hparams(step.init(s.params, x), temperature=temp) for temp in (1.0, 4.0, 16.0)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *states)
    swept, m = jax.jit(jax.vmap(step.raw, in_axes=(0, None, None)))(stacked, (x, y), t.params)
    for i, st in enumerate(states):
        one, m1 = jax.jit(step.raw)(st, (x, y), t.params)
        np.testing.assert_allclose(m["loss"][i], m1["loss"], rtol=1e-5)
        np.testing.assert_allclose(swept.params["Dense_0"]["kernel"][i], one.params["Dense_0"]["kernel"], rtol=1e-5)
