"""jaxcompress: pruning, quantization and distillation as pure transforms over Flax params pytrees.

Subpackages: :mod:`~jaxcompress.pruning`, :mod:`~jaxcompress.quantization`,
:mod:`~jaxcompress.distillation` (alias ``distill``), :mod:`~jaxcompress.export`, plus the
foundation (:mod:`~jaxcompress.model` - the contract every step sees a model through -,
:mod:`~jaxcompress.layout`, :mod:`~jaxcompress.data`, :mod:`~jaxcompress.lm`, :mod:`~jaxcompress.models`, :mod:`~jaxcompress.train`,
:mod:`~jaxcompress.tree`). The experiment runner (:mod:`jaxcompress.runner`) builds on these and
is not imported here.

>>> import jaxcompress as jc
>>> t = jc.chain(jc.identity())
>>> isinstance(t, jc.Transform)
True
"""

from jaxcompress import (
    data,
    distillation,
    export,
    layout,
    lm,
    model,
    models,
    pruning,
    quantization,
    text_metrics,
    train,
    tree,
)
from jaxcompress.model import Model, from_apply, from_linen, from_nnx
from jaxcompress.transform import Context, Transform, chain, finalize, identity

distill = distillation
__version__ = "0.1.0"

__all__ = [
    "data", "distill", "distillation", "export", "layout", "model", "Model", "from_linen", "from_nnx", "from_apply",
    "models", "pruning", "quantization", "text_metrics", "train",
    "tree", "Context", "Transform", "chain", "finalize", "identity", "__version__",
]
