"""The experiment runner: configs -> pipelines of stages -> run directories, sweeps and reports.

It only wires the library's public functions together (nothing in the library imports it):

* :mod:`.config` / :mod:`.schema` - Python config files with ``get_config(arg)``, ``--set`` overrides, validation;
* :mod:`.stages` / :mod:`.pipeline` - train, distill, prune, qat, ptq, convert, evaluate in a run directory;
* :mod:`.train_loop` - the resumable, data-parallel (or vmapped) training loop;
* :mod:`.checkpoint` - orbax checkpoints (async, latest + best, fallback) and atomic result files;
* :mod:`.sweep` - products/lists of overrides, shards, vectorized groups;
* :mod:`.report` - table, results.csv/.jsonl, pareto.png; :mod:`.metrics_log` - JSON lines, TensorBoard, tqdm.

>>> from jaxcompress.runner import sweep
>>> len(sweep.product(sweep.axis("prune.sparsity", [0.8, 0.9]), sweep.axis("qat.bits", [2, 4])))
4
"""

from jaxcompress.runner.config import ConfigError, get_config
from jaxcompress.runner.pipeline import run
from jaxcompress.runner.sweep import run_sweep

__all__ = ["ConfigError", "get_config", "run", "run_sweep"]
