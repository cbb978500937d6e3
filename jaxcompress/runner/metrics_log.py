"""Training metrics as JSON lines, TensorBoard event files (tensorboardX) and a tqdm progress bar.

Each JSON line is written with one ``write`` + ``flush`` of a complete line; a half line left by
a kill is cut off when the log is reopened, and :func:`read_jsonl` ignores a trailing partial line.

>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> with MetricsLogger(d, "teacher", total_steps=2, progress=False) as log:
...     log.write(1, {"loss": 0.5, "accuracy": 0.75})
>>> [r["loss"] for r in read_jsonl(os.path.join(d, "metrics.jsonl"))]
[0.5]
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np


def read_jsonl(path: str) -> list[dict]:
    """All complete JSON lines of ``path`` ([] when missing)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def _drop_partial_line(path: str) -> None:
    """Cut a half-written last line (left by a kill) so that appended lines stay whole."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


class MetricsLogger:
    """Log ``(step, metrics)`` of one stage to ``directory`` and (optionally) a progress bar.

    Args:
      directory: the stage directory; ``metrics.jsonl`` and ``tb/`` go there.
      stage: the stage name (JSON field and progress-bar label).
      total_steps: for the progress bar's ETA.
      start_step: where a resumed run starts.
      progress: show a tqdm bar on stderr (default: when stderr is a terminal; env JAXCOMPRESS_PROGRESS=1/0 forces).
      tensorboard: also write TensorBoard event files.
    """

    def __init__(self, directory: str, stage: str, total_steps: int, start_step: int = 0,
                 progress: bool | None = None, tensorboard: bool = True):
        os.makedirs(directory, exist_ok=True)
        self.stage = stage
        path = os.path.join(directory, "metrics.jsonl")
        _drop_partial_line(path)
        self._f = open(path, "a")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(directory, "tb"), flush_secs=30)
        self._bar = None
        if progress is None:
            env = os.environ.get("JAXCOMPRESS_PROGRESS")
            progress = sys.stderr.isatty() if env is None else env != "0"
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc=stage, file=sys.stderr, leave=False,
                             dynamic_ncols=True, mininterval=0.5)
        self._last = start_step

    def write(self, step: int, metrics: dict, split: str = "train") -> None:
        vals = {k: float(np.asarray(v)) for k, v in metrics.items()}
        row = {"stage": self.stage, "split": split, "step": int(step), "time": time.time(), **vals}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in vals.items():
                self._tb.add_scalar(f"{self.stage}/{split}/{k}", v, int(step))
        if self._bar is not None and split == "train":
            self._bar.update(max(0, int(step) - self._last))
            self._bar.set_postfix(loss=f"{vals.get('loss', float('nan')):.4f}",
                                  acc=f"{vals.get('accuracy', float('nan')):.3f}", refresh=False)
        self._last = max(self._last, int(step))

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
