"""The compression methods a stage asks for, built from the library's public API only.

Traced hyperparameters live in the transform states the library builds (pruning keeps the
target sparsity in ``PruneState``, weight quantization keeps ``bits`` in its state, distillation
keeps ``temperature``/``alpha`` in ``DistillState.hparams``); the learning rate is passed to the
step as an array. So the transform is built once from the stage config (static structure) and
runs that differ only in those values stack their states and share one compiled program.
Each builder takes the stage model's ``layout`` (:func:`jaxcompress.layout.trace`): it fixes
which leaves are weights and which of their axes are outputs (a CNN1D's 3-D conv kernels).

>>> import jax.numpy as jnp, ml_collections
>>> cfg = ml_collections.ConfigDict(dict(sparsity=0.5, begin_frac=0.0, end_frac=0.5, update_every=1,
...                                      distribution="uniform", scope="layer"))
>>> t = prune_transform(cfg, steps=4)
>>> sparsity({"Dense_0": {"kernel": jnp.array([[0.0, 1.0]])}})
0.5
>>> from jaxcompress import layout, models
>>> m = models.create("cnn1d", (40,))                  # 3-D conv kernels: the layout says which axes are outputs
>>> lay = layout.trace(m.apply_fn, jnp.zeros((1, 40)), params=m.params)
>>> ptq(m.params, 8, layout=lay)["Conv_0"]["kernel"].shape
(5, 1, 25)
"""

from __future__ import annotations

import jax
import numpy as np

from jaxcompress import layout as jlayout
from jaxcompress import pruning, quantization
from jaxcompress import tree as jtree
from jaxcompress.transform import Transform, chain


def prune_transform(cfg, steps: int, layout: dict | None = None) -> Transform:
    """Gradual (cubic) magnitude pruning to ``cfg.sparsity`` over ``[begin_frac, end_frac] * steps``."""
    begin = int(cfg.begin_frac * steps)
    end = max(int(cfg.end_frac * steps), begin)
    schedule = pruning.polynomial(begin=begin, end=end, frequency=cfg.update_every)
    return pruning.magnitude(sparsity=cfg.sparsity, schedule=schedule, distribution=cfg.distribution, scope=cfg.scope,
                              layout=layout)


def quant_transform(cfg, params, layout: dict | None = None) -> Transform:
    """Weight fake quantization (symmetric, per output channel) at ``cfg.bits``; with ``keep_sparsity``
    the zeros of ``params`` stay zero (``pruning.fixed``), i.e. sparsity-preserving QAT."""
    t = quantization.quantize_weights(quantization.QuantSpec(bits=int(cfg.bits)), layout=layout)
    if not cfg.keep_sparsity:
        return t
    sel = jlayout.select(params, None, layout)
    masks = jax.tree.map(lambda x, s: (np.asarray(x) != 0) if s else None, params, sel)
    return chain(pruning.fixed(masks), t)


def ptq(params, bits: int, layout: dict | None = None):
    """Round-to-nearest weight PTQ: ``quantization.convert`` then ``dequantize_tree``."""
    spec = quantization.QuantSpec(bits=int(bits))
    return quantization.dequantize_tree(quantization.convert(params, spec, layout=layout))


def sparsity(params, where=None) -> float:
    """Fraction of exact zeros over the selected (default: kernel) leaves."""
    sel = [np.asarray(x) for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(jtree.select(params, where))) if s]
    n = sum(int(x.size) for x in sel)
    return sum(int(np.sum(x == 0)) for x in sel) / max(n, 1)
