"""Dense training protocols of the standard tasks (shared/BENCHMARKS.md).

``PROTOCOLS[dataset]`` fixes optimizer, learning rate, batch size and steps, so the demo,
the benchmark scripts and the runner all train the same dense baselines.

>>> r = train_dense("digits", "mlp", seed=0, steps=50, features=(16,))
>>> sorted(r)
['accuracy', 'apply_fn', 'params', 'params_count', 'seconds']
"""

from __future__ import annotations

from typing import NamedTuple

import optax

from jaxcompress import data, models, train, tree


class Protocol(NamedTuple):
    learning_rate: float
    batch_size: int
    steps: int


PROTOCOLS = {
    "digits": Protocol(learning_rate=1e-3, batch_size=128, steps=3000),
    "mnist1d": Protocol(learning_rate=1e-2, batch_size=100, steps=6000),
}


def train_dense(dataset: str, model: str, seed: int = 0, steps: int | None = None, **model_kwargs) -> dict:
    """Train a zoo model on a built-in dataset with the task's dense protocol (Adam).

    Returns a dict with ``params``, ``apply_fn``, test ``accuracy``, ``params_count`` and
    training ``seconds``.
    """
    ds = data.load(dataset)
    proto = PROTOCOLS[dataset]
    m = models.create(model, ds.input_shape, ds.num_classes, rng=seed, **model_kwargs)
    state, info = train.fit(m.apply_fn, m.params, optax.adam(proto.learning_rate), ds.x_train, ds.y_train,
                            steps=steps or proto.steps, batch_size=proto.batch_size, seed=seed)
    ev = train.make_eval_fn(m.apply_fn)(state.params, state.tstate, ds.x_test, ds.y_test)
    return {"params": state.params, "apply_fn": m.apply_fn, "accuracy": ev["accuracy"],
            "params_count": tree.count_params(m.params), "seconds": info["seconds"]}
