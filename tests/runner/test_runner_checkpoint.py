"""Checkpoints: exact round trip of a TrainState (typed PRNG key included), fallback on corruption."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcompress import models, train
from jaxcompress.runner import checkpoint


def _state():
    m = models.create("mlp", (8,), 3, rng=0, features=(4,))
    return train.create_train_state(m.params, optax.adam(1e-3), seed=3)


def _equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_train_state_roundtrip_is_exact(tmp_path):
    st = _state()
    st = st._replace(step=jnp.int32(7), rng=jax.random.split(st.rng)[0])
    ck = checkpoint.Checkpointer(str(tmp_path / "ck"), keep=2)
    ck.save(7, st, {"accuracy": 0.5})
    ck.wait()
    step, back = ck.restore_latest(_state())
    ck.close()
    assert step == 7
    _equal(back, st)
    assert jax.random.key_impl(back.rng) == jax.random.key_impl(st.rng)


def test_keeps_latest_and_best(tmp_path):
    ck = checkpoint.Checkpointer(str(tmp_path / "ck"), keep=2, use_async=False)
    for s, acc in [(1, 0.9), (2, 0.1), (3, 0.2), (4, 0.3)]:
        ck.save(s, {"w": jnp.full(2, float(s))}, {"accuracy": acc})
    ck.wait()
    assert ck.all_steps() == [1, 3, 4]  # best (step 1) + latest two
    ck.close()


def test_corrupted_latest_falls_back_with_warning(tmp_path):
    d = str(tmp_path / "ck")
    ck = checkpoint.Checkpointer(d, keep=3, use_async=False)
    for s in (1, 2):
        ck.save(s, {"w": jnp.full(3, float(s))})
    ck.close()
    for root, _, files in os.walk(os.path.join(d, "2")):  # truncate every file of the latest step
        for f in files:
            open(os.path.join(root, f), "wb").close()
    ck = checkpoint.Checkpointer(d, keep=3, use_async=False)
    with pytest.warns(RuntimeWarning, match="checkpoint step 2 .* unreadable"):
        step, tree = ck.restore_latest({"w": jnp.zeros(3)})
    ck.close()
    assert step == 1 and tree["w"].tolist() == [1.0, 1.0, 1.0]


def test_structure_mismatch_is_not_restored(tmp_path):
    ck = checkpoint.Checkpointer(str(tmp_path / "ck"), keep=1, use_async=False)
    ck.save(1, {"w": jnp.zeros(3)})
    with pytest.warns(RuntimeWarning):
        assert ck.restore_latest({"w": jnp.zeros(4)}) is None
    ck.close()


def test_atomic_write_leaves_no_temp_files(tmp_path):
    p = str(tmp_path / "r.json")
    checkpoint.atomic_write_json(p, {"a": 1})
    checkpoint.atomic_write_json(p, {"a": 2})
    assert checkpoint.read_json(p) == {"a": 2}
    assert os.listdir(tmp_path) == ["r.json"]


def test_metrics_log_drops_half_line_left_by_a_kill(tmp_path):
    from jaxcompress.runner.metrics_log import MetricsLogger, read_jsonl

    with MetricsLogger(str(tmp_path), "s", 4, progress=False, tensorboard=False) as log:
        log.write(1, {"loss": 1.0})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"stage": "s", "step": 2, "lo')  # killed mid-write
    assert [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))] == [1]
    with MetricsLogger(str(tmp_path), "s", 4, start_step=1, progress=False, tensorboard=False) as log:
        log.write(2, {"loss": 0.5})
    assert [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))] == [1, 2]
