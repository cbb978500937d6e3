import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompress import distillation as distill
from jaxcompress.train import cross_entropy


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kd(s, t, temp):
    ls, lt = _np_log_softmax(s / temp), _np_log_softmax(t / temp)
    return temp**2 * np.mean(np.sum(np.exp(lt) * (lt - ls), -1))


def _logits(seed, shape=(16, 10), scale=3.0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * scale


@pytest.mark.parametrize("temp", [1.0, 2.5, 20.0])
def test_kd_loss_matches_numpy(temp):
    s, t = _logits(0), _logits(1)
    got = jax.jit(distill.kd_loss)(s, t, jnp.float32(temp))
    np.testing.assert_allclose(got, np_kd(s.astype(np.float64), t.astype(np.float64), temp), rtol=1e-5, atol=1e-6)


def test_kd_loss_zero_iff_equal_and_grad_matches_hinton():
    s, t = _logits(0), _logits(1)
    assert float(distill.kd_loss(t, t, 4.0)) == pytest.approx(0.0, abs=1e-6)
    temp = 4.0
    g = jax.grad(distill.kd_loss)(jnp.asarray(s), t, temp)
    # d/ds [T^2 KL] = T * (softmax(s/T) - softmax(t/T)) / batch
    ps, pt = np.exp(_np_log_softmax(s / temp)), np.exp(_np_log_softmax(t / temp))
    np.testing.assert_allclose(g, temp * (ps - pt) / s.shape[0], rtol=1e-4, atol=1e-6)


def test_alpha_zero_is_cross_entropy_alpha_one_is_kd():
    s, t = _logits(2), _logits(3)
    y = np.random.default_rng(0).integers(0, 10, 16).astype(np.int32)
    f = jax.jit(distill.kd_objective)
    l0, _ = f(s, t, y, jnp.float32(4.0), jnp.float32(0.0))
    l1, _ = f(s, t, y, jnp.float32(4.0), jnp.float32(1.0))
    lh, m = f(s, t, y, jnp.float32(4.0), jnp.float32(0.25))
    np.testing.assert_allclose(l0, cross_entropy(jnp.asarray(s), jnp.asarray(y)), rtol=1e-6)
    np.testing.assert_allclose(l1, np_kd(s, t, 4.0), rtol=1e-5)
    np.testing.assert_allclose(lh, 0.25 * m["kd"] + 0.75 * m["ce"], rtol=1e-6)


def test_unlabeled_examples_skip_cross_entropy():
    s = _logits(4)
    y = np.arange(16, dtype=np.int32) % 10
    y_part = np.where(np.arange(16) < 8, y, -1).astype(np.int32)
    got = distill.labeled_cross_entropy(jnp.asarray(s), y_part)
    np.testing.assert_allclose(got, cross_entropy(jnp.asarray(s[:8]), jnp.asarray(y[:8])), rtol=1e-6)
    assert float(distill.labeled_cross_entropy(jnp.asarray(s), np.full(16, -1, np.int32))) == 0.0


def test_several_teachers_weighted_mean():
    s, t1, t2 = _logits(5), _logits(6), _logits(7)
    got = distill.kd_loss(s, [t1, t2], 2.0, teacher_weights=[3.0, 1.0])
    np.testing.assert_allclose(got, 0.75 * np_kd(s, t1, 2.0) + 0.25 * np_kd(s, t2, 2.0), rtol=1e-5)
    avg = distill.kd_loss(s, (t1, t2), 2.0)
    np.testing.assert_allclose(avg, 0.5 * np_kd(s, t1, 2.0) + 0.5 * np_kd(s, t2, 2.0), rtol=1e-5)


@pytest.mark.parametrize("temp", [0.0, -1.0])
def test_bad_temperature(temp):
    with pytest.raises(ValueError, match="temperature"):
        distill.kd(temperature=temp)
    with pytest.raises(ValueError, match="temperature"):
        distill.kd_loss(_logits(0), _logits(1), temp)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        distill.kd(alpha=alpha)
    with pytest.raises(ValueError, match="alpha"):
        distill.kd_objective(_logits(0), _logits(1), np.zeros(16, np.int32), 4.0, alpha)


def test_class_count_mismatch():
    with pytest.raises(ValueError, match="class counts: 10 vs 7"):
        distill.kd_loss(_logits(0), _logits(1, (16, 7)), 4.0)
    with pytest.raises(ValueError, match="class counts"):
        jax.jit(distill.kd_loss)(_logits(0), _logits(1, (16, 7)), 4.0)


def test_bad_teacher_weights_and_combine_duplicates():
    with pytest.raises(ValueError, match="teacher_weights"):
        distill.kd_loss(_logits(0), [_logits(1), _logits(2)], 4.0, teacher_weights=[1.0])
    with pytest.raises(ValueError, match="teacher_weights"):
        distill.kd(teacher_weights=[-1.0, 1.0])
    with pytest.raises(ValueError, match="distinct name"):
        distill.combine(distill.feature_loss("a", "b"), distill.feature_loss("c", "d"))


def test_fused_objective_gradient_matches_autodiff():
    s, t = _logits(8, (12, 10)), _logits(9, (12, 10))
    y = np.where(np.arange(12) % 3 == 0, -1, np.arange(12) % 10).astype(np.int32)

    def fused(s, t, temp, alpha):
        loss, m = distill.kd_objective(s, t, y, temp, alpha)
        return loss + 0.3 * m["kd"] - 0.2 * m["ce"]  # exercise the cotangents of the metrics too

    def reference(s, t, temp, alpha):
        kd, ce = distill.kd_loss(s, [t], temp), distill.labeled_cross_entropy(s, y)
        return alpha * kd + (1 - alpha) * ce + 0.3 * kd - 0.2 * ce

    args = (jnp.asarray(s), jnp.asarray(t), jnp.float32(3.0), jnp.float32(0.7))
    np.testing.assert_allclose(jax.jit(fused)(*args), reference(*args), rtol=1e-5)
    got = jax.jit(jax.grad(fused, argnums=(0, 1, 2, 3)))(*args)
    want = jax.grad(reference, argnums=(0, 1, 2, 3))(*args)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
