"""QuantSpec validation and per-channel / per-group axes of Dense and Conv kernels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress.quantization as jq
from jaxcompress.layout import WeightLayout
from jaxcompress.quantization.spec import QuantSpec


def _conv(nd: int) -> dict:
    """The layout of a Conv kernel ``(*window, I, O)`` named ``w``."""
    return {"w": WeightLayout(tuple(range(nd - 1)), (nd - 1,), nd - 2, "conv")}


@pytest.mark.parametrize("bits", [0, 1, 9, 12, 32, 8.0, "8", True])
def test_bad_bits_raise(bits):
    with pytest.raises(ValueError, match="bits must be one of"):
        QuantSpec(bits=bits)


def test_bad_fields_raise():
    with pytest.raises(ValueError, match="granularity"):
        QuantSpec(granularity="row")
    with pytest.raises(ValueError, match="rounding"):
        QuantSpec(rounding="up")
    with pytest.raises(ValueError, match="group_size"):
        QuantSpec(granularity="group")
    with pytest.raises(ValueError, match="only valid"):
        QuantSpec(group_size=4)


def test_group_size_must_divide_and_axis_must_exist():
    with pytest.raises(ValueError, match=r"w: group_size 5 does not divide axis 0 of size 8"):
        QuantSpec(granularity="group", group_size=5).check_shape((8, 3), "w")
    with pytest.raises(ValueError, match="quantization axis 2 does not exist"):
        QuantSpec(axis=2).check_shape((8, 3), "w")
    with pytest.raises(ValueError, match="contraction_axis -3 does not exist"):
        QuantSpec(granularity="group", group_size=2, contraction_axis=-3).check_shape((8, 3), "w")


def test_bits_16_grid():
    qmin, qmax = jq.qrange(QuantSpec(bits=16))
    assert (float(qmin), float(qmax)) == (-32768.0, 32767.0)
    assert [float(v) for v in jq.qrange(QuantSpec(bits=8, narrow_range=True))] == [-127.0, 127.0]


def test_dense_kernel_per_channel_is_output_axis():
    w = jax.random.normal(jax.random.key(0), (5, 3))  # (in, out)
    spec = QuantSpec(bits=8)
    s, _ = jq.compute_scale_zero_point(*jq.minmax(w, spec), spec)
    assert s.shape == (1, 3)
    np.testing.assert_allclose(np.asarray(s)[0], np.abs(np.asarray(w)).max(0) / 127, rtol=1e-6)


@pytest.mark.parametrize("shape", [(3, 3, 4, 6), (5, 4, 6)])
def test_conv_kernel_per_channel_is_output_axis(shape):
    w = jax.random.normal(jax.random.key(1), shape)  # (H, W, I, O) or (W, I, O)
    with pytest.raises(ValueError, match="'w'.*ambiguous"):
        QuantSpec(bits=4).resolve(shape, "w")
    spec = QuantSpec(bits=4).resolve(shape, "w", _conv(len(shape)))
    s, _ = jq.compute_scale_zero_point(*jq.minmax(w, spec), spec)
    assert s.shape == (1,) * (len(shape) - 1) + (6,)
    ref = np.abs(np.asarray(w)).reshape(-1, 6).max(0) / 7
    np.testing.assert_allclose(np.asarray(s).ravel(), ref, rtol=1e-6)


def test_groups_split_the_contraction_axis():
    w = jax.random.normal(jax.random.key(2), (3, 3, 8, 4))  # conv (H, W, I, O), groups of 4 input channels
    spec = QuantSpec(bits=4, granularity="group", group_size=4)
    cspec = spec.resolve(w.shape, "w", _conv(4))
    s, _ = jq.compute_scale_zero_point(*jq.minmax(w, cspec), cspec)
    assert s.shape == (1, 1, 2, 1, 4)
    wn = np.abs(np.asarray(w))
    for g in range(2):
        ref = wn[:, :, 4 * g : 4 * g + 4, :].reshape(-1, 4).max(0) / 7
        np.testing.assert_allclose(np.asarray(s)[0, 0, g, 0], ref, rtol=1e-6)
    d = jax.random.normal(jax.random.key(3), (8, 3))  # dense (in, out)
    sd, _ = jq.compute_scale_zero_point(*jq.minmax(d, spec), spec)
    assert sd.shape == (2, 1, 3)
    np.testing.assert_allclose(np.asarray(sd)[1, 0], np.abs(np.asarray(d))[4:].max(0) / 7, rtol=1e-6)


def test_spec_is_static_under_jit():
    spec = QuantSpec(bits=4)
    f = jax.jit(lambda x, spec: jq.fake_quant_dynamic(x, spec), static_argnums=1)
    assert f(jnp.ones((2, 2)), spec).shape == (2, 2)
