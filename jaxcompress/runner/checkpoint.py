"""Checkpoints that survive ``kill -9``: orbax CheckpointManager plus atomic result files.

:class:`Checkpointer` saves any pytree (a ``TrainState``: params, optimizer state, transform
state, RNG key, step = data position) asynchronously, keeps the latest few and the best, and on
restore falls back to an older step with a warning when the latest one is corrupted or
truncated. Trees are stored as a flat ``{index: array}`` dict and rebuilt against a target of
the same structure, so linen dicts, ``nnx.State`` and typed PRNG keys all round-trip.

>>> import tempfile, numpy as np, jax.numpy as jnp
>>> d = tempfile.mkdtemp()
>>> ck = Checkpointer(d + "/ck", keep=2, use_async=False)
>>> ck.save(5, {"w": jnp.ones(2)}, {"accuracy": 0.5})
>>> step, tree = ck.restore_latest({"w": jnp.zeros(2)})
>>> step, tree["w"].tolist()
(5, [1.0, 1.0])
>>> ck.close()
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_flat(tree: Any) -> dict[str, np.ndarray]:
    """``tree`` as ``{"00000": np.ndarray, ...}`` (PRNG keys as their raw key data)."""
    leaves = jax.tree.leaves(tree)
    return {f"{i:05d}": np.asarray(jax.device_get(jax.random.key_data(x) if _is_key(x) else x))
            for i, x in enumerate(leaves)}


def from_flat(flat: dict[str, Any], target: Any) -> Any:
    """Rebuild a tree shaped like ``target`` from :func:`to_flat` output (checks shapes and dtypes)."""
    leaves, treedef = jax.tree.flatten(target)
    if len(flat) != len(leaves):
        raise ValueError(f"checkpoint has {len(flat)} arrays, the target has {len(leaves)}")
    out = []
    for i, t in enumerate(leaves):
        a = np.asarray(flat[f"{i:05d}"])
        if _is_key(t):
            want = jax.random.key_data(t)
            if a.shape != want.shape:
                raise ValueError(f"checkpoint leaf {i}: key data shape {a.shape} != {want.shape}")
            out.append(jax.random.wrap_key_data(a, impl=jax.random.key_impl(t)))
            continue
        t_shape, t_dtype = np.shape(t), np.asarray(t).dtype if not hasattr(t, "dtype") else t.dtype
        if a.shape != tuple(t_shape) or a.dtype != t_dtype:
            raise ValueError(f"checkpoint leaf {i}: {a.dtype}{a.shape} does not match the target {t_dtype}{tuple(t_shape)}")
        out.append(jax.numpy.asarray(a))
    return jax.tree.unflatten(treedef, out)


def _abstract(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat.items()}


class Checkpointer:
    """Async orbax checkpoints of one training stage: keep the latest ``keep`` and the best.

    Args:
      directory: where step directories go (created).
      keep: how many of the latest checkpoints to keep.
      best_metric: the metric whose maximum is always kept (pass it in ``save(metrics=)``).
      use_async: write in a background thread (the default); ``close()`` waits for it.
    """

    def __init__(self, directory: str, keep: int = 3, best_metric: str = "accuracy", use_async: bool = True):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = os.path.abspath(directory)
        policy = cm.AnyPreservationPolicy([
            cm.LatestN(n=keep),
            cm.BestN(get_metric_fn=lambda m: m[best_metric], n=1, keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=use_async,
                                               cleanup_tmp_directories=True, create=True)
        self._mngr = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def save(self, step: int, tree: Any, metrics: dict | None = None) -> None:
        """Start saving ``tree`` at ``step`` (returns once the arrays are copied to host)."""
        flat = to_flat(tree)
        self._mngr.save(int(step), args=ocp.args.StandardSave(flat),
                        metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()}, force=True)

    def restore_latest(self, target: Any) -> tuple[int, Any] | None:
        """``(step, tree)`` of the newest readable checkpoint, or None when there is none.

        A checkpoint that fails to read (corrupted, truncated, wrong structure) is skipped with a
        warning and the previous one is tried.
        """
        self._mngr.wait_until_finished()
        flat_target = to_flat(target)
        for step in reversed(self.all_steps()):
            try:
                flat = self._mngr.restore(step, args=ocp.args.StandardRestore(_abstract(flat_target)))
                return step, from_flat(flat, target)
            except Exception as e:  # noqa: BLE001 - any read failure means "try the previous one"
                warnings.warn(f"checkpoint step {step} in {self.directory} is unreadable "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                              "falling back to the previous one", RuntimeWarning, stacklevel=2)
        return None

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()


def save_tree(path: str, tree: Any) -> None:
    """Synchronously and atomically write ``tree`` to ``path`` (orbax; replaces an old one)."""
    ck = ocp.StandardCheckpointer()
    ck.save(os.path.abspath(path), to_flat(tree), force=True)
    ck.wait_until_finished()
    ck.close()


def load_tree(path: str, target: Any) -> Any:
    """Read a tree written by :func:`save_tree` into the structure of ``target``."""
    ck = ocp.StandardCheckpointer()
    try:
        flat = ck.restore(os.path.abspath(path), _abstract(to_flat(target)))
    finally:
        ck.close()
    return from_flat(flat, target)


def atomic_write(path: str, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same directory and ``os.replace``."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync and ``os.replace``."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)
