"""Lottery tickets: iterative magnitude pruning (IMP) with weight rewinding.

Frankle & Carbin (2019), with rewinding to step ``k`` (Frankle et al. 2020): train,
prune a fraction of the remaining weights by magnitude, reset the survivors to their
values at step ``k`` and train again, for several rounds. The training itself is the
caller's: ``train_fn(params, masks, start, stop) -> params`` trains steps
``[start, stop)`` keeping masked weights at zero (e.g. ``fit`` with
``transform=fixed(masks)``), so any pipeline can call :func:`imp`. Given ``layout=``
(:func:`jaxcompress.layout.trace`), only the layout's weight paths are pruned by default.

>>> import jax.numpy as jnp
>>> def train_fn(params, masks, start, stop):  # a stand-in "training": scale the weights
...     return {"kernel": params["kernel"] * 2.0}
>>> r = imp({"kernel": jnp.arange(1.0, 11.0).reshape(2, 5)}, train_fn, steps=10, rounds=2, fraction=0.5)
>>> r.sparsities
[0.5, 0.8]
>>> from jaxcompress.layout import WeightLayout
>>> lay = {"kernel": WeightLayout((0,), (1,), 0, "dot_general")}
>>> imp({"kernel": jnp.arange(1.0, 11.0).reshape(2, 5)}, train_fn, steps=10, rounds=1, layout=lay).sparsities
[0.2]
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxcompress import layout as jlayout
from jaxcompress import tree
from jaxcompress.pruning import masks as M
from jaxcompress.pruning import select as SEL


class IMPResult(NamedTuple):
    masks: Any  # final masks
    params: Any  # final trained params of the last round (masked)
    rewind_params: Any  # the step-k weights the tickets are reset to
    sparsities: list  # sparsity after each round
    history: list  # [(sparsity, masks, params)] per round (round 0 = dense)


def imp(params, train_fn: Callable, *, steps: int, rounds: int, fraction: float = 0.2, rewind_step: int = 0,
        where: tree.Selector = None, scope: str = "layer", keep_history: bool = False,
        layout: jlayout.Layout | None = None) -> IMPResult:
    """Iterative magnitude pruning with rewinding.

    Args:
      params: initial weights ``theta_0``.
      train_fn: ``(params, masks, start, stop) -> params``.
      steps: total training steps ``T`` of each round.
      rounds: number of prune-rewind-retrain rounds after the dense run.
      fraction: fraction of the *remaining* weights pruned per round (sparsity after
        round ``r`` is ``1 - (1 - fraction) ** r``, rounded to whole weights).
      rewind_step: ``k``; 0 rewinds to initialisation (the original lottery ticket).
      where: selector of the pruned leaves (default: kernels; with ``layout``, its weight paths).
      scope: ``"layer"`` (same sparsity per leaf) or ``"global"`` magnitude ranking.
      keep_history: keep masks and params of every round.
      layout: ``{path: WeightLayout}`` from :func:`jaxcompress.layout.trace` (checked against ``params``).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    if not isinstance(steps, int) or not 0 <= rewind_step < steps:
        raise ValueError(f"need integers 0 <= rewind_step < steps, got rewind_step={rewind_step!r}, steps={steps!r}")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    masks = M.ones_like(params, where, layout)
    rewind = train_fn(params, masks, 0, rewind_step) if rewind_step > 0 else params
    trained = train_fn(rewind, masks, rewind_step, steps)
    history = [(0.0, masks, trained)] if keep_history else []
    sparsities = []
    for r in range(1, rounds + 1):
        target = 1.0 - (1.0 - fraction) ** r
        names = [p for p, _ in M.named_masks(masks)]
        pv = dict(tree.named_leaves(trained))
        old = dict(M.named_masks(masks))
        scores = [jnp.where(old[p], jnp.abs(pv[p]).astype(jnp.float32), -jnp.inf) for p in names]
        if scope == "global":
            new = SEL.global_masks(scores, target)
        else:
            new = [SEL.topk_mask(s, target) for s in scores]
        masks = tree.map_with_path(lambda p, x: dict(zip(names, new)).get(p), params)
        trained = train_fn(M.apply_masks(rewind, masks), masks, rewind_step, steps)
        trained = M.apply_masks(trained, masks)
        sparsities.append(round(M.sparsity(masks), 6))
        if keep_history:
            history.append((sparsities[-1], masks, trained))
    jax.block_until_ready(jax.tree.leaves(trained))
    return IMPResult(masks, trained, rewind, sparsities, history)
