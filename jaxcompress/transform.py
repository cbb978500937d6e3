"""The core type every compression method is written as: a :class:`Transform`.

In the spirit of optax's ``GradientTransformation``, a compression method is a
triple of pure functions over a params pytree (a linen ``params`` dict or an
``nnx.State``):

* ``init(params) -> state`` - masks, scales, observer statistics, counters ...
* ``apply(params, state) -> params`` - the weights the forward pass sees
  (``w * mask``, straight-through fake quantization, ...). Must be differentiable.
* ``update(params, state, ctx) -> (params, state)`` - called after every optimizer
  step with a :class:`Context`; re-masks on schedule, updates observers, and keeps
  the *stored* params consistent (e.g. pruned weights exactly zero).
* ``reset_opt_state(opt_state, old_state, new_state) -> opt_state`` - optional; lets
  a transform reset optimizer moments of weights it changed (RigL/SET regrowth).

``chain(t1, t2, ...)`` composes: ``apply`` runs ``t1`` then ``t2`` (prune then
quantize gives sparsity-preserving QAT), states are a tuple.

>>> import jax.numpy as jnp
>>> t = chain(identity(), identity())
>>> params = {"w": jnp.ones(2)}
>>> s = t.init(params)
>>> t.apply(params, s)["w"].tolist()
[1.0, 1.0]
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Params = Any
State = Any


class Context(NamedTuple):
    """What ``Transform.update`` sees after an optimizer step.

    Attributes:
      step: int32 scalar, the number of optimizer steps taken so far (after this one).
      grads: gradients of the loss w.r.t. the *stored* params at this step (or None).
      rng: a PRNG key for stochastic transforms (or None).
    """

    step: jax.Array
    grads: Params = None
    rng: jax.Array | None = None


def _no_reset(opt_state, old_state, new_state):
    del old_state, new_state
    return opt_state


class Transform(NamedTuple):
    """A compression method: ``init``, ``apply``, ``update`` (+ optional opt-state reset)."""

    init: Callable[[Params], State]
    apply: Callable[[Params, State], Params]
    update: Callable[[Params, State, Context], tuple[Params, State]]
    reset_opt_state: Callable[[Any, State, State], Any] = _no_reset


def identity() -> Transform:
    """The transform that changes nothing (the train step's default)."""
    return Transform(
        init=lambda params: (),
        apply=lambda params, state: params,
        update=lambda params, state, ctx: (params, state),
    )


def chain(*transforms: Transform) -> Transform:
    """Compose transforms: ``apply`` and ``update`` run left to right; state is a tuple.

    Args:
      *transforms: the transforms to compose.

    Returns:
      A :class:`Transform` whose state is ``tuple(t.init(params) for t in transforms)``.
    """

    def init(params):
        return tuple(t.init(params) for t in transforms)

    def apply(params, state):
        for t, s in zip(transforms, state):
            params = t.apply(params, s)
        return params

    def update(params, state, ctx):
        new_states = []
        for i, (t, s) in enumerate(zip(transforms, state)):
            rng = None if ctx.rng is None else jax.random.fold_in(ctx.rng, i)
            params, s = t.update(params, s, ctx._replace(rng=rng))
            new_states.append(s)
        return params, tuple(new_states)

    def reset_opt_state(opt_state, old_state, new_state):
        for t, o, n in zip(transforms, old_state, new_state):
            opt_state = t.reset_opt_state(opt_state, o, n)
        return opt_state

    return Transform(init, apply, update, reset_opt_state)


def finalize(params: Params, state: State, transform: Transform) -> Params:
    """The params a compressed model ships with: ``transform.apply`` without gradients."""
    return jax.lax.stop_gradient(transform.apply(params, state))


def zeros_like_selected(params: Params, selected: Params, dtype=jnp.float32) -> Params:
    """A tree with zero arrays where ``selected`` is True and ``None`` elsewhere."""
    return jax.tree.map(lambda x, s: jnp.zeros(x.shape, dtype) if s else None, params, selected)
