"""Op interception and calibration capture: exactness, the (rows, K) view of every weight op, statistics vs numpy."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import LINEN_WEIGHTS, NNX_WEIGHTS
from jaxcompress import tree as jtree
from jaxcompress.calibration import capture
from jaxcompress.interception import intercept
from jaxcompress.layout import site_layout
from jaxcompress.model import from_linen

# ------------------------------------------------------------------ interception ----------------


@pytest.mark.parametrize("which", ["linen", "nnx", "cnn"])
def test_default_hook_is_exact_and_sees_every_weight(which, request, batches, images):
    model = request.getfixturevalue(f"{which}_model" if which != "cnn" else "cnn_model")
    inputs = images if which == "cnn" else batches[0]
    expected = {"linen": LINEN_WEIGHTS, "nnx": NNX_WEIGHTS, "cnn": {"conv/kernel", "head/kernel"}}[which]
    seen, gathered = [], set()

    def hook(site, lhs, rhs, default):
        seen.append(site.path)
        return default()

    out = jax.jit(intercept(model.apply_fn, hook, on_trace=gathered.update))(model.params, inputs)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(jax.jit(model.apply_fn)(model.params, inputs)))
    assert sorted(seen) == sorted(expected)  # each weight once, nothing else (biases, norms, embedding)
    assert gathered == (set() if which == "cnn" else {"embed/embedding"})


# ------------------------------------------------------------------ (rows, K) views -------------


def _views(fn, params, x):
    """``{path: (site, lead, rows @ kernel_2d(w), out as (rows, N))}`` of every weight op, in one jitted call."""
    sites = {}

    def run(params, x):
        leaves, res = dict(jtree.named_leaves(params)), {}

        def hook(site, lhs, rhs, default):
            out = default()
            rows, lead = capture.activation_rows(site, lhs, rhs)
            w = rhs if site.weight == 1 else lhs
            assert w.shape == tuple(leaves[site.path].shape[a] for a in site.perm)  # perm: operand -> param axes
            assert rows.shape[0] == int(np.prod(lead)) and tuple(lead) == out.shape[: len(lead)]
            sites[site.path] = (site, tuple(lead))
            res[site.path] = (rows @ capture.kernel_2d(leaves[site.path], site_layout(site)),
                              out.reshape(rows.shape[0], -1))
            return out

        intercept(fn, hook)(params, x)
        return res

    res = jax.jit(run)(params, x)
    return {p: (*sites[p], np.asarray(a), np.asarray(b)) for p, (a, b) in res.items()}


def _linen(mod, x):
    m = from_linen(mod, jax.jit(mod.init)(jax.random.key(0), x))
    return m.apply_fn, m.params


def _case(name):
    """``(fn, params, x, (K, N))`` of one weight op."""
    rng = np.random.default_rng(3)
    x3 = jnp.asarray(rng.normal(size=(2, 5, 6)).astype(np.float32))
    if name == "dense":
        return (*_linen(nn.Dense(4), x3), x3, (6, 4))
    if name == "dense_general_heads":
        return (*_linen(nn.DenseGeneral((3, 2)), x3), x3, (6, 6))
    if name == "out_projection":
        x4 = jnp.asarray(rng.normal(size=(2, 5, 3, 4)).astype(np.float32))
        return (*_linen(nn.DenseGeneral(5, axis=(-2, -1)), x4), x4, (12, 5))
    if name == "transposed":  # w is (N, K), read as w.T
        return lambda p, x: x @ p["w"].T, {"w": jnp.asarray(rng.normal(size=(4, 6)).astype(np.float32))}, x3, (6, 4)
    img = jnp.asarray(rng.normal(size=(2, 7, 9, 3)).astype(np.float32))
    return (*_linen(nn.Conv(4, (3, 3), strides=(2, 2), padding="SAME"), img), img, (27, 4))


@pytest.mark.parametrize("name", ["dense", "dense_general_heads", "out_projection", "transposed", "conv"])
def test_rows_times_kernel_2d_is_the_op_output(name):
    fn, params, x, k_n = _case(name)
    (path, (site, lead, got, want)), = _views(fn, params, x).items()
    assert site.perm == ((1, 0) if name == "transposed" else tuple(range(len(site.perm))))
    assert got.shape == (int(np.prod(lead)), k_n[1])
    assert lead == ((2, 4, 5) if name == "conv" else (2, 5))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    w = np.asarray(dict(jtree.named_leaves(params))[path])
    w2 = capture.kernel_2d(w, site_layout(site))
    assert w2.shape == k_n
    np.testing.assert_array_equal(np.asarray(capture.kernel_from_2d(w2, site_layout(site), w.shape)), w)


def test_rows_times_kernel_2d_on_every_weight_of_the_models(linen_model, cnn_model, batches, images):
    for model, x, n in ((linen_model, batches[0], len(LINEN_WEIGHTS)), (cnn_model, images, 2)):
        views = _views(model.apply_fn, model.params, x)
        assert len(views) == n
        for path, (_, _, got, want) in views.items():
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=path)
    assert views["conv/kernel"][1] == (2, 4, 4)


# ------------------------------------------------------------------ statistics vs numpy ---------

K, HID = 3, 4


def two_layer(p, x):
    return jnp.tanh(x @ p["a"]) @ p["b"]


def _two_layer_params():
    rng = np.random.default_rng(5)
    return {"a": jnp.asarray(rng.normal(size=(K, HID)).astype(np.float32)),
            "b": jnp.asarray(rng.normal(size=(HID, 2)).astype(np.float32))}


def _xs(n=3, seed=6):
    """``n`` batches ``{"x": (2, 5, K), "mask": (2, 5)}`` with different padding."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        mask = np.ones((2, 5), np.float32)
        mask[i % 2, 5 - 1 - i:] = 0
        out.append({"x": jnp.asarray(rng.normal(size=(2, 5, K)).astype(np.float32)), "mask": jnp.asarray(mask)})
    return out


def _np_stats(X):
    return {"hessian": 2 * X.T @ X / X.shape[0], "sqnorm": (X ** 2).sum(0), "absmax": np.abs(X).max(0),
            "absmean": np.abs(X).mean(0), "minmax": (X.min(), X.max())}


def _np_inputs(params, bs, masked):
    xa = np.concatenate([np.asarray(b["x"]).reshape(-1, K) for b in bs])
    keep = np.concatenate([np.asarray(b["mask"]).reshape(-1) > 0 for b in bs]) if masked else slice(None)
    xb = np.tanh(xa @ np.asarray(params["a"], np.float64))
    return {"a": xa[keep].astype(np.float64), "b": xb[keep]}


STAT_NAMES = ("hessian", "sqnorm", "absmax", "absmean", "minmax")


@pytest.mark.parametrize("masked", [False, True])
def test_statistics_match_numpy(masked):
    params, bs = _two_layer_params(), _xs()
    fn = lambda p, inp: two_layer(p, inp["x"])  # noqa: E731
    st = capture.collect(fn, params, bs, STAT_NAMES, token_mask=(lambda inp: inp["mask"]) if masked else None)
    ref = _np_inputs(params, bs, masked)
    assert sorted(st) == ["a", "b"]
    for path in ("a", "b"):
        want = _np_stats(ref[path])
        for k in STAT_NAMES:
            np.testing.assert_allclose(np.asarray(st[path][k]), np.asarray(want[k]), rtol=1e-5, atol=1e-6,
                                       err_msg=f"{path}/{k}")


@pytest.mark.parametrize("masked", [False, True])
def test_statistics_stream_over_batches(masked):
    params, bs = _two_layer_params(), _xs()
    fn = lambda p, inp: two_layer(p, inp["x"])  # noqa: E731
    tm = (lambda inp: inp["mask"]) if masked else None
    one = {"x": jnp.concatenate([b["x"] for b in bs]), "mask": jnp.concatenate([b["mask"] for b in bs])}
    streamed = capture.collect(fn, params, bs, STAT_NAMES, token_mask=tm)
    whole = capture.collect(fn, params, [one], STAT_NAMES, token_mask=tm)
    for path in ("a", "b"):
        for k in STAT_NAMES:
            np.testing.assert_allclose(np.asarray(streamed[path][k]), np.asarray(whole[path][k]), rtol=1e-5,
                                       atol=1e-6, err_msg=f"{path}/{k}")


@pytest.mark.parametrize("max_samples", [4, 7, 30, 1000])
def test_samples_at_most_max_samples_per_batch(max_samples):
    params, bs = _two_layer_params(), _xs()
    fn = lambda p, inp: two_layer(p, inp["x"])  # noqa: E731
    ref = _np_inputs(params, bs, False)
    for i, b in enumerate(bs):
        st = capture.collect(fn, params, [b], ("samples",), max_samples=max_samples)
        for path, width in (("a", K), ("b", HID)):
            v, want = np.asarray(st[path]["samples"]), ref[path][10 * i: 10 * (i + 1)].reshape(-1)
            assert 0 < v.size <= max(max_samples, width) and v.size % width == 0, (path, v.size)  # whole rows
            rows = want.reshape(-1, width)
            assert all(any(np.allclose(r, w, atol=1e-6) for w in rows) for r in v.reshape(-1, width))
            if max_samples >= want.size:  # everything kept
                np.testing.assert_allclose(v, want, rtol=1e-5, atol=1e-6)
            assert np.abs(v[:, None] - want[None, :]).min(1).max() < 1e-5  # a subsample of this batch's inputs
    total = capture.collect(fn, params, bs, ("samples",), max_samples=max_samples)
    assert all(0 < total[p]["samples"].size <= len(bs) * max(max_samples, w) for p, w in (("a", K), ("b", HID)))


def test_masked_samples_exclude_padding():
    params, bs = _two_layer_params(), _xs()
    fn = lambda p, inp: two_layer(p, inp["x"])  # noqa: E731
    st = capture.collect(fn, params, bs, ("samples",), token_mask=lambda inp: inp["mask"])
    ref = _np_inputs(params, bs, True)
    np.testing.assert_allclose(np.sort(np.asarray(st["a"]["samples"])), np.sort(ref["a"].reshape(-1)), rtol=1e-6)


def test_where_restricts_and_stats_per_path():
    params, bs = _two_layer_params(), _xs(1)
    fn = lambda p, inp: two_layer(p, inp["x"])  # noqa: E731
    assert sorted(capture.collect(fn, params, bs, ("absmax",), where=lambda p: p == "b")) == ["b"]
    st = capture.collect(fn, params, bs, {"a": ("sqnorm",)})
    assert list(st) == ["a"] and list(st["a"]) == ["sqnorm"]


# ------------------------------------------------------------------ bad input -------------------


def test_bad_input():
    params = _two_layer_params()
    fn = lambda p, inp: two_layer(p, inp["x"])  # noqa: E731
    bs = _xs(2)
    with pytest.raises(ValueError, match="zero batches"):
        capture.collect(fn, params, [], ("hessian",))
    odd = [bs[0], {"x": bs[1]["x"][:, :4], "mask": bs[1]["mask"][:, :4]}]
    with pytest.raises(ValueError, match="batch 1 has shapes"):
        capture.collect(fn, params, odd, ("hessian",))
    with pytest.raises(ValueError, match="nothing to calibrate"):
        capture.collect(lambda p, inp: jnp.sum(inp["x"]) * p["a"], params, bs, ("hessian",))
    with pytest.raises(ValueError, match="nothing to calibrate"):
        capture.collect(fn, params, bs, ("hessian",), where=lambda p: False)
    with pytest.raises(ValueError, match="unknown statistic 'hessain'"):
        capture.collect(fn, params, bs, ("hessain",))
    with pytest.raises(ValueError, match="unknown statistic 'mean'"):
        capture.collect(fn, params, bs, {"a": ("mean",)})
