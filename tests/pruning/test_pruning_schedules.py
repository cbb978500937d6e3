"""Schedule values at known steps (hand-computed) and when they re-mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress.pruning as jp


def values(s, steps, target):
    f = jax.jit(lambda t, tg: (s.sparsity(s.params, t, tg), s.due(s.params, t)))
    out = [f(jnp.int32(t), jnp.float32(target)) for t in steps]
    return [float(a) for a, _ in out], [bool(b) for _, b in out]


def test_polynomial_cubic_values():
    s = jp.polynomial(begin=100, end=1100, frequency=50)
    steps = [0, 99, 100, 350, 600, 850, 1100, 2000]
    got, due = values(s, steps, 0.9)
    ref = [0.0, 0.0] + [0.9 * (1 - (1 - (t - 100) / 1000) ** 3) for t in steps[2:7]] + [0.9]
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert due == [False, False, True, True, True, True, True, False]
    assert values(s, [125], 0.9)[1] == [False]


def test_polynomial_initial_and_end_off_grid():
    s = jp.polynomial(begin=0, end=95, frequency=10, initial=0.2)
    got, due = values(s, [0, 95, 96], 0.8)
    np.testing.assert_allclose(got, [0.2, 0.8, 0.8], atol=1e-6)
    assert due == [True, True, False]


def test_one_shot_and_iterative():
    got, due = values(jp.one_shot(10), [0, 9, 10, 11], 0.7)
    assert got == [0.0, 0.0, pytest.approx(0.7), pytest.approx(0.7)] and due == [False, False, True, False]
    s = jp.iterative(fraction=0.2, every=10, begin=5)
    got, due = values(s, [0, 5, 15, 25, 105], 0.5)
    np.testing.assert_allclose(got, [0.0, 0.2, 0.36, 0.488, 0.5], atol=1e-6)
    assert due == [False, True, True, True, True]


def test_cosine_decay():
    f = jp.cosine_decay(0.3, 100)
    np.testing.assert_allclose([float(f(t)) for t in (0, 50, 100, 200)], [0.3, 0.15, 0.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("make", [lambda: jp.polynomial(10, 5), lambda: jp.polynomial(0, 10, 0),
                                  lambda: jp.iterative(1.2, 10), lambda: jp.one_shot(-1),
                                  lambda: jp.polynomial(0, 10, initial=1.0)])
def test_bad_schedules_raise(make):
    with pytest.raises(ValueError):
        make()
