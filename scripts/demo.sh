#!/usr/bin/env bash
# The main job, end to end on the embedded default: FCFS vs SSJF (and aging, oracle) on real arena
# prompts with Azure conversation-trace arrivals. Creates/updates .venv first.
# Extra arguments are passed to the command (e.g. scripts/demo.sh --json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_AUTH_MODE=disabled DS_ACCELERATOR=cpu
export RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
exec .venv/bin/loadgen simulate --dataset arena --trace azure-conv --seed 0 \
  --batching none --replicas 4 --load 0.9 --policies fcfs,ssjf,ssjf-aging,oracle \
  --predictor noisy:0.6 --num-requests 20000 "$@"
