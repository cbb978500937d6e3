"""jaxcompress: pruning, quantization and distillation as pure transforms over Flax params pytrees.

>>> import jaxcompress as jc
>>> t = jc.chain(jc.identity())
>>> isinstance(t, jc.Transform)
True
"""

from jaxcompress import data, models, train, tree
from jaxcompress.transform import Context, Transform, chain, finalize, identity

__version__ = "0.1.0"

__all__ = ["data", "models", "train", "tree", "Context", "Transform", "chain", "finalize", "identity", "__version__"]
