"""Deterministic, resumable batching and placement of batches on a device mesh.

The batch at global step ``s`` depends only on ``(seed, s)``: epoch ``e = s // steps_per_epoch``
is a permutation drawn from ``np.random.default_rng([seed, e])``, so a run resumed at step
``s`` sees exactly the batches an uninterrupted run would have.

>>> import numpy as np
>>> it = BatchIterator(np.arange(10.0)[:, None], np.arange(10), batch_size=4, seed=0)
>>> x, y = it.batch_at(0)
>>> x.shape
(4, 1)
>>> bool((BatchIterator(it.x, it.y, 4, seed=0, start_step=3).batch_at(3)[1] == it.batch_at(3)[1]).all())
True
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def num_examples(x) -> int:
    """The leading dimension shared by every array of the pytree ``x`` (``ValueError`` if they differ)."""
    sizes = {len(a) for a in jax.tree.leaves(x)}
    if len(sizes) != 1:
        raise ValueError(f"the arrays of a batch pytree must share their leading dimension, got sizes {sorted(sizes)}")
    return sizes.pop()


def take(x, idx):
    """``x[idx]`` on every array of the pytree ``x``."""
    return jax.tree.map(lambda a: a[idx], x)


def _check_positive(name: str, value) -> None:
    if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class BatchIterator:
    """Seeded per-epoch shuffling; drops the last incomplete batch of each epoch.

    Args:
      x, y: arrays (or pytrees of arrays, e.g. ``(ids, mask)``) with the same leading dimension.
      batch_size: examples per batch; must not exceed the number of examples.
      seed: shuffling seed.
      start_step: the global step of the first batch ``next()`` returns (for resume).
    """

    def __init__(self, x, y, batch_size: int, seed: int = 0, start_step: int = 0):
        _check_positive("batch_size", batch_size)
        n = num_examples(x)
        if n != num_examples(y):
            raise ValueError(f"x and y lengths differ: {n} vs {num_examples(y)}")
        if batch_size > n:
            raise ValueError(f"batch_size={batch_size} is larger than the dataset ({n} examples)")
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.step = int(start_step)
        self.num_examples = n
        self.steps_per_epoch = n // self.batch_size
        self._epoch, self._perm = None, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            self._epoch = epoch
        return self._perm

    def indices_at(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.steps_per_epoch)
        return self._permutation(epoch)[i * self.batch_size : (i + 1) * self.batch_size]

    def batch_at(self, step: int):
        """The ``(x, y)`` batch of global step ``step``."""
        idx = self.indices_at(step)
        return take(self.x, idx), take(self.y, idx)

    def __iter__(self):
        return self

    def __next__(self):
        batch = self.batch_at(self.step)
        self.step += 1
        return batch


def make_mesh(num_devices: int | None = None, axis: str = "data") -> Mesh:
    """A 1-D mesh over the first ``num_devices`` local devices (default: all)."""
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if n <= 0 or n > len(devices):
        raise ValueError(f"num_devices must be in [1, {len(devices)}], got {num_devices}")
    return Mesh(np.array(devices[:n]), (axis,))


def shard_batch(batch, mesh: Mesh, axis: str = "data"):
    """Place every array of ``batch`` on ``mesh`` with its leading (batch) axis sharded."""
    n = mesh.shape[axis]

    def put(a):
        if a.shape[0] % n:
            raise ValueError(f"batch size {a.shape[0]} is not divisible by the {n} devices of mesh axis {axis!r}")
        return jax.device_put(a, NamedSharding(mesh, P(axis)))

    return jax.tree.map(put, batch)


def replicate(tree, mesh: Mesh):
    """Place every array of ``tree`` on all devices of ``mesh`` (fully replicated)."""
    return jax.device_put(tree, NamedSharding(mesh, P()))
