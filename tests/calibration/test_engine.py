"""The sequential engine: blocks by regex, statistics on the compressed prefix, carried / recorded / spilled inputs."""

from __future__ import annotations

import glob
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import BLOCK_WEIGHTS, LINEN_WEIGHTS, linen_encoder
from jaxcompress import tree as jtree
from jaxcompress.calibration import capture, engine
from jaxcompress.model import from_apply

MASK = lambda inp: inp[1]  # noqa: E731  (the attention mask of (ids, mask))


def recorder():
    """A compress function recording ``(name, sorted stat paths)`` and ``{name: stats}``; halves the weights."""
    seen, stats = [], {}

    def compress(name, p, st):
        seen.append((name, sorted(st)))
        stats[name] = st
        return jtree.map_with_path(lambda path, w: w * 0.5 if path in st else w, p)

    return compress, seen, stats


def _leaves(tree):
    return dict(jtree.named_leaves(tree))


def _temp_dirs():
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "jaxcompress-calib-*")))


# ------------------------------------------------------------------ find_blocks -----------------


def test_find_blocks(linen_model, nnx_model, batches):
    assert engine.find_blocks(linen_model, batches[0], r"block_\d+") == ["block_0", "block_1"]
    assert engine.find_blocks(nnx_model, batches[0], r"blocks/\d+") == ["blocks/0", "blocks/1"]
    with pytest.raises(ValueError, match=r"matches no module path.*block_0/ln1"):
        engine.find_blocks(linen_model, batches[0], r"layer_\d+")
    with pytest.raises(ValueError, match=r"matches no module path.*blocks/0"):
        engine.find_blocks(nnx_model, batches[0], r"block_\d+")


def test_from_apply_needs_blocks_none(linen_model, batches):
    m = from_apply(linen_model.apply_fn, linen_model.params)
    with pytest.raises(ValueError, match="blocks=None"):
        engine.find_blocks(m, batches[0], r"block_\d+")
    compress, seen, _ = recorder()
    with pytest.raises(ValueError, match="blocks=None"):
        engine.sequential(m, batches, compress, ("hessian",), blocks=r"block_\d+")
    assert seen == []


# ------------------------------------------------------------------ sequential ------------------


@pytest.fixture(scope="module")
def linen_run(linen_model, batches):
    """The in-memory carried run on the linen encoder: ``(params, seen, stats)``."""
    compress, seen, stats = recorder()
    out = engine.sequential(linen_model, batches, compress, ("hessian", "absmax"), blocks=r"block_\d+",
                            token_mask=MASK)
    return out, seen, stats


@pytest.fixture(scope="module")
def linen_run_recorded(linen_model, batches):
    """The same with ``carry=False`` (each block's inputs recorded on the compressed prefix)."""
    compress, seen, stats = recorder()
    out = engine.sequential(linen_model, batches, compress, ("hessian", "absmax"), blocks=r"block_\d+",
                            token_mask=MASK, carry=False)
    return out, seen, stats


def test_blocks_in_order_with_relative_paths(linen_model, linen_run):
    out, seen, _ = linen_run
    assert seen == [("block_0", BLOCK_WEIGHTS), ("block_1", BLOCK_WEIGHTS)]
    new, old = _leaves(out), _leaves(linen_model.params)
    assert jax.tree.structure(out) == jax.tree.structure(linen_model.params)
    for path, w in old.items():
        scaled = path.split("/", 1)[0] in ("block_0", "block_1") and path.split("/", 1)[1] in BLOCK_WEIGHTS
        np.testing.assert_array_equal(np.asarray(new[path]), np.asarray(w) * (0.5 if scaled else 1.0), err_msg=path)


def test_nnx_blocks_in_order(nnx_model, batches):
    compress, seen, _ = recorder()
    out = engine.sequential(nnx_model, batches, compress, ("sqnorm",), blocks=r"blocks/\d+", token_mask=MASK)
    assert seen == [("blocks/0", BLOCK_WEIGHTS), ("blocks/1", BLOCK_WEIGHTS)]
    new, old = _leaves(out), _leaves(nnx_model.params)
    np.testing.assert_array_equal(np.asarray(new["blocks/1/w2"]), 0.5 * np.asarray(old["blocks/1/w2"]))
    np.testing.assert_array_equal(np.asarray(new["head/kernel"]), np.asarray(old["head/kernel"]))


@pytest.fixture(scope="module")
def whole_run(linen_model, batches):
    """``blocks=None``: one ``compress`` call on the whole model (statistics of the uncompressed model)."""
    compress, seen, stats = recorder()
    out = engine.sequential(linen_model, batches, compress, ("hessian", "absmax"), token_mask=MASK)
    return out, seen, stats


def test_block_1_is_calibrated_on_the_compressed_block_0(linen_model, linen_run, whole_run, batches):
    out, _, stats = linen_run
    prefix = engine.replace_subtree(linen_model.params, ("block_0",), engine.subtree(out, ("block_0",)))
    paths = ("q/kernel", "w2")
    direct = capture.collect(linen_model.apply_fn, prefix, batches, ("hessian",), token_mask=MASK,
                             where=lambda p: p in {f"block_1/{q}" for q in paths})
    assert sorted(direct) == [f"block_1/{q}" for q in paths]
    for path in paths:
        got, want = np.asarray(stats["block_1"][path]["hessian"]), np.asarray(direct[f"block_1/{path}"]["hessian"])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=path)
        original = np.asarray(whole_run[2][""][f"block_1/{path}"]["hessian"])  # block_0 not compressed
        assert not np.allclose(original, want, rtol=1e-3, atol=1e-4)  # so the check above tells them apart


def test_padding_rows_are_excluded_in_blocks(linen_model, linen_run, batches):
    _, _, stats = linen_run  # block_0's first weight reads LayerNorm(embedding) rows: compare with numpy
    p = linen_model.params
    emb = np.asarray(p["embed"]["embedding"], np.float64)
    ln = p["block_0"]["ln1"]
    rows = []
    for ids, mask in batches:
        h = emb[np.asarray(ids)][np.asarray(mask) > 0]
        mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
        rows.append((h - mu) / np.sqrt(var + 1e-6) * np.asarray(ln["scale"]) + np.asarray(ln["bias"]))
    x = np.concatenate(rows)
    np.testing.assert_allclose(np.asarray(stats["block_0"]["q/kernel"]["hessian"]), 2 * x.T @ x / len(x),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(stats["block_0"]["q/kernel"]["absmax"]), np.abs(x).max(0), rtol=1e-5)


def test_carry_false_matches_carry_true(linen_run, linen_run_recorded):
    out, seen, stats = linen_run_recorded
    assert seen == linen_run[1]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5),
                 out, linen_run[0])
    np.testing.assert_allclose(np.asarray(stats["block_1"]["w1"]["hessian"]),
                               np.asarray(linen_run[2]["block_1"]["w1"]["hessian"]), rtol=1e-5, atol=1e-5)


def test_block_not_fed_the_previous_output_needs_carry_false(batches):
    m = linen_encoder(twice=True)  # blocks are fed h * 2
    compress, seen, _ = recorder()
    with pytest.raises(ValueError, match=r"'block_1' does not take block 'block_0'.*carry=False"):
        engine.sequential(m, batches, compress, ("hessian",), blocks=r"block_\d+", token_mask=MASK)
    assert seen == []
    out = engine.sequential(m, batches, compress, ("hessian",), blocks=r"block_\d+", token_mask=MASK, carry=False)
    assert [n for n, _ in seen] == ["block_0", "block_1"]
    np.testing.assert_array_equal(np.asarray(out["block_1"]["w1"]), 0.5 * np.asarray(m.params["block_1"]["w1"]))


@pytest.mark.parametrize("carry", [True, False])
def test_spilled_inputs_are_bit_identical_and_cleaned_up(linen_model, linen_run, linen_run_recorded, batches,
                                                         carry):
    before = _temp_dirs()
    during = []
    compress, _, _ = recorder()

    def watch(name, p, st):
        during.append(_temp_dirs() - before)
        return compress(name, p, st)

    out = engine.sequential(linen_model, batches, watch, ("hessian", "absmax"), blocks=r"block_\d+",
                            token_mask=MASK, carry=carry, max_carry_bytes=0)
    assert all(len(d) == 1 for d in during)  # the inputs really were on disk
    assert _temp_dirs() == before
    ref = (linen_run if carry else linen_run_recorded)[0]
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), out, ref)


def test_spill_directory_removed_on_error(linen_model, batches):
    before = _temp_dirs()

    def fail(name, p, st):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        engine.sequential(linen_model, batches, fail, ("hessian",), blocks=r"block_\d+", max_carry_bytes=0)
    assert _temp_dirs() == before


def test_blocks_none_is_one_call_with_full_paths(linen_model, linen_run, whole_run):
    out, seen, stats = whole_run
    assert seen == [("", sorted(LINEN_WEIGHTS))]
    for path in BLOCK_WEIGHTS:  # block_0's inputs do not depend on any compression
        for k in ("hessian", "absmax"):
            np.testing.assert_allclose(np.asarray(stats[""][f"block_0/{path}"][k]),
                                       np.asarray(linen_run[2]["block_0"][path][k]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out["head"]["kernel"]),
                                  0.5 * np.asarray(linen_model.params["head"]["kernel"]))
    np.testing.assert_array_equal(np.asarray(out["block_1"]["w1"]),
                                  0.5 * np.asarray(linen_model.params["block_1"]["w1"]))


def test_where_and_per_path_stats_are_relative_to_the_block(linen_model, batches):
    compress, seen, stats = recorder()
    engine.sequential(linen_model, batches, compress, {"block_0/w1": ("absmax",), "block_1/q/kernel": ("sqnorm",)},
                      blocks=r"block_\d+", where=lambda p: not p.endswith("w2"))
    assert seen == [("block_0", ["w1"]), ("block_1", ["q/kernel"])]
    assert list(stats["block_1"]["q/kernel"]) == ["sqnorm"]
    assert jnp.shape(stats["block_0"]["w1"]["absmax"]) == (16,)
