"""KD through the model contract: BatchNorm + Dropout students and teachers defined here (linen and NNX)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxcompress import distillation as distill
from jaxcompress import tree
from jaxcompress.model import from_linen, from_nnx

K = 4


class CNN(nn.Module):
    """conv -> BatchNorm -> relu -> dropout -> dense."""

    channels: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.channels, (3,), padding="SAME")(x[..., None])
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.5)(x))
        x = nn.Dropout(0.3, deterministic=not train)(x.reshape(x.shape[0], -1))
        return nn.Dense(K)(x)


class MaskedNet(nn.Module):
    """Two inputs ``(x, mask)``: masked mean of a Dense + BatchNorm, then logits."""

    @nn.compact
    def __call__(self, x, mask, train: bool = False):
        h = nn.BatchNorm(use_running_average=not train, momentum=0.5)(nn.Dense(8)(x))
        h = nn.Dropout(0.2, deterministic=not train)(nn.relu(h))
        pooled = jnp.sum(h * mask[..., None], 1) / jnp.maximum(jnp.sum(mask, 1, keepdims=True), 1.0)
        return nn.Dense(K)(pooled)


class NNXMLP(nnx.Module):
    def __init__(self, din: int, width: int, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(din, width, rngs=rngs)
        self.bn = nnx.BatchNorm(width, momentum=0.5, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.l2 = nnx.Linear(width, K, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(nnx.relu(self.bn(self.l1(x)))))


def _data(n=16, d=10, seed=0):
    r = np.random.default_rng(seed)
    x = jnp.asarray(r.normal(size=(n, d)), jnp.float32)
    return x, jnp.asarray(np.arange(n) % K, jnp.int32)


def _linen(width, seed, x):
    mod = CNN(width)
    return from_linen(mod, mod.init(jax.random.key(seed), x))


def _stats(ms):
    return {p: np.asarray(v) for p, v in tree.named_leaves(ms) if "mean" in p or "var" in p}


def _np(t):
    return jax.tree.map(np.asarray, jax.device_get(t))


def _same(a, b):
    jax.tree.map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), a, b)


def test_linen_bn_student_stats_update_teacher_state_unchanged():
    x, y = _data()
    teacher, student = _linen(8, 0, x), _linen(4, 1, x)
    t_state0 = _np(teacher.state)
    step = distill.make_distill_step(student, teacher, optax.adam(1e-2), distill.kd(4.0, 0.5))
    state = step.init(student, x)
    before = _stats(state.model_state)
    assert sorted(state.model_state) == ["batch_stats"]
    assert not any("mean" in p or "var" in p for p in tree.paths(state.params))  # optimizer: params only
    for _ in range(3):
        state, m = step(state, (x, y))
    assert np.isfinite(float(m["loss"])) and {"kd", "ce", "accuracy"} <= set(m)
    after = _stats(state.model_state)
    assert before and all(not np.allclose(before[p], after[p]) for p in before)
    _same(teacher.state, t_state0)  # the teacher ran in eval mode on its own, unchanged statistics
    _same(step.teacher_params[1], t_state0)
    assert not any(a.is_deleted() for a in jax.tree.leaves((teacher.params, teacher.state)))
    assert not any(a.is_deleted() for a in jax.tree.leaves((student.params, student.state)))


def test_teacher_eval_mode_uses_its_running_stats():
    """The teacher's logits are its eval-mode forward (running averages, no dropout), whatever the batch."""
    x, y = _data()
    teacher, student = _linen(8, 0, x), _linen(4, 1, x)
    stats = jax.tree.map(lambda a: a + 0.5, teacher.state)  # statistics that differ from the batch's
    teacher = teacher.replace(state=stats)
    step = distill.make_distill_step(student, teacher, optax.adam(1e-2), donate=False)
    out = step.teacher_outputs(step.teacher_params, (x, y))[0].logits
    np.testing.assert_allclose(out, teacher.apply_fn(teacher.params, x), rtol=1e-6)
    # params alone keep the Model's state; (params, state) replaces both; anything else is refused
    assert step._args(teacher.params)[1] is stats
    other = jax.tree.map(jnp.zeros_like, teacher.state)
    assert step._args((teacher.params, other))[1] is other
    with pytest.raises(ValueError, match="teacher_params"):
        step(step.init(student, x), (x, y), {"w": jnp.ones(2)})


def test_dropout_key_differs_per_rng_and_is_reproducible():
    x, y = _data()
    teacher, student = _linen(8, 0, x), _linen(4, 1, x)
    step = distill.make_distill_step(student, teacher, optax.sgd(0.1), distill.kd(2.0, 0.5), donate=False)
    a, b = step.init(student, x, seed=0), step.init(student, x, seed=0)
    c = step.init(student, x, seed=1)
    (sa, ma), (sb, mb), (_, mc) = step(a, (x, y)), step(b, (x, y)), step(c, (x, y))
    _same(sa.params, sb.params)
    np.testing.assert_array_equal(ma["loss"], mb["loss"])
    assert float(ma["loss"]) != float(mc["loss"])  # a different rng: another dropout mask
    # two consecutive steps draw different keys (dropout masks) from the state's rng
    s1, m1 = step(a, (x, y))
    s2, m2 = step(s1._replace(params=a.params, opt_state=a.opt_state, model_state=a.model_state), (x, y))
    assert float(m1["loss"]) != float(m2["loss"])


def test_eval_mode_deterministic_after_training():
    x, y = _data()
    teacher, student = _linen(8, 0, x), _linen(4, 1, x)
    step = distill.make_distill_step(student, teacher, optax.adam(1e-2))
    state = step.init(student, x)
    for _ in range(2):
        state, _ = step(state, (x, y))
    f = jax.jit(lambda p, ms: student.forward(p, ms, x, train=False, rng=None))
    (o1, ms1), (o2, _) = f(state.params, state.model_state), f(state.params, state.model_state)
    np.testing.assert_array_equal(np.asarray(o1), np.asarray(o2))
    _same(ms1, state.model_state)  # eval mode returns the state unchanged


def test_nnx_bn_dropout_student_and_teacher():
    x, y = _data()
    teacher = from_nnx(NNXMLP(10, 16, nnx.Rngs(0)))
    student = from_nnx(NNXMLP(10, 6, nnx.Rngs(1)))
    t0 = _stats(teacher.state)
    step = distill.make_distill_step(student, teacher, optax.adam(1e-2), distill.kd(4.0, 0.5))
    state = step.init(student, x)
    before = _stats(state.model_state)
    kd0 = None
    for _ in range(6):
        state, m = step(state, (x, y))
        kd0 = float(m["kd"]) if kd0 is None else kd0
    after = _stats(state.model_state)
    assert before and all(not np.allclose(before[p], after[p]) for p in before)
    assert float(m["kd"]) < kd0
    assert type(state.params) is type(student.params)
    t1 = _stats(teacher.state)
    assert t0 and all(np.array_equal(t0[p], t1[p]) for p in t0)  # the teacher's statistics never moved


def test_multi_input_batch():
    r = np.random.default_rng(0)
    xs = jnp.asarray(r.normal(size=(12, 5, 6)), jnp.float32)
    mask = jnp.asarray(np.arange(5)[None] < r.integers(1, 6, 12)[:, None], jnp.float32)
    y = jnp.asarray(np.arange(12) % K, jnp.int32)
    mt, ms = MaskedNet(), MaskedNet()
    teacher = from_linen(mt, mt.init(jax.random.key(0), xs, mask))
    student = from_linen(ms, ms.init(jax.random.key(1), xs, mask))
    step = distill.make_distill_step(student, teacher, optax.adam(1e-2), distill.kd(2.0, 0.5))
    state = step.init(student, (xs, mask))
    for _ in range(2):
        state, m = step(state, ((xs, mask), y))
    assert np.isfinite(float(m["loss"])) and 0.0 <= float(m["accuracy"]) <= 1.0
    # cached logits of a Model teacher over pytree inputs
    logits = distill.precompute_teacher_logits(teacher, None, (xs, mask), batch_size=5)
    np.testing.assert_allclose(logits, teacher.apply_fn(teacher.params, (xs, mask)), rtol=1e-5, atol=1e-6)
    (bx, bm), by, bt = next(distill.cached_batches((xs, mask), y, logits, 4))
    assert bx.shape == (4, 5, 6) and bm.shape == (4, 5) and bt.shape == (4, K)
    cached = distill.make_distill_step(student, None, optax.adam(1e-2), distill.kd(2.0, 0.5))
    _, mc = cached(cached.init(student, (xs, mask)), ((bx, bm), by, bt))
    assert np.isfinite(float(mc["loss"]))


def test_vmap_raw_over_stacked_states_with_model_state():
    x, y = _data()
    teacher, student = _linen(8, 0, x), _linen(4, 1, x)
    step = distill.make_distill_step(student, teacher, optax.adam(1e-2), donate=False)
    states = [step.set_hparams(step.init(student, x, seed=s), temperature=t) for s, t in ((0, 1.0), (1, 4.0))]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *states)
    swept, m = jax.jit(jax.vmap(step.raw, in_axes=(0, None, None)))(stacked, (x, y), step.teacher_params)
    for i, st in enumerate(states):
        one, m1 = jax.jit(step.raw)(st, (x, y), step.teacher_params)
        np.testing.assert_allclose(m["loss"][i], m1["loss"], rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-6),
                     swept.model_state, one.model_state)


def test_student_needing_rng_without_one_raises():
    x, y = _data()
    teacher = _linen(8, 0, x)
    mod = CNN(4)
    student = from_linen(mod, mod.init(jax.random.key(1), x), rng_streams=())  # no dropout stream given
    step = distill.make_distill_step(student, teacher, optax.sgd(0.1))
    with pytest.raises(ValueError, match="RNG|rng"):
        step(step.init(student, x), (x, y))


def test_apply_teacher_without_params_raises():
    x, _ = _data()
    teacher, student = _linen(8, 0, x), _linen(4, 1, x)
    with pytest.raises(ValueError, match="teacher_params is required"):
        distill.make_distill_step(student, teacher.apply_fn, optax.sgd(0.1))
    # an apply-function teacher with its params and a Model student mix fine
    step = distill.make_distill_step(student, teacher.apply_fn, optax.sgd(0.1), teacher_params=teacher.params)
    state, _ = step(step.init(student, x), (x, _data()[1]))
    assert sorted(state.model_state) == ["batch_stats"]
