"""Dynamic sparse training at constant sparsity: SET and RigL as Transforms.

Every ``every`` steps (until ``end``), in each pruned leaf a fraction of the active
weights with the smallest magnitude is dropped and as many inactive ones are grown:
at random for SET (Mocanu et al. 2018), by largest gradient magnitude for RigL (Evci et
al. 2020). The drop fraction decays with a cosine. Counts are exact, so the sparsity of
every leaf stays constant. Grown weights start at zero and ``reset_opt_state`` zeroes
their optimizer moments (every opt-state subtree shaped like the params). RigL's
forward pass uses a straight-through mask so ``Context.grads`` is dense. Given ``layout=``
(:func:`jaxcompress.layout.trace`), the default selection is the layout's weight paths.

>>> import jax.numpy as jnp
>>> params = {"Dense_0": {"kernel": jnp.ones((4, 4)), "bias": jnp.zeros(4)}}
>>> t = set_(sparsity=0.75, every=10)
>>> state = t.init(params)
>>> int(state.masks["Dense_0"]["kernel"].sum()), state.masks["Dense_0"]["bias"] is None
(4, True)
>>> from jaxcompress.layout import WeightLayout
>>> params["Dense_1"] = {"kernel": jnp.ones((4, 4))}              # not a weight operand of the model
>>> lay = {"Dense_0/kernel": WeightLayout((0,), (1,), 0, "dot_general")}
>>> rigl(sparsity=0.5, layout=lay).init(params).masks["Dense_1"]["kernel"] is None
True
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcompress import layout as jlayout
from jaxcompress import tree
from jaxcompress.pruning import distributions
from jaxcompress.pruning import masks as M
from jaxcompress.pruning import select as SEL
from jaxcompress.pruning.schedules import cosine_decay
from jaxcompress.pruning.threshold import topk_masks_each
from jaxcompress.transform import Context, Transform


class DSTState(NamedTuple):
    masks: Any
    sparsity: jax.Array
    targets: dict
    step: jax.Array
    count: jax.Array  # number of drop/grow updates so far


def _check_opts(every, drop_fraction, end):
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an integer >= 1, got {every!r}")
    if not 0.0 < float(drop_fraction) < 1.0:
        raise ValueError(f"drop_fraction must be in (0, 1), got {drop_fraction!r}")
    if end is not None and (not isinstance(end, int) or end < 1):
        raise ValueError(f"end must be a positive integer or None, got {end!r}")


def _dst(grow: str, sparsity, every, drop_fraction, end, where, distribution, seed, layout) -> Transform:
    SEL.check_sparsity(sparsity)
    _check_opts(every, drop_fraction, end)
    decay = cosine_decay(drop_fraction, end or 10**9)

    def init(params):
        sel = jlayout.select(params, where, layout)
        shapes = {p: tuple(x.shape) for (p, x), (_, s) in zip(tree.named_leaves(params), tree.named_leaves(sel)) if s}
        targets = distributions.distribute(shapes, sparsity, distribution)
        key = jax.random.key(seed)
        names = list(shapes)
        rand = [jax.random.uniform(jax.random.fold_in(key, i), shapes[p]) for i, p in enumerate(names)]
        new = dict(zip(names, SEL.layerwise_masks(rand, [targets[p] for p in names])))
        masks = tree.map_with_path(lambda p, x: new.get(p), params)
        return DSTState(masks, jnp.float32(sparsity), targets, jnp.int32(0), jnp.int32(0))

    def apply(params, st):
        if grow == "gradient":  # value w * mask, gradient dense (needed to grow by |g|)
            return M.mask_map(lambda m, w: w if m is None else w - jax.lax.stop_gradient(w * (~m).astype(w.dtype)),
                              st.masks, params)
        return M.apply_masks(params, st.masks)

    def regrow(params, st, grads, rng, step):
        frac = decay(step)
        pv = dict(tree.named_leaves(params))
        gv = dict(tree.named_leaves(grads)) if grads is not None else None
        named = M.named_masks(st.masks)
        drop_sc, n_keep, n_drop = [], [], []
        for p, m in named:
            n_active = jnp.sum(m, dtype=jnp.int32)
            nd = jnp.round(frac * n_active.astype(jnp.float32)).astype(jnp.int32)
            drop_sc.append(jnp.where(m, jnp.abs(pv[p]).astype(jnp.float32), -jnp.inf))
            n_keep.append(n_active - nd)
            n_drop.append(nd)
        kept = topk_masks_each(drop_sc, jnp.stack(n_keep))
        grow_sc = []
        for i, ((p, m), kp) in enumerate(zip(named, kept)):
            if grow == "gradient":
                gs = jnp.abs(gv[p]).astype(jnp.float32)
            else:
                gs = jax.random.uniform(jax.random.fold_in(rng, i), m.shape)
            grow_sc.append(jnp.where(kp, -jnp.inf, gs))
        grown = topk_masks_each(grow_sc, jnp.stack(n_drop))
        new = {p: kp | gr for (p, _), kp, gr in zip(named, kept, grown)}
        return tree.map_with_path(lambda p, x: new.get(p), params)

    def update(params, st, ctx: Context):
        step = jnp.asarray(ctx.step, jnp.int32)
        if grow == "gradient" and ctx.grads is None:
            raise ValueError("RigL needs Context.grads")
        rng = ctx.rng if ctx.rng is not None else jax.random.key(seed)
        due = (step % every == 0) & (step > 0)
        if end is not None:
            due = due & (step <= end)
        new = jax.lax.cond(due, lambda: regrow(params, st, ctx.grads, rng, step), lambda: st.masks)
        # grown weights start at zero: keep only weights active before and after
        both = M.mask_map(lambda o, n: None if o is None else o & n, st.masks, new)
        params = M.apply_masks(params, both)
        return params, st._replace(masks=new, step=step, count=st.count + due.astype(jnp.int32))

    return Transform(init, apply, update, reset_grown)


def reset_grown(opt_state, old: DSTState, new: DSTState):
    """Zero optimizer entries (e.g. Adam mu/nu) of weights whose mask went False -> True.

    Every subtree of ``opt_state`` with the structure of the params is treated as a
    per-parameter statistic; other leaves (step counts ...) are left alone.
    """
    grown = M.mask_map(lambda o, n: None if o is None else n & ~o, old.masks, new.masks)
    target = jax.tree.structure(jax.tree.map(lambda m: 0, grown, is_leaf=M.is_none))

    def like_params(x):
        try:
            return x is not None and jax.tree.structure(x) == target
        except Exception:  # pragma: no cover - exotic nodes
            return False

    def fix(x):
        if not like_params(x):
            return x
        return M.mask_map(lambda g, v: v if g is None else jnp.where(g, jnp.zeros_like(v), v), grown, x)

    return jax.tree.map(fix, opt_state, is_leaf=like_params)


def rigl(sparsity=0.9, every: int = 100, drop_fraction: float = 0.3, end: int | None = None,
         where: tree.Selector = None, distribution="erk", seed: int = 0,
         layout: jlayout.Layout | None = None) -> Transform:
    """RigL: drop smallest ``|w|``, grow largest ``|g|`` every ``every`` steps until ``end``.

    Args:
      sparsity: constant total sparsity in ``[0, 1)``.
      every: update interval ``delta_T``.
      drop_fraction: initial fraction of active weights replaced (cosine-decayed to 0 at ``end``).
      end: last update step (default: never stop, no decay).
      where: selector (default kernels; with ``layout``, its weight paths); unselected leaves (bias) are dense.
      distribution: ``"erk"`` (the paper), ``"uniform"``, ``"first_last_dense"`` or a dict.
      seed: PRNG seed of the random initial masks.
      layout: ``{path: WeightLayout}`` from :func:`jaxcompress.layout.trace` (checked at ``init``).
    """
    return _dst("gradient", sparsity, every, drop_fraction, end, where, distribution, seed, layout)


def set_(sparsity=0.9, every: int = 100, drop_fraction: float = 0.3, end: int | None = None,
         where: tree.Selector = None, distribution="erk", seed: int = 0,
         layout: jlayout.Layout | None = None) -> Transform:
    """SET: drop smallest ``|w|``, grow at random; arguments as :func:`rigl`."""
    return _dst("random", sparsity, every, drop_fraction, end, where, distribution, seed, layout)
