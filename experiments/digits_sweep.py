"""Sweep of the digits pipeline over target sparsity and QAT bit width (a Pareto plot in seconds).

Command:
  jaxcompress sweep experiments/digits_sweep.py --workdir /tmp/digits_sweep --vectorize
  jaxcompress sweep experiments/digits_sweep.py:runlocal=True --workdir /tmp/sw --shard 0/2   # + 1/2
  jaxcompress report /tmp/digits_sweep --json /tmp/digits_sweep.json

Expected runtime: 130 s of CPU time for the 6 points with --vectorize (5.5 min wall measured on a
shared, overloaded 2-core machine); runlocal: ~1 minute.
Expected result: accuracy falls and artifact bytes shrink as sparsity rises and bits fall;
pareto.png shows the front from the 95 %/2-bit point (2,280 bytes, 92.5 %) over 95 %/4-bit (2,514 bytes,
96.7 %) to the 80 %/4-bit point (4,073 bytes, 97.2 %); 2-bit points lose 3-5 points.
Points differ only in traced values (prune.sparsity, qat.bits; convert.bits is not a training
stage), so `--vectorize` trains each training stage as one vmapped program for all 6 points.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from digits_compress import get_config as _base  # noqa: E402

from jaxcompress.runner.config import parse_arg  # noqa: E402
from jaxcompress.runner.sweep import axis, product, zipped  # noqa: E402


def get_config(arg=None):
    a = parse_arg(arg, runlocal=False)
    c = _base(f"runlocal={a.runlocal}")
    c.name = "digits_sweep"
    c.student.model_kw.features = (100, 50)  # the figures below were measured with this student
    return c


def get_sweep(arg=None):
    parse_arg(arg, runlocal=False)
    bits = zipped(axis("qat.bits", [2, 4]), axis("convert.bits", [2, 4]))  # QAT and artifact at the same width
    return product(axis("prune.sparsity", [0.8, 0.9, 0.95]), bits)
