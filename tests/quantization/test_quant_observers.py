"""Observers and the calibration loop (incl. its bad-input errors)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress.quantization as jq
from jaxcompress import models
from jaxcompress.quantization.spec import QuantSpec

T4 = QuantSpec(bits=4, granularity="tensor")


def _heavy_tailed():
    x = jax.random.normal(jax.random.key(0), (4000,))
    return x.at[0].set(30.0)


def _mse(x, spec, lo, hi):
    s, z = jq.compute_scale_zero_point(lo, hi, spec)
    return float(jnp.mean(jnp.square(jq.quantize_dequantize(x, spec, s, z) - x)))


def test_percentile_matches_numpy():
    x = _heavy_tailed()
    lo, hi = jax.jit(lambda x: jq.percentile_range(x, T4, percentile=99.0))(x)
    ref = np.percentile(np.abs(np.asarray(x)), 99.0)
    np.testing.assert_allclose([float(lo[0]), float(hi[0])], [-ref, ref], rtol=1e-5)
    lo, hi = jq.percentile_range(x, T4.replace(symmetric=False), percentile=99.0)
    np.testing.assert_allclose(float(lo[0]), np.percentile(np.asarray(x), 1.0), rtol=1e-5)


@pytest.mark.parametrize("name", ["mse", "entropy", "percentile"])
def test_clipping_observers_beat_minmax_on_outliers(name):
    x = _heavy_tailed()
    fn = {"mse": jq.mse_range, "entropy": jq.entropy_range, "percentile": jq.percentile_range}[name]
    lo, hi = jax.jit(lambda x: fn(x, T4))(x)
    assert float(hi[0]) < 30.0
    assert _mse(x, T4, lo, hi) < _mse(x, T4, *jq.minmax_range(x, T4))


def test_mse_search_is_optimal_among_its_candidates():
    x = _heavy_tailed()
    lo, hi = jq.mse_range(x, T4, num_candidates=16)
    best = _mse(x, T4, lo, hi)
    for r in np.linspace(0.05, 1.0, 16):
        assert best <= _mse(x, T4, jnp.float32(r) * x.min(), jnp.float32(r) * x.max()) * (1 + 1e-5)


def test_per_channel_observers_shape():
    w = jax.random.normal(jax.random.key(1), (3, 3, 8, 4))
    for fn in (jq.minmax_range, jq.percentile_range, jq.mse_range, jq.entropy_range):
        lo, hi = fn(w, QuantSpec(bits=4, axis=-1))  # a Conv (H, W, I, O) kernel: explicit output axis
        assert lo.shape == hi.shape == (1, 1, 1, 4)


def test_moving_average_and_minmax_accumulate():
    spec = QuantSpec(granularity="tensor")
    a, b = jnp.array([[-1.0, 2.0]]), jnp.array([[-3.0, 1.0]])
    mm = jq.make_observer("minmax", spec)
    assert [float(v[0, 0]) for v in mm.result(mm.update(mm.update(mm.init(), a), b))] == [-3.0, 2.0]
    ema = jq.make_observer("moving_average", spec, momentum=0.5)
    lo, hi = ema.result(ema.update(ema.update(ema.init(), a), b))
    assert (float(lo[0, 0]), float(hi[0, 0])) == (-2.0, 1.5)
    with pytest.raises(ValueError, match="unknown observer"):
        jq.make_observer("histogram", spec)


def test_calibrate_ranges_match_captured_inputs():
    m = models.create("mlp", (4,), 3, rng=0, features=(5,))
    xs = [jax.random.normal(jax.random.key(i), (6, 4)) for i in range(3)]
    ranges = jq.calibrate(m, m.params, [(x, None) for x in xs], QuantSpec(granularity="tensor"))
    allx = jnp.concatenate(xs)
    assert float(ranges["Dense_0"][0].min()) == float(allx.min())
    _, inputs = jq.capture_inputs(m)(m.params, allx)
    assert np.isclose(float(ranges["Dense_1"][1].max()), float(inputs["Dense_1"].max()))
    r2 = jq.calibrate(m, m.params, xs, observer="percentile", num_batches=2)
    assert sorted(r2) == ["Dense_0", "Dense_1"]


def test_calibrate_bad_inputs():
    m = models.create("mlp", (4,), 3, rng=0, features=(5,))
    with pytest.raises(ValueError, match="zero batches"):
        jq.calibrate(m, m.params, [])
    bad = jnp.ones((2, 4)).at[0, 1].set(jnp.nan)
    with pytest.raises(ValueError, match="batch 1 .*NaN/inf.*Dense_0"):
        jq.calibrate(m, m.params, [jnp.ones((2, 4)), bad])
    big = dict(m.params, Dense_0={"kernel": m.params["Dense_0"]["kernel"].at[0, 0].set(jnp.inf),
                                  "bias": m.params["Dense_0"]["bias"]})
    with pytest.raises(ValueError, match=r"NaN/inf in the input of layer\(s\) \['Dense_1'\]"):
        jq.calibrate(m, big, [jnp.ones((2, 4))])
    with pytest.raises(ValueError, match="num_batches"):
        jq.calibrate(m, m.params, [jnp.ones((2, 4))], num_batches=0)


def test_subsampling_sees_every_channel():
    """Rows of width 384 with an outlier channel at an odd index: a stride of 2 would never see it."""
    from jaxcompress.quantization.observers import make_observer
    from jaxcompress.quantization.spec import QuantSpec

    x = np.random.default_rng(0).normal(size=(400, 384)).astype(np.float32)
    x[:, 99] *= 40.0  # BERT-like outlier feature
    spec = QuantSpec(bits=8, symmetric=True, granularity="tensor", narrow_range=True)
    obs = make_observer("percentile", spec, max_samples=x.size // 2)  # a subsample of half the values
    lo, hi = obs.result(obs.update(obs.init(), jnp.asarray(x)))
    assert float(np.ravel(hi)[0]) > 0.5 * np.abs(x[:, 99]).max()
