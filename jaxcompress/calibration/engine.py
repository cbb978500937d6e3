"""The sequential driver: compress a model block by block, each block calibrated on the compressed prefix.

:func:`sequential` finds the blocks (a regex over module paths, matched in full: ``r"layer_\\d+"``,
``r"blocks/\\d+"``; or ``blocks=None``: the whole model is one block), records the inputs of the
first block on every calibration batch, and then for block ``l``:

1. collects the statistics of every weight op inside the block (:mod:`.capture`) on its inputs;
2. ``compress(name, block_params, stats)`` returns the block's new params;
3. runs the *compressed* block on its inputs: its outputs are the inputs of block ``l + 1``.

So the inputs of block ``l`` come from the model whose blocks ``< l`` are already compressed and
are carried forward (one block forward per block, never a rerun of the prefix). The carried
inputs are kept in memory up to ``max_carry_bytes`` and spilled to a temporary directory beyond,
so memory does not grow with the number of calibration batches.

Everything runs compiled: the inputs are recorded by a jitted forward that stops at the block,
and the statistics and forward of a block are jitted programs shared by every block that is an
equal module called alike (identical layers compile once; a linen block is run as an unnamed
clone, so its code should not depend on its own name).

Carrying forward assumes what transformer stacks do: block ``l + 1`` receives block ``l``'s output
as its first argument and the same other arguments as block 0 (attention mask, flags). This is
checked on the first batch against the real forward pass; a model that does otherwise gets a
``ValueError`` naming the block (pass ``carry=False``: each block's inputs are then recorded by
running the model with the compressed prefix).

Blocks are ``__call__`` s of linen submodules (``nn.intercept_methods``) or NNX submodules; a
:func:`~jaxcompress.model.from_apply` model has no modules, so only ``blocks=None`` applies.
Weights outside every block (embeddings, a final head) are left as they are.

>>> import jax, jax.numpy as jnp, flax.linen as nn
>>> from jaxcompress.model import from_linen
>>> class Block(nn.Module):
...     @nn.compact
...     def __call__(self, x):
...         return x + nn.tanh(nn.Dense(4)(x))
>>> class Net(nn.Module):
...     @nn.compact
...     def __call__(self, x):
...         for i in range(3):
...             x = Block(name=f"layer_{i}")(x)
...         return x
>>> net = Net(); x = jnp.ones((2, 4))
>>> m = from_linen(net, net.init(jax.random.key(0), x))
>>> seen = []
>>> def compress(name, p, stats):
...     seen.append((name, sorted(stats)))
...     return jax.tree.map(lambda w: w * 0.5, p)
>>> out = sequential(m, [x], compress, ("hessian",), blocks=r"layer_\\d+")
>>> seen
[('layer_0', ['Dense_0/kernel']), ('layer_1', ['Dense_0/kernel']), ('layer_2', ['Dense_0/kernel'])]
>>> bool(jnp.all(out["layer_2"]["Dense_0"]["kernel"] == m.params["layer_2"]["Dense_0"]["kernel"] * 0.5))
True
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import numpy as np
from flax import nnx

from jaxcompress import tree as jtree
from jaxcompress.calibration import capture
from jaxcompress.model import Model, as_model


class _Stop(Exception):
    pass


# ----------------------------------------------------------------------------- params subtrees


def _keystr(keys) -> str:
    return "/".join(str(k) for k in keys)


def subtree(params, keys: tuple):
    """The params of the module at ``keys`` (a linen dict or an ``nnx.State``)."""
    node = params
    for k in keys:
        node = node[k]
    return node


def replace_subtree(params, keys: tuple, sub):
    """``params`` with the subtree at ``keys`` replaced by ``sub`` (same structure)."""
    prefix = _keystr(keys) + "/"
    new = iter(jax.tree_util.tree_leaves(sub))
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    leaves = [next(new) if (jtree.path_str(p) + "/").startswith(prefix) else x for p, x in flat]
    return jax.tree_util.tree_unflatten(treedef, leaves)


# ----------------------------------------------------------------------------- arguments


class _Call(NamedTuple):
    """How a block is called, less its arrays: the ``(args, kwargs)`` structure and its static leaves.

    Hashable when the static leaves are, so that blocks called alike share compiled programs.
    """

    treedef: object
    is_array: tuple
    static: tuple  # the non-array leaves (None where an array goes)

    def rebuild(self, arrays):
        """``(args, kwargs)`` with ``arrays`` in the array leaves."""
        it = iter(arrays)
        return jax.tree_util.tree_unflatten(self.treedef, [next(it) if a else s for a, s in zip(self.is_array,
                                                                                                self.static)])


def _split_args(args, kwargs) -> tuple[list, _Call]:
    """Array leaves (traced / stored) of ``(args, kwargs)`` and the :class:`_Call` rebuilding them."""
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    is_arr = tuple(isinstance(x, (jax.Array, np.ndarray)) for x in leaves)
    static = tuple(None if a else x for x, a in zip(leaves, is_arr))
    return [x for x, a in zip(leaves, is_arr) if a], _Call(treedef, is_arr, static)


# ----------------------------------------------------------------------------- linen / NNX blocks


def _match(pattern: str, paths: list[str], what: str) -> list[str]:
    rx = re.compile(pattern)
    hits = [p for p in paths if rx.fullmatch(p)]
    outer = [p for p in hits if not any(p != q and p.startswith(q + "/") for q in hits)]
    if not outer:
        raise ValueError(f"blocks={pattern!r} matches no module path of the {what}; its module paths: "
                         f"{paths[:60]}{' ...' if len(paths) > 60 else ''}")
    return outer


class _Linen:
    def __init__(self, model: Model):
        self.model = model

    def calls(self, inputs) -> list[str]:
        order: list[str] = []

        def icpt(next_fun, args, kwargs, ctx):
            if ctx.method_name == "__call__" and ctx.module.path:
                order.append(_keystr(ctx.module.path))
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(icpt):
            # a fresh function: eval_shape caches traces by function, and the interceptor must run
            jax.eval_shape(lambda p, x: self.model.apply_fn(p, x), self.model.params, inputs)
        return order

    def capture(self, params, inputs, names: list[str], stop: str | None):
        """``{name: (arrays, call, module, keys)}`` of the blocks' inputs in one forward (up to ``stop``)."""
        rec: dict = {}

        def icpt(next_fun, args, kwargs, ctx):
            name = _keystr(ctx.module.path)
            if ctx.method_name == "__call__" and name in names and name not in rec:
                arrays, call = _split_args(args, kwargs)
                # unnamed: identical layers are equal modules (and share programs)
                rec[name] = (arrays, call, ctx.module.clone(parent=None, name=None), tuple(ctx.module.path))
                if name == stop:
                    raise _Stop
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(icpt):
            try:
                self.model.apply_fn(params, inputs)
            except _Stop:
                pass
        return rec

    def block(self, module, keys):
        """``(key, fn, state)``: ``fn(block_params, state, (args, kwargs))`` runs the block alone; blocks
        with equal (hashable) keys run the same computation."""
        state = {c: subtree(v, keys) for c, v in self.model.state.items() if _has(v, keys)}

        def fn(bparams, state, args_kwargs):
            args, kwargs = args_kwargs
            return module.apply({"params": bparams, **state}, *args, **kwargs)

        return module, fn, state


def _has(tree, keys) -> bool:
    try:
        subtree(tree, keys)
        return True
    except (KeyError, TypeError, IndexError):
        return False


class _Nnx:
    def __init__(self, model: Model):
        self.model = model
        self.subs = {_keystr(p): (p, s) for p, s in nnx.iter_modules(model.module) if p}

    def _hooked(self, names, on_call):
        """A copy of the module whose submodules ``names`` call ``on_call(name, module, args, kwargs)`` first."""
        from jaxcompress.model import from_nnx

        copy = nnx.merge(*nnx.split(self.model.module))
        for p, s in nnx.iter_modules(copy):
            name = _keystr(p)
            if p and name in names:
                base = type(s)

                def call(self_, *args, _n=name, _b=base, **kwargs):
                    on_call(_n, self_, args, kwargs)
                    return _b.__call__(self_, *args, **kwargs)

                s.__class__ = type(base.__name__, (base,), {"__call__": call})
        return from_nnx(copy)

    def calls(self, inputs) -> list[str]:
        order: list[str] = []
        hooked = self._hooked(set(self.subs), lambda n, m, a, k: order.append(n))
        jax.eval_shape(lambda p, x: hooked.forward(p, self.model.state, x, train=False)[0], self.model.params, inputs)
        return order

    def capture(self, params, inputs, names, stop):
        rec: dict = {}

        def on_call(name, mod, args, kwargs):
            if name not in rec:
                arrays, call = _split_args(args, kwargs)
                rec[name] = (arrays, call, None, self.subs[name][0])
                if name == stop:
                    raise _Stop

        hooked = self._hooked(set(names), on_call)
        try:
            hooked.forward(params, self.model.state, inputs, train=False)
        except _Stop:
            pass
        return rec

    def block(self, module, keys):
        """As :meth:`_Linen.block`; the key is the block's graph definition."""
        sub = self.subs[_keystr(keys)][1]
        graphdef, _, state = nnx.split(sub, nnx.Param, ...)

        def fn(bparams, state, args_kwargs):
            args, kwargs = args_kwargs
            m = nnx.merge(graphdef, bparams, state)
            m.eval()
            return m(*args, **kwargs)

        return graphdef, fn, state


def _backend(model: Model, who: str):
    if isinstance(model.module, nn.Module):
        return _Linen(model)
    if isinstance(model.module, nnx.Module):
        return _Nnx(model)
    raise ValueError(f"{who}: blocks need a linen or NNX module (jaxcompress.model.from_linen / from_nnx); "
                     f"this model has none (from_apply): pass blocks=None to calibrate it as one block")


def find_blocks(model, inputs, blocks: str) -> list[str]:
    """The module paths ``blocks`` (a regex, matched in full) selects, outermost matches, in call order.

    Raises:
      ValueError: the regex matches no module path (the message lists them), or a block is
        called more than once per forward (a shared block cannot be compressed in sequence).
    """
    model = as_model(model)
    calls = _backend(model, "find_blocks").calls(inputs)
    uniq = list(dict.fromkeys(calls))
    names = _match(blocks, uniq, type(model.module).__name__)
    for n in names:
        if calls.count(n) > 1:
            raise ValueError(f"block {n!r} is called {calls.count(n)} times per forward; blocks compressed in "
                             f"sequence must run once (pick other blocks, or blocks=None)")
    return names


# ----------------------------------------------------------------------------- carried inputs


class _Store:
    """Per-batch block inputs: in memory up to ``max_bytes``, then ``.npy`` files in a temporary directory."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.used, self.items, self.dir, self.saved = max_bytes, 0, [], None, 0

    def put(self, i: int, arrays: list):
        arrays = [np.asarray(a) for a in arrays]
        size = sum(a.nbytes for a in arrays)
        if self.used + size <= self.max_bytes:
            self.used += size
            item = arrays
        else:
            if self.dir is None:
                self.dir = tempfile.mkdtemp(prefix="jaxcompress-calib-")
            item = []
            for j, a in enumerate(arrays):  # a fresh name per put: the item replaced below is removed
                f = os.path.join(self.dir, f"{i}_{j}_{self.saved}.npy")
                np.save(f, a)
                item.append(f)
            self.saved += 1
        if i < len(self.items):
            old = self.items[i]
            self.used -= sum(a.nbytes for a in old if isinstance(a, np.ndarray))
            for f in old:
                if isinstance(f, str):
                    os.remove(f)
            self.items[i] = item
        else:
            self.items.append(item)

    def get(self, i: int) -> list:
        return [np.load(a) if isinstance(a, str) else a for a in self.items[i]]

    def close(self):
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


def _close(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-4, atol=1e-5))


# ----------------------------------------------------------------------------- the driver


class _Block(NamedTuple):
    """A block as the driver runs it: ``fn(block_params, state, (args, kwargs))`` (see ``_Linen.block``)."""

    keys: tuple
    call: _Call
    key: object
    fn: Callable
    state: object

    def run_program(self):
        """Jitted ``(block_params, state, arrays) -> output``."""
        return jax.jit(lambda p, state, arrays: self.fn(p, state, self.call.rebuild(arrays)))

    def statistics_program(self, observe: tuple):
        """Jitted ``(block_params, (arrays, mask, state)) -> {path: {stat: partial}}`` of the weights in ``observe``."""
        return jax.jit(capture.statistics_fn(lambda p, inp: self.fn(p, inp[2], self.call.rebuild(inp[0])),
                                             dict(observe), token_mask=lambda inp: inp[1]))


def sequential(model, batches: Sequence, compress: Callable, stats, *, blocks: str | None = None,
               token_mask: Callable | None = None, where: Callable | None = None, carry: bool = True,
               max_carry_bytes: int = 64 << 20, log: Callable[[str], None] | None = None):
    """Compress ``model`` block by block; returns the new params (same structure as ``model.params``).

    Args:
      model: a :class:`~jaxcompress.model.Model` (linen or NNX; with ``blocks=None`` any form).
      batches: calibration inputs (one structure and shape).
      compress: ``compress(name, block_params, stats) -> block_params``: ``stats`` is
        ``{path: {stat: value}}`` with paths relative to the block (:func:`.capture.collect`).
      stats: the statistics every weight needs (``capture.STATS`` names) or ``{path: names}``
        (paths relative to the block).
      blocks: a regex over module paths (full match), or ``None``: the whole model, one block.
      token_mask: ``token_mask(model_inputs) -> mask`` (e.g. the attention mask): rows of
        activations whose leading dims are the mask's are kept where it is non-zero.
      where: ``where(path) -> bool`` over full param paths: which weights are calibrated.
      carry: carry block outputs forward (see the module docstring); ``False`` records each
        block's inputs by running the model with the compressed prefix.
      max_carry_bytes: carried inputs beyond this many bytes are spilled to a temporary directory.
      log: optional progress callback.
    """
    model = as_model(model)
    batches = capture.check_batches(batches)
    if blocks is None:
        st = capture.collect(model.apply_fn, model.params, batches, stats, token_mask=token_mask, where=where)
        return compress("", model.params, st)
    backend = _backend(model, "sequential")
    names = find_blocks(model, batches[0], blocks)
    masks = [None if token_mask is None else token_mask(b) for b in batches]
    calls: dict = {}  # name -> (call, module, keys) of every block the forward reached, noted while tracing

    def inputs(p, batch, upto):
        rec = backend.capture(p, batch, names, upto)
        calls.update({n: r[1:] for n, r in rec.items()})
        return {n: r[0] for n, r in rec.items()}

    record = jax.jit(inputs, static_argnums=2)  # the inputs of the blocks up to `upto` (the forward stops there)
    programs: dict = {}  # jitted block programs by (kind, block key, call[, observed weights]): see _shared

    def block(name) -> _Block:
        call, module, keys = calls[name]
        return _Block(keys, call, *backend.block(module, keys))

    def run(blk: _Block, bparams, arrays):
        """The block's output on its input ``arrays``."""
        return _shared(programs, ("run", blk.key, blk.call), blk.run_program)(bparams, blk.state, arrays)

    def run_float(name, arrays):
        blk = block(name)
        return run(blk, subtree(model.params, blk.keys), arrays)

    params = model.params
    store = _Store(max_carry_bytes)
    try:
        if carry:
            for i, b in enumerate(batches):
                store.put(i, record(params, b, names[0])[names[0]])
            _check_chain(names, record(params, batches[0], names[-1]), run_float)
        for li, name in enumerate(names):
            if not carry:
                for i, b in enumerate(batches):
                    store.put(i, record(params, b, name)[name])
            blk = block(name)
            bparams = subtree(params, blk.keys)
            observe = _observed(bparams, name + "/", stats, where)
            st = {}
            if observe:
                step = _shared(programs, ("statistics", blk.key, blk.call, observe),
                               lambda: blk.statistics_program(observe))
                st = capture.accumulate(step(bparams, (store.get(i), masks[i], blk.state)) for i in range(len(batches)))
            new = compress(name, bparams, st) if st else bparams
            params = replace_subtree(params, blk.keys, new)
            if log:
                log(f"  block {li + 1}/{len(names)} {name}: {len(st)} weights")
            if carry and li + 1 < len(names):
                for i in range(len(batches)):
                    arrays = store.get(i)
                    store.put(i, [run(blk, new, arrays), *arrays[1:]])
        return params
    finally:
        store.close()


def _shared(cache: dict, key, make: Callable):
    """``cache[key]``, made by ``make()`` the first time: identical blocks compile once.

    A key that is not hashable (a module attribute or call argument holding an array) gets a
    program of its own.
    """
    try:
        hash(key)
    except TypeError:
        return make()
    if key not in cache:
        cache[key] = make()
    return cache[key]


def _observed(bparams, prefix: str, stats, where) -> tuple:
    """``((path, stat names), ...)`` of the block's weights to observe (paths relative to the block)."""
    out = []
    for p in jtree.paths(bparams):
        kinds = stats.get(prefix + p, ()) if isinstance(stats, dict) else stats
        if kinds and (where is None or where(prefix + p)):
            out.append((p, tuple(kinds)))
    return tuple(out)


def _check_chain(names, inputs: dict, run: Callable):
    """Block ``l + 1``'s first input is block ``l``'s output and its other inputs are block 0's.

    ``inputs``: ``{name: arrays}`` of the float model on the first batch; ``run(name, arrays)``
    runs block ``name`` (float params).
    """
    arrays0 = inputs[names[0]]
    for a, b in zip(names, names[1:]):
        out = run(a, inputs[a])
        nxt = inputs[b]
        if not (isinstance(out, jax.Array) and nxt and _close(out, nxt[0])) or len(nxt) != len(arrays0) or not all(
                _close(x, y) for x, y in zip(nxt[1:], arrays0[1:])):
            raise ValueError(f"block {b!r} does not take block {a!r}'s output as its first argument and block "
                             f"{names[0]!r}'s other arguments, so its inputs cannot be carried forward; pass "
                             f"carry=False (each block's inputs are then recorded on the compressed prefix)")


__all__ = ["find_blocks", "sequential", "subtree", "replace_subtree"]
