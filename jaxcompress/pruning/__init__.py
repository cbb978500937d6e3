"""Pruning: masks over params pytrees - scores, selection, schedules, surgery, dynamic sparsity.

>>> import jax.numpy as jnp
>>> import jaxcompress.pruning as jp
>>> params = {"Dense_0": {"kernel": jnp.arange(8.0).reshape(2, 4), "bias": jnp.zeros(4)}}
>>> t = jp.magnitude(sparsity=0.5, schedule=jp.polynomial(begin=0, end=100, frequency=10))
>>> state = t.init(params)
>>> jp.sparsity(state.masks)
0.0
"""

from jaxcompress.pruning import distributions, masks, schedules, scores, select, threshold
from jaxcompress.pruning.distributions import distribute, erk
from jaxcompress.pruning.dst import DSTState, rigl, set_
from jaxcompress.pruning.lottery import IMPResult, imp
from jaxcompress.pruning.masks import apply_masks, check_masks, ones_like, params_sparsity, per_leaf_sparsity, sparsity
from jaxcompress.pruning.schedules import Schedule, cosine_decay, every_step, iterative, one_shot, polynomial
from jaxcompress.pruning.select import (
                                           global_masks,
                                           keep_count,
                                           layerwise_masks,
                                           nm_mask,
                                           topk_mask,
                                           topk_mask_k,
                                           unit_mask,
)
from jaxcompress.pruning.surgery import shrink
from jaxcompress.pruning.threshold import topk_masks, topk_masks_each
from jaxcompress.pruning.transform import (
                                           PruneState,
                                           fixed,
                                           magnitude,
                                           movement,
                                           prune,
                                           random,
                                           saliency,
                                           snip,
                                           with_sparsity,
)

__all__ = [
    "distributions", "masks", "schedules", "scores", "select", "threshold",
    "distribute", "erk", "DSTState", "rigl", "set_", "IMPResult", "imp",
    "apply_masks", "check_masks", "ones_like", "params_sparsity", "per_leaf_sparsity", "sparsity",
    "Schedule", "cosine_decay", "every_step", "iterative", "one_shot", "polynomial",
    "global_masks", "keep_count", "layerwise_masks", "topk_masks_each", "nm_mask", "topk_mask", "topk_mask_k", "unit_mask", "shrink", "topk_masks",
    "PruneState", "fixed", "magnitude", "movement", "prune", "random", "saliency", "snip", "with_sparsity",
]
