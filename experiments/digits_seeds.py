"""The digits_compress pipeline over seeds 0, 1, 2 (BENCHMARKS.md protocol: report mean and spread).

Command:
  jaxcompress sweep experiments/digits_seeds.py --workdir /tmp/digits_seeds --vectorize
  jaxcompress report /tmp/digits_seeds --json /tmp/digits_seeds.json

Expected runtime: about 2 minutes on an idle 2-core CPU (the three seeds train as one vmapped
program per stage). Expected result: every seed's artifact >= 40x smaller than its float32
teacher; accuracy drop around 0-1 point (digits: one test example is 0.28 points).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from digits_compress import get_config  # noqa: E402,F401

from jaxcompress.runner.sweep import axis  # noqa: E402


def get_sweep(arg=None):
    del arg
    return axis("seed", [0, 1, 2])
