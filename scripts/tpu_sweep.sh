#!/usr/bin/env bash
# Run a jaxcompress sweep on a Cloud TPU VM pod slice: one shard per worker, then gather the report.
#
#   bash scripts/tpu_sweep.sh TPU_NAME ZONE [CONFIG] [WORKDIR]
#
# Every worker runs `jaxcompress sweep CONFIG --shard $WORKER/$NUM_WORKERS` on its own chips
# (points are independent; data parallel over the worker's local devices), writing its run
# directories under WORKDIR (use a shared bucket mount, e.g. gcsfuse, or copy them back).
# Reruns skip finished points, so a preempted slice just runs the same command again.
set -euo pipefail
TPU_NAME=${1:?usage: tpu_sweep.sh TPU_NAME ZONE [CONFIG] [WORKDIR]}
ZONE=${2:?usage: tpu_sweep.sh TPU_NAME ZONE [CONFIG] [WORKDIR]}
CONFIG=${3:-experiments/digits_sweep.py}
WORKDIR=${4:-/mnt/shared/jaxcompress_sweep}
REPO=${REPO:-~/jaxcompress}
NUM_WORKERS=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone "$ZONE" \
  --format='value(networkEndpoints.len())')

# 1. install on every worker (the repo must already be copied there, e.g. with `gcloud ... scp --worker=all`)
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
  "cd $REPO && python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]' tensorboardX"

# 2. one shard per worker, all in parallel (the worker index comes from the TPU metadata)
for ((w = 0; w < NUM_WORKERS; w++)); do
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker="$w" --command \
    "cd $REPO && .venv/bin/jaxcompress sweep $CONFIG --workdir $WORKDIR --shard $w/$NUM_WORKERS --vectorize" &
done
wait

# 3. gather: one report over all shards' run directories
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=0 --command \
  "cd $REPO && .venv/bin/jaxcompress report $WORKDIR --json $WORKDIR/report.json"
gcloud compute tpus tpu-vm scp --zone "$ZONE" --worker=0 --recurse \
  "$TPU_NAME:$WORKDIR/{results.csv,results.jsonl,pareto.png,report.json}" . || true
