"""Pruning schedules: when masks are recomputed and the sparsity at each step.

A :class:`Schedule` holds its numbers as arrays (``params``) so they can live in the
transform state and be traced; ``sparsity(params, step, target)`` is the sparsity the
masks should have after ``step`` and ``due(params, step)`` says whether to re-mask.

* :func:`one_shot` - the full target at ``step``;
* :func:`iterative` - prune ``fraction`` of the remaining weights every ``every`` steps
  from ``begin`` until the target is reached;
* :func:`polynomial` - gradual magnitude pruning (Zhu & Gupta 2017):
  ``s_t = s_f + (s_i - s_f) * (1 - (t - begin) / (end - begin)) ** power`` every
  ``frequency`` steps in ``[begin, end]``, cubic by default.

>>> import jax.numpy as jnp
>>> s = polynomial(begin=0, end=100, frequency=10)
>>> round(float(s.sparsity(s.params, jnp.int32(50), 0.8)), 4)
0.7
>>> bool(s.due(s.params, jnp.int32(55)))
False
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax.numpy as jnp


class Schedule(NamedTuple):
    """``params`` (dict of arrays), ``sparsity(params, step, target)``, ``due(params, step)``."""

    params: dict[str, Any]
    sparsity: Callable[[dict, Any, Any], Any]
    due: Callable[[dict, Any], Any]


def _check_int(name, v, minimum=0):
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")


def one_shot(step: int = 0) -> Schedule:
    """Prune to the full target once, at ``step`` (0 = at initialisation)."""
    _check_int("step", step)

    def sparsity(p, t, target):
        return jnp.where(t >= p["step"], jnp.asarray(target, jnp.float32), jnp.float32(0))

    return Schedule({"step": jnp.int32(step)}, sparsity, lambda p, t: t == p["step"])


def iterative(fraction: float, every: int, begin: int = 0) -> Schedule:
    """Remove ``fraction`` of the remaining weights every ``every`` steps from ``begin``.

    After ``j`` rounds the density is ``(1 - fraction) ** j``, capped at the target.
    """
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    _check_int("every", every, 1)
    _check_int("begin", begin)

    def rounds(p, t):
        return jnp.where(t >= p["begin"], (t - p["begin"]) // p["every"] + 1, 0)

    def sparsity(p, t, target):
        r = rounds(p, t).astype(jnp.float32)
        s = 1.0 - (1.0 - p["fraction"]) ** r
        return jnp.minimum(s, jnp.asarray(target, jnp.float32))

    def due(p, t):
        return (t >= p["begin"]) & ((t - p["begin"]) % p["every"] == 0)

    return Schedule({"fraction": jnp.float32(fraction), "every": jnp.int32(every), "begin": jnp.int32(begin)},
                    sparsity, due)


def polynomial(begin: int, end: int, frequency: int = 100, power: float = 3.0,
               initial: float = 0.0) -> Schedule:
    """Gradual pruning (Zhu & Gupta 2017) from ``initial`` at ``begin`` to the target at ``end``.

    Args:
      begin: first pruning step.
      end: step at which the target is reached (``end >= begin``).
      frequency: re-mask every ``frequency`` steps (and at ``end``).
      power: 3 = cubic.
      initial: sparsity at ``begin``.
    """
    _check_int("begin", begin)
    _check_int("end", end, begin)
    _check_int("frequency", frequency, 1)
    if not 0.0 <= float(initial) < 1.0:
        raise ValueError(f"initial must be in [0, 1), got {initial!r}")

    def sparsity(p, t, target):
        span = jnp.maximum(p["end"] - p["begin"], 1).astype(jnp.float32)
        frac = jnp.clip((t - p["begin"]).astype(jnp.float32) / span, 0.0, 1.0)
        target = jnp.asarray(target, jnp.float32)
        s = target + (p["initial"] - target) * (1.0 - frac) ** p["power"]
        return jnp.where(t >= p["begin"], s, jnp.float32(0))

    def due(p, t):
        on_grid = (t - p["begin"]) % p["frequency"] == 0
        return (t >= p["begin"]) & (t <= p["end"]) & (on_grid | (t == p["end"]))

    return Schedule({"begin": jnp.int32(begin), "end": jnp.int32(end), "frequency": jnp.int32(frequency),
                     "power": jnp.float32(power), "initial": jnp.float32(initial)}, sparsity, due)


def every_step() -> Schedule:
    """Re-mask at every step at the full target (dynamic masks)."""
    return Schedule({}, lambda p, t, target: jnp.asarray(target, jnp.float32), lambda p, t: t >= 0)


def cosine_decay(initial: float, end: int) -> Callable[[Any], Any]:
    """``f(t) = initial / 2 * (1 + cos(pi * t / end))`` for ``t <= end``, 0 after (RigL drop fraction)."""

    def f(t):
        frac = jnp.clip(jnp.asarray(t, jnp.float32) / jnp.float32(max(end, 1)), 0.0, 1.0)
        return jnp.float32(initial) / 2.0 * (1.0 + jnp.cos(jnp.pi * frac))

    return f
