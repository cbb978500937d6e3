"""The runner's loops on a model with BatchNorm: model state threaded, checkpointed and resumed."""

from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcompress import train
from jaxcompress.distillation import DistillState
from jaxcompress.model import from_linen
from jaxcompress.runner import checkpoint, train_loop
from jaxcompress.transform import identity


class BNNet(nn.Module):
    width: int = 8

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.5)(nn.Dense(self.width)(x)))
        return nn.Dense(3)(nn.Dropout(0.2, deterministic=not train)(x))


def _model(width=8, seed=0):
    mod = BNNet(width)
    return from_linen(mod, mod.init(jax.random.key(seed), jnp.zeros((1, 6))))


def _ds(n=48):
    r = np.random.default_rng(0)
    x = r.normal(size=(n, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0).astype(np.int32)
    return SimpleNamespace(x_train=x, y_train=y, x_test=x[:16], y_test=y[:16])


def _job(teacher=None, steps=6):
    hp = {"lr": 1e-2} if teacher is None else {"lr": 1e-2, "temperature": 2.0, "alpha": 0.5}
    return train_loop.Job(_model(), lambda hp: identity(), hp, steps, 8, 0, teacher, (6,))


def _leaves_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_train_state_with_batch_stats_checkpoint_roundtrip(tmp_path):
    m = _model()
    st = train.create_train_state(m, optax.adam(1e-3), seed=1)
    st = st._replace(model_state=jax.tree.map(lambda a: a + 1.5, st.model_state))
    ck = checkpoint.Checkpointer(str(tmp_path / "ck"), keep=1, use_async=False)
    ck.save(3, st)
    step, back = ck.restore_latest(train.create_train_state(m, optax.adam(1e-3), seed=1))
    ck.close()
    assert step == 3 and sorted(back.model_state) == ["batch_stats"]
    _leaves_equal(back, st)


def test_training_stage_resumes_with_its_batch_stats(tmp_path):
    ds, d = _ds(), str(tmp_path / "stage")
    job = _job()
    ref, info = train_loop.run(job, ds, d, checkpoint_every=3, log_every=3, progress=False, key="k")
    assert info["resumed_from"] == 0
    init = jax.device_get(job.model.state)
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(ref.model_state))]
    assert moved and all(moved)  # the running statistics trained
    # the second run finds the step-3 checkpoint (params, optimizer, rng and batch_stats) and redoes 4..6
    again, info2 = train_loop.run(job, ds, d, checkpoint_every=3, log_every=3, progress=False, key="k")
    assert info2["resumed_from"] == 3
    _leaves_equal(again, ref)
    ev = train_loop.evaluate(job.model, ref.params, ds.x_test, ds.y_test, ref.model_state)
    assert 0.0 <= ev["accuracy"] <= 1.0


def test_distill_job_threads_student_state_and_keeps_teacher_state():
    ds = _ds()
    teacher = _model(16, seed=3)
    t_state = jax.device_get(teacher.state)
    job = _job(teacher=teacher, steps=4)
    (st, info), = train_loop.run_vectorized([job], ds)
    assert isinstance(st, DistillState) and sorted(st.model_state) == ["batch_stats"]
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(job.model.state), jax.tree.leaves(st.model_state)))
    _leaves_equal(teacher.state, t_state)
    assert np.isfinite(info["final_train_loss"])
