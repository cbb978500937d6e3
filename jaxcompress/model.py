"""The model contract: how every step that trains, evaluates or calibrates sees a model.

A :class:`Model` is three things: trainable ``params``, the model's other ``state``
(linen ``batch_stats`` and other non-``params`` collections, NNX ``BatchStat`` and other
non-``Param`` variables; ``{}`` when there is none) and one pure function ::

    forward(params, state, inputs, *, train: bool, rng) -> (outputs, new_state)

* ``inputs`` is any pytree: an array ``x``, a tuple ``(ids, mask)`` (passed as positional
  arguments to the module), a dict (passed as keyword arguments);
* ``train=True`` runs the training mode (dropout on, BatchNorm batch statistics) and returns
  the updated ``state``; ``train=False`` is deterministic and returns ``state`` unchanged;
* ``rng`` is a fresh PRNG key per step (dropout); ``None`` in eval mode.

The optimizer only ever sees ``params``; a train step threads ``state`` through and returns
it. Build one with :func:`from_linen`, :func:`from_nnx`, or :func:`from_apply` (the old
``apply_fn(params, x) -> logits`` case); :func:`as_model` does whichever fits.

>>> import jax, jax.numpy as jnp, flax.linen as nn
>>> class Net(nn.Module):
...     @nn.compact
...     def __call__(self, x, train: bool = False):
...         x = nn.BatchNorm(use_running_average=not train)(nn.Dense(4)(x))
...         return nn.Dense(2)(nn.Dropout(0.5, deterministic=not train)(x))
>>> net = Net()
>>> m = from_linen(net, net.init(jax.random.key(0), jnp.zeros((1, 3))))
>>> sorted(m.params), sorted(m.state)
(['BatchNorm_0', 'Dense_0', 'Dense_1'], ['batch_stats'])
>>> y, new_state = m.forward(m.params, m.state, jnp.ones((8, 3)), train=True, rng=jax.random.key(1))
>>> y.shape, bool(jnp.any(new_state["batch_stats"]["BatchNorm_0"]["mean"] != 0))
((8, 2), True)
>>> m.apply_fn(m.params, jnp.ones((8, 3))).shape    # eval mode, the model's own state
(8, 2)
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import flax.errors
import flax.linen as nn
import jax
from flax import nnx

from jaxcompress import tree as jtree

Params = Any
Forward = Callable[..., tuple[Any, Any]]

#: keyword names recognised as a linen module's train/eval switch, and how ``train`` maps to them
_TRAIN_KWARGS = {"train": True, "training": True, "is_training": True, "deterministic": False,
                 "use_running_average": False}


def call_inputs(fn: Callable, inputs):
    """Call ``fn`` with ``inputs``: a tuple as positional arguments, a dict as keywords, else one argument."""
    if isinstance(inputs, tuple):
        return fn(*inputs)
    if isinstance(inputs, dict):
        return fn(**inputs)
    return fn(inputs)


class Model:
    """A model as pure pieces: ``forward``, trainable ``params``, other ``state``, the ``module``.

    Attributes:
      forward: ``forward(params, state, inputs, *, train, rng) -> (outputs, new_state)``.
      params: the trainable parameters (linen dict or ``nnx.State``).
      state: the non-trainable collections (``{}`` when the model has none).
      module: the linen / NNX module (or ``None``).
      rng_streams: names of the RNG streams the model draws from in train mode.
    """

    def __init__(self, forward: Forward, params: Params, state: Any = None, module: Any = None,
                 rng_streams: tuple[str, ...] = ()):
        self.forward = forward
        self.params = params
        self.state = {} if state is None else state
        self.module = module
        self.rng_streams = tuple(rng_streams)

        def apply_fn(params, inputs, state=None):
            """Eval-mode outputs (the model's own ``state`` unless given)."""
            return forward(params, self.state if state is None else state, inputs, train=False, rng=None)[0]

        self.apply_fn = apply_fn

    def replace(self, **kw) -> "Model":
        """A copy with some of ``forward``, ``params``, ``state``, ``module`` changed."""
        fields = dict(forward=self.forward, params=self.params, state=self.state, module=self.module,
                      rng_streams=self.rng_streams)
        fields.update(kw)
        return Model(**fields)

    def __repr__(self):
        kind = type(self.module).__name__ if self.module is not None else "function"
        return f"Model({kind}, state={list(self.state) if isinstance(self.state, dict) else type(self.state).__name__})"


def check_state(new_state, state, who: str = "the model") -> None:
    """Raise ``ValueError`` naming the collection(s) of ``state`` that ``new_state`` lacks (or any other mismatch)."""
    ta, tb = jax.tree.structure(state), jax.tree.structure(new_state)
    if ta != tb:
        old = set(state) if isinstance(state, dict) else set()
        new = set(new_state) if isinstance(new_state, dict) else set()
        missing = sorted(old - new)
        if missing:
            raise ValueError(f"{who}: the model did not return mutable collection(s) {missing} "
                             f"(it returned {sorted(new)})")
        raise ValueError(f"{who}: the state the model returned has a different structure from its input state")


def _linen_train_kwarg(module: nn.Module) -> str | None:
    try:
        sig = inspect.signature(type(module).__call__)
    except (TypeError, ValueError):
        return None
    for name in _TRAIN_KWARGS:
        if name in sig.parameters:
            return name
    return None


def from_linen(module: nn.Module, variables: dict, *, train_kwarg: str | None = "auto",
               mutable: tuple[str, ...] | None = None, rng_streams: tuple[str, ...] = ("dropout",),
               **apply_kwargs) -> Model:
    """Adapt a linen module and its ``variables`` (``module.init(...)``'s result) to a :class:`Model`.

    Args:
      module: the linen module.
      variables: ``{"params": ..., "batch_stats": ..., ...}``, or the ``params`` dict alone.
      train_kwarg: the ``__call__`` keyword that switches train/eval mode. ``"auto"`` takes the
        first of ``train``, ``training``, ``is_training`` (given ``train``) or ``deterministic``,
        ``use_running_average`` (given ``not train``) that ``__call__`` accepts; ``None`` passes none.
      mutable: the collections the model updates in train mode (default: every collection of
        ``variables`` other than ``params``).
      rng_streams: RNG stream names given a fresh key per step in train mode.
      **apply_kwargs: extra keyword arguments of every ``module.apply`` call.

    Raises:
      ValueError: a ``mutable`` collection that ``variables`` lacks, a ``train_kwarg`` that
        ``__call__`` does not take, or (at call time) a train-mode call without ``rng`` when the
        model draws random numbers.
    """
    if not isinstance(variables, dict) or "params" not in variables:
        variables = {"params": variables}
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    mutable = tuple(state) if mutable is None else tuple(mutable)
    missing = [c for c in mutable if c not in state]
    if missing:
        raise ValueError(f"mutable collection(s) {missing} are not in the model's variables {sorted(variables)}")
    if train_kwarg == "auto":
        train_kwarg = _linen_train_kwarg(module)
    elif train_kwarg is not None:
        sig = inspect.signature(type(module).__call__)
        if train_kwarg not in sig.parameters and not any(
                p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            raise ValueError(f"train_kwarg {train_kwarg!r} is not an argument of {type(module).__name__}.__call__ "
                             f"(arguments: {list(sig.parameters)[1:]})")
    polarity = _TRAIN_KWARGS.get(train_kwarg, True)

    def forward(params, state, inputs, *, train: bool = False, rng=None):
        kw = dict(apply_kwargs)
        if train_kwarg is not None:
            kw[train_kwarg] = train if polarity else not train
        if train and rng is not None:
            kw["rngs"] = {s: jax.random.fold_in(rng, i) for i, s in enumerate(rng_streams)}
        v = {"params": params, **state}
        try:
            if train and mutable:
                out, upd = call_inputs(lambda *a, **k: module.apply(v, *a, mutable=list(mutable), **k, **kw), inputs)
                return out, {**state, **upd}
            return call_inputs(lambda *a, **k: module.apply(v, *a, **k, **kw), inputs), state
        except flax.errors.InvalidRngError as e:
            raise ValueError(f"{type(module).__name__} needs an RNG stream in this mode but none was given "
                             f"(train={train}, rng={'None' if rng is None else 'a key'}, streams "
                             f"{list(rng_streams)}): {str(e).splitlines()[0]}") from None

    return Model(forward, params, state, module, rng_streams)


def _is_rng_key(x) -> bool:
    return isinstance(x, nnx.RngKey)


def _is_rng_state(x) -> bool:
    return isinstance(x, nnx.RngState)


def from_nnx(module: nnx.Module, *, trainable=nnx.Param) -> Model:
    """Adapt an NNX module to a :class:`Model` (``nnx.split`` into ``trainable`` and the rest).

    Train mode runs ``module.train()`` (dropout on, BatchNorm batch statistics and updates),
    eval mode ``module.eval()``. Every RNG stream the module holds is re-seeded from the step's
    ``rng`` in train mode (the state keeps its own keys, so eval stays deterministic).

    Args:
      module: the NNX module.
      trainable: the filter of the optimizer's variables (default ``nnx.Param``).
    """
    graphdef, params, state = nnx.split(module, trainable, ...)

    def forward(params, state, inputs, *, train: bool = False, rng=None):
        live = state
        if train:
            keys = [p for p, _ in jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_rng_key)[0]
                    if _is_rng_key(_)]
            if keys and rng is None:
                raise ValueError(f"{type(module).__name__} holds RNG stream(s) (state paths "
                                 f"{[jtree.path_str(k) for k in keys][:4]}) and train mode needs a fresh rng; "
                                 f"none was given")
            if keys:
                i = iter(range(len(keys)))
                live = jax.tree.map(
                    lambda v: v.replace(jax.random.fold_in(rng, next(i))) if _is_rng_key(v) else v,
                    state, is_leaf=_is_rng_key)
        m = nnx.merge(graphdef, params, live)
        m.train() if train else m.eval()
        out = call_inputs(m, inputs)
        if not train:
            return out, state
        _, _, new = nnx.split(m, trainable, ...)
        # RNG keys and counters are not carried: each step brings its own key
        new = jax.tree.map(lambda n, o: o if _is_rng_state(o) else n, new, state, is_leaf=_is_rng_state)
        check_state(new, state, type(module).__name__)
        return out, new

    return Model(forward, params, state, module)


def from_apply(apply_fn: Callable, params: Params, module: Any = None) -> Model:
    """The stateless case: ``apply_fn(params, inputs) -> outputs`` (no train mode, no RNG)."""

    def forward(params, state, inputs, *, train: bool = False, rng=None):
        del train, rng
        return apply_fn(params, inputs), state

    return Model(forward, params, {}, module)


def as_model(model, params: Params = None) -> Model:
    """``model`` itself if a :class:`Model`; an NNX module; a linen module with ``params``
    (its variables); or an ``apply_fn(params, x)`` with ``params`` (:func:`from_apply`)."""
    if isinstance(model, Model):
        return model
    if isinstance(model, nnx.Module):
        return from_nnx(model)
    if isinstance(model, nn.Module):
        if params is None:
            raise ValueError("a linen module needs its variables: as_model(module, variables)")
        return from_linen(model, params)
    if callable(model):
        return from_apply(model, params)
    raise ValueError(f"cannot make a Model from {type(model).__name__}; pass a Model, an NNX module, a linen "
                     f"module with its variables, or apply_fn(params, x)")

