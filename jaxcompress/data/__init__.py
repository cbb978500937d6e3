"""Built-in datasets and deterministic batching (see :mod:`.datasets`, :mod:`.batching`, :mod:`.text`, :mod:`.code`)."""

from jaxcompress.data.batching import BatchIterator, make_mesh, replicate, shard_batch
from jaxcompress.data.datasets import DATASETS, Dataset, digits, load, mnist1d, mnist1d_extra_inputs
from jaxcompress.data.code import CodeCorpus, stdlib_code
from jaxcompress.data.text import TextCorpus, stdlib_corpus

__all__ = [
    "DATASETS", "Dataset", "digits", "mnist1d", "mnist1d_extra_inputs", "load",
    "BatchIterator", "make_mesh", "shard_batch", "replicate", "TextCorpus", "stdlib_corpus",
    "CodeCorpus", "stdlib_code",
]
