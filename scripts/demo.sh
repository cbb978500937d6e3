#!/usr/bin/env bash
# The main job: install into .venv (if needed), print the dense baselines on both built-in
# datasets (one seed), then run the compression pipeline experiments/digits_compress.py
# (dense teacher -> distilled student -> gradual pruning -> 4-bit QAT -> compact artifact)
# and its report. Extra arguments go to `jaxcompress run` (e.g. --set prune.sparsity=0.95).
set -euo pipefail
source "$(dirname "$0")/_venv.sh" ""
WORKDIR="${WORKDIR:-runs/demo}"
echo "== dense baselines (jaxcompress demo --seeds 1) =="
jaxcompress demo --seeds 1
echo "== compression pipeline (jaxcompress run experiments/digits_compress.py --workdir $WORKDIR) =="
jaxcompress run experiments/digits_compress.py --workdir "$WORKDIR" "$@"
exec jaxcompress report "$WORKDIR" --json "$WORKDIR/report.json"
