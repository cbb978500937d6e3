"""jaxcompress: pruning, quantization and distillation as pure transforms over Flax params pytrees.

Subpackages: :mod:`~jaxcompress.pruning`, :mod:`~jaxcompress.quantization`,
:mod:`~jaxcompress.distillation` (alias ``distill``), :mod:`~jaxcompress.export`, plus the
foundation (:mod:`~jaxcompress.data`, :mod:`~jaxcompress.models`, :mod:`~jaxcompress.train`,
:mod:`~jaxcompress.tree`). The experiment runner (:mod:`jaxcompress.runner`) builds on these and
is not imported here.

>>> import jaxcompress as jc
>>> t = jc.chain(jc.identity())
>>> isinstance(t, jc.Transform)
True
"""

from jaxcompress import data, distillation, export, models, pruning, quantization, text_metrics, train, tree
from jaxcompress.transform import Context, Transform, chain, finalize, identity

distill = distillation
__version__ = "0.1.0"

__all__ = [
    "data", "distill", "distillation", "export", "models", "pruning", "quantization", "text_metrics", "train",
    "tree", "Context", "Transform", "chain", "finalize", "identity", "__version__",
]
