"""Digits: dense teacher -> distilled student -> gradual pruning -> 4-bit QAT -> compact artifact.

Command:
  jaxcompress run experiments/digits_compress.py --workdir /tmp/digits_compress
  jaxcompress run experiments/digits_compress.py:runlocal=True --workdir /tmp/digits_local   # seconds
  jaxcompress run experiments/digits_compress.py --workdir DIR --set prune.sparsity=0.95

Expected runtime: about 40 s of CPU time (measured: 1 min 33 s wall, 38 s CPU, on a shared 2-core
machine under load); runlocal: ~30 s, mostly compilation.
Expected result (seed 0, measured): teacher MLP 64-300-100-10 (50.6K params, 202,440 bytes float32)
97.78 % test accuracy; student 64-128-64-10 distilled 96.94 %; 92 % sparse (ERK) 98.06 %; 4-bit QAT
98.06 %; the artifact (bitmask + packed 4-bit codes + per-channel scales + float16 biases, lzma) is
3,634 bytes: 55.7x smaller than the float32 teacher, accuracy drop -0.28 points. Over seeds 0/1/2
(experiments/digits_seeds.py --vectorize): drops 0.83 / -0.56 / 1.39 points (mean 0.56), ~55x.
"""

import ml_collections

from jaxcompress.runner.config import parse_arg


def get_config(arg=None):
    a = parse_arg(arg, runlocal=False, sparsity=0.92, bits=4, student=(128, 64), seed=0)
    local = a.runlocal
    c = ml_collections.ConfigDict()
    c.name = "digits_compress"
    c.dataset = "digits"
    c.seed = a.seed
    c.num_devices = 1
    c.log_every = 10 if local else 100
    c.checkpoint_every = 20 if local else 500
    c.pipeline = ("teacher", "student", "prune", "qat", "convert", "evaluate")
    c.teacher = dict(type="train", model="mlp", model_kw={"features": (300, 100)},
                     steps=60 if local else 3000, lr=1e-3, batch_size=128)
    c.student = dict(type="distill", model="mlp", model_kw={"features": tuple(a.student)}, teacher="teacher",
                     steps=60 if local else 3000, lr=3e-3, batch_size=128, temperature=4.0, alpha=0.9)
    c.prune = dict(type="prune", input="student", sparsity=a.sparsity, steps=60 if local else 3000, lr=1e-3,
                   batch_size=128, begin_frac=0.0, end_frac=0.6, update_every=10 if local else 50, distribution="erk",
                   teacher="teacher", temperature=4.0, alpha=0.9)
    c.qat = dict(type="qat", input="prune", bits=a.bits, steps=40 if local else 1000, lr=3e-4, batch_size=128,
                 teacher="teacher", temperature=4.0, alpha=0.9)
    c.convert = dict(type="convert", input="qat", bits=a.bits, codec="lzma", float_dtype="float16")
    c.evaluate = dict(type="evaluate", reference="teacher", latency_batch=128, latency_repeats=5 if local else 20)
    return c
