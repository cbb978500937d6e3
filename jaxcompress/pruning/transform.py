"""The pruning :class:`~jaxcompress.transform.Transform`: masks in state, ``w * mask`` in apply.

``update`` runs after every optimizer step: when the schedule is due it recomputes the
masks (inside ``lax.cond``, so one compiled program serves all steps) and it always
stores ``params * mask``, so pruned weights are exactly zero after every step even with
Adam momentum, and what is exported has the real sparsity. The target sparsity, the
per-leaf targets and the schedule's numbers live in the state as arrays: runs that
differ only in them reuse one compilation.

>>> import jax.numpy as jnp
>>> params = {"Dense_0": {"kernel": jnp.arange(1.0, 9.0).reshape(2, 4), "bias": jnp.ones(4)}}
>>> t = magnitude(sparsity=0.75)
>>> state = t.init(params)
>>> t.apply(params, state)["Dense_0"]["kernel"].tolist()
[[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 7.0, 8.0]]

With ``layout=`` (:func:`jaxcompress.layout.trace`) the default selection is the model's
weight operands and every leaf's axes come from how the model uses it: 2:4 on a
``DenseGeneral`` kernel ``(in, heads, head_dim)`` groups along ``in``, structured pruning
removes ``(head, head_dim)`` output positions (and their bias entries).

>>> import jax, flax.linen as nn
>>> from jaxcompress import layout
>>> from jaxcompress.model import from_linen
>>> mod = nn.DenseGeneral((2, 4))
>>> m = from_linen(mod, mod.init(jax.random.key(0), jnp.zeros((1, 8))))
>>> lay = layout.trace(m, jnp.zeros((1, 8)))
>>> st = magnitude(nm=(2, 4), layout=lay).init(m.params)
>>> st.masks["kernel"].reshape(2, 4, 2, 4).sum(1).min().item(), st.masks["bias"] is None
(2, True)
>>> st = magnitude(0.5, structured=2, layout=lay).init(m.params)
>>> st.masks["bias"].sum().item(), bool((st.masks["kernel"] == st.masks["bias"][None]).all())
(4, True)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcompress import layout as jlayout
from jaxcompress import tree
from jaxcompress.pruning import distributions
from jaxcompress.pruning import masks as M
from jaxcompress.pruning import scores as S
from jaxcompress.pruning import select as SEL
from jaxcompress.pruning.schedules import Schedule, every_step, one_shot
from jaxcompress.transform import Context, Transform

SCORES = ("magnitude", "random", "saliency", "movement")


class PruneState(NamedTuple):
    """Masks (``None`` on untouched leaves), targets and counters.

    With ``ste=True`` the masks are recomputed from the weights in every ``apply`` and
    ``masks`` keeps the (all-True) initial masks.
    """

    masks: Any
    sparsity: jax.Array  # total target (float32)
    targets: dict  # {path: float32 per-leaf target}
    sched: dict  # the schedule's numbers
    step: jax.Array  # last step seen by update
    count: jax.Array  # number of mask recomputations
    acc: Any  # movement scores (None when unused)


def _bias_of(path: str) -> str:
    return path.rsplit("/", 1)[0] + "/bias" if "/" in path else "bias"


def _masks_from_dict(params, d):
    return tree.map_with_path(lambda p, x: d.get(p), params)


def _nm_axis(path: str, shape: tuple, axis: int | None, layout) -> int:
    """The (non-negative) axis N:M groups of leaf ``path`` run along; a ``ValueError`` naming it if none fits."""
    if axis is None:
        return jlayout.axes_of(path, shape, layout).group_axis
    nd = len(shape)
    if not -nd <= axis < nd:
        raise ValueError(f"N:M axis {axis} is out of range for parameter {path!r} of shape {shape}")
    if layout is not None and path in layout and axis % nd in layout[path].outputs:
        wl = layout[path]
        raise ValueError(f"N:M axis {axis} is an output axis of {path!r} (shape {shape}; inputs {wl.inputs}, "
                         f"outputs {wl.outputs}): N:M groups run along an input axis, e.g. {wl.group_axis}")
    return axis % nd


def _leaf_scores(score, params, masks, grads, acc, rng):
    """``{path: score}`` for masked leaves; pruned entries get -inf (pruned stay pruned)."""
    named = dict(M.named_masks(masks))
    pv = dict(tree.named_leaves(params))
    if score == "magnitude":
        raw = {p: jnp.abs(pv[p]).astype(jnp.float32) for p in named}
    elif score == "random":
        raw = {p: jax.random.uniform(jax.random.fold_in(rng, i), pv[p].shape) for i, p in enumerate(named)}
    elif score == "saliency":
        if grads is None:
            raise ValueError("saliency pruning needs Context.grads")
        gv = dict(tree.named_leaves(grads))
        raw = {p: jnp.abs(pv[p] * gv[p]).astype(jnp.float32) for p in named}
    else:
        raw = dict(M.named_masks(acc))
    return {p: jnp.where(named[p], raw[p], -jnp.inf) for p in named}


def prune(score: str = "magnitude", sparsity=0.5, schedule: Schedule | None = None, where: tree.Selector = None,
          distribution="uniform", overrides: dict | None = None, scope: str = "layer",
          nm: tuple | None = None, structured: int | None = None, ste: bool = False, seed: int = 0,
          normalize: bool = False, layout: jlayout.Layout | None = None) -> Transform:
    """Build a pruning transform.

    Args:
      score: ``"magnitude"``, ``"random"``, ``"saliency"`` (``|w * g|``) or ``"movement"``
        (accumulated ``-w * g``).
      sparsity: total target in ``[0, 1)`` (stored as a traced array in the state).
      schedule: when to re-mask (default: :func:`one_shot` at step 0, i.e. at ``init``).
      where: selector of the pruned leaves (default: kernels; with ``layout``, its weight paths).
      distribution: ``"uniform"``, ``"erk"``, ``"first_last_dense"`` or ``{regex: sparsity}``.
      overrides: ``{regex: sparsity}`` applied on top of the distribution.
      scope: ``"layer"`` (a cut per leaf) or ``"global"`` (one cut over all leaves).
      nm: ``(n, m)`` for N:M masks along each leaf's input axis (the layout's ``group_axis``;
        without a layout axis 0 of a 2-D ``(in, out)`` kernel), or ``(n, m, axis)`` with an
        explicit axis (with a layout it must not be one of the leaf's output axes); the sparsity
        is then ``1 - n/m``, applied when the schedule is due.
      structured: 1 or 2 - remove whole output positions (over all output axes: Dense columns,
        conv filters, DenseGeneral ``(head, head_dim)`` positions) by their L1 or L2 norm over
        the input axes; a sibling ``bias`` shaped like the outputs is masked with its unit.
      ste: recompute the mask in every forward pass from the dense weights, with a
        straight-through gradient (weights are not zeroed in storage).
      seed: PRNG seed for ``score="random"`` at ``init``.
      normalize: with ``scope="global"``, divide each leaf's scores by their L2 norm
        first (as jaxpruner's global pruning does), so no layer is wiped out wholesale.
      layout: ``{path: WeightLayout}`` from :func:`jaxcompress.layout.trace`: the default
        selection and the input / output axes of every leaf (checked against the params at
        ``init``). Without it, N:M and structured pruning of an ``ndim >= 3`` kernel raise.

    Returns:
      A :class:`~jaxcompress.transform.Transform` with :class:`PruneState`.

    Raises:
      ValueError: bad arguments here; at ``init`` a layout path missing from the params, or a
        leaf (named) whose axes N:M / structured pruning cannot use.
    """
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; valid: {list(SCORES)}")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    SEL.check_sparsity(sparsity)
    if nm is not None:
        if len(nm) not in (2, 3):
            raise ValueError(f"nm must be (n, m) or (n, m, axis), got {nm!r}")
        n, m = nm[0], nm[1]
        nm_axis = nm[2] if len(nm) == 3 else None
        SEL.check_nm(n, m)
    if structured is not None and structured not in (1, 2):
        raise ValueError(f"structured must be 1 or 2 (the norm), got {structured!r}")
    if sum(x is not None for x in (nm, structured)) + (scope == "global") > 1:
        raise ValueError("choose one of scope='global', nm=..., structured=...")
    schedule = schedule or (every_step() if ste else one_shot(0))
    if nm is not None:
        sparsity = 1.0 - n / m  # N:M fixes the sparsity; the schedule only says when

    def compute(params, st: PruneState, step, grads, rng, acc):
        s_t = {p: schedule.sparsity(st.sched, step, v) for p, v in st.targets.items()}
        sc = _leaf_scores(score, params, st.masks, grads, acc, rng) if structured is None else None
        if nm is not None:
            on = schedule.sparsity(st.sched, step, st.sparsity) > 0
            new = {p: SEL.nm_mask(v, n, m, _nm_axis(p, v.shape, nm_axis, layout)) | ~on for p, v in sc.items()}
        elif structured is not None:
            pv = dict(tree.named_leaves(params))
            mv = dict(M.named_masks(st.masks))
            names = list(st.targets)
            ins = {p: jlayout.axes_of(p, pv[p].shape, layout).inputs for p in names}
            unit_sc = [jnp.where(jnp.any(mv[p], axis=ins[p]), S.unit_norms(pv[p], structured, ins[p]), -jnp.inf)
                       for p in names]
            keeps = SEL.layerwise_masks(unit_sc, [s_t[p] for p in names])
            new = {}
            for p, keep in zip(names, keeps):
                new[p] = SEL.broadcast_units(keep, pv[p].shape, ins[p])
                b = _bias_of(p)
                if b in mv and b not in st.targets:
                    new[b] = keep
        elif scope == "global":
            vals = list(sc.values())
            if normalize:
                vals = [v / jnp.maximum(jnp.sqrt(jnp.sum(jnp.where(jnp.isfinite(v), v * v, 0.0))), 1e-30) for v in vals]
            cut = SEL.global_masks(vals, schedule.sparsity(st.sched, step, st.sparsity))
            new = dict(zip(sc, cut))
        else:
            names = list(sc)
            new = dict(zip(names, SEL.layerwise_masks([sc[p] for p in names], [s_t[p] for p in names])))
        return _masks_from_dict(params, new)

    def init(params):
        sel = jlayout.select(params, where, layout)
        shapes = {p: tuple(x.shape) for (p, x), (_, s) in zip(tree.named_leaves(params), tree.named_leaves(sel)) if s}
        named = {p: jnp.ones(s, bool) for p, s in shapes.items()}
        if nm is not None:
            for p, shp in shapes.items():
                ax = _nm_axis(p, shp, nm_axis, layout)
                if shp[ax] % m:
                    raise ValueError(f"parameter {p!r}: N:M with m={m} needs axis {ax} of shape {shp} "
                                     f"divisible by {m} (got {shp[ax]})")
        if structured is not None:  # the bias of a pruned unit goes with it
            pv = dict(tree.named_leaves(params))
            for p, shp in shapes.items():
                outs = tuple(shp[a] for a in jlayout.axes_of(p, shp, layout).outputs)
                b = _bias_of(p)
                if b in pv and b not in shapes and tuple(pv[b].shape) == outs:
                    named[b] = jnp.ones(outs, bool)
        targets = distributions.distribute(shapes, sparsity, distribution, overrides)
        masks = _masks_from_dict(params, named)
        acc = M.mask_map(lambda mk, x: None if mk is None else jnp.zeros(x.shape, jnp.float32), masks, params) \
            if score == "movement" else None
        sched = {k: jnp.array(v, copy=True) for k, v in schedule.params.items()}  # states are donated
        st = PruneState(masks, jnp.float32(sparsity), targets, sched, jnp.int32(0), jnp.int32(0), acc)
        with jax.ensure_compile_time_eval():  # the schedule's numbers are constants: init works under jit too
            due0 = bool(schedule.due(schedule.params, jnp.int32(0)))
        if not ste and score in ("magnitude", "random") and due0:
            new = compute(params, st, jnp.int32(0), None, jax.random.key(seed), acc)
            st = st._replace(masks=new, count=jnp.int32(1))
        return st

    def apply(params, st: PruneState):
        if not ste:
            return M.apply_masks(params, st.masks)
        live = compute(jax.lax.stop_gradient(params), st, st.step, None, jax.random.key(seed), st.acc)
        return M.mask_map(lambda mk, w: w if mk is None else w + jax.lax.stop_gradient(w * mk.astype(w.dtype) - w),
                          live, params)

    def update(params, st: PruneState, ctx: Context):
        step = jnp.asarray(ctx.step, jnp.int32)
        acc = st.acc
        if score == "movement":
            if ctx.grads is None:
                raise ValueError("movement pruning needs Context.grads")
            acc = S.movement_update(acc, params, ctx.grads)
        if ste:
            return params, st._replace(step=step)
        due = schedule.due(st.sched, step)
        rng = ctx.rng if ctx.rng is not None else jax.random.key(seed)
        new = jax.lax.cond(due, lambda: compute(params, st, step, ctx.grads, rng, acc), lambda: st.masks)
        params = M.apply_masks(params, new)
        return params, st._replace(masks=new, step=step, count=st.count + due.astype(jnp.int32), acc=acc)

    return Transform(init, apply, update)


def magnitude(sparsity=0.5, schedule: Schedule | None = None, **kw) -> Transform:
    """Magnitude pruning (``|w|``); see :func:`prune` for the keyword arguments."""
    return prune("magnitude", sparsity, schedule, **kw)


def random(sparsity=0.5, schedule: Schedule | None = None, **kw) -> Transform:
    """Random pruning baseline; see :func:`prune`."""
    return prune("random", sparsity, schedule, **kw)


def saliency(sparsity=0.5, schedule: Schedule | None = None, **kw) -> Transform:
    """Saliency ``|w * g|`` pruning at the schedule's steps; see :func:`prune`."""
    return prune("saliency", sparsity, schedule or one_shot(1), **kw)


def movement(sparsity=0.5, schedule: Schedule | None = None, **kw) -> Transform:
    """Movement pruning (Sanh et al. 2020): scores accumulate ``-w * g``; see :func:`prune`."""
    return prune("movement", sparsity, schedule or one_shot(1), **kw)


def fixed(masks) -> Transform:
    """A transform that applies given masks (SNIP, lottery tickets) and keeps pruned weights 0."""

    def init(params):
        M.check_masks(params, masks)
        # a fresh copy: the train step donates its state
        return M.mask_map(lambda m: None if m is None else jnp.array(m, bool, copy=True), masks)

    return Transform(init, lambda p, mk: M.apply_masks(p, mk), lambda p, mk, ctx: (M.apply_masks(p, mk), mk))


def snip(params, grads, sparsity, where: tree.Selector = None, scope: str = "global",
         layout: jlayout.Layout | None = None):
    """SNIP masks (Lee et al. 2019) from the gradients of one batch at initialisation (selection as :func:`prune`)."""
    sc = S.saliency(params, grads, where, layout)
    names = [p for p, _ in M.named_masks(sc)]
    vals = [v for _, v in M.named_masks(sc)]
    cut = SEL.global_masks(vals, sparsity) if scope == "global" else [SEL.topk_mask(v, sparsity) for v in vals]
    return _masks_from_dict(params, dict(zip(names, cut)))


def with_sparsity(state: PruneState, sparsity, targets: dict | None = None) -> PruneState:
    """Same state with another (traced) total target; uniform per-leaf targets unless given.

    Concrete values are validated like the constructor's (``[0, 1)``, ``targets`` naming only
    pruned paths); traced values cannot be checked and are taken as they are.

    Raises:
      ValueError: a concrete sparsity outside ``[0, 1)`` (naming the path for a per-leaf target),
        or a ``targets`` path the state does not prune.
    """
    SEL.check_sparsity(sparsity)
    if targets:
        unknown = sorted(set(targets) - set(state.targets))
        if unknown:
            raise ValueError(f"with_sparsity: unknown path(s) {unknown}; pruned paths: {sorted(state.targets)}")
        for p, v in targets.items():
            SEL.check_sparsity(v, f"sparsity target of {p!r}")
    s = jnp.asarray(sparsity, jnp.float32)
    targets = targets or {p: s for p in state.targets}
    return state._replace(sparsity=s, targets={p: jnp.array(v, jnp.float32, copy=True) for p, v in targets.items()})


