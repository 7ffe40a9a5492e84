#!/usr/bin/env bash
# The main job, end to end: FCFS vs SSJF vs SSJF-aging live over HTTP on a local Ray cluster,
# with a trained proxy predicting output lengths. Stage 'real': two hf replicas of SmolLM2-135M
# on CPU; stage 'emulated': four replay replicas at a 7B-on-A100 cost (where queues, and so the
# scheduling effect, show within minutes). Prints both comparisons; plots results/demo/*.png.
# Creates/updates .venv first; trains a quick proxy from the bundled arena sample when
# artifacts/proxy-default is missing (under a minute on 2 cores, once). Needs nothing outside the repo.
# Extra arguments go to `ssjf-cluster bench` (e.g. scripts/demo.sh --json); DEMO_STAGES=real|emulated
# runs one stage.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup-venv.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_AUTH_MODE=disabled DS_ACCELERATOR=cpu
export RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false PYTHONWARNINGS=ignore
PROXY=artifacts/proxy-default
if [ ! -f "$PROXY/proxy_config.json" ]; then
  PROXY=artifacts/proxy-quick
  if [ ! -f "$PROXY/proxy_config.json" ]; then
    echo "demo: no artifacts/proxy-default; training a quick proxy on the bundled arena sample" \
         "(frozen MiniLM encoder + regression head) into $PROXY" >&2
    mkdir -p artifacts
    .venv/bin/proxy-model prepare arena -o artifacts/proxy-quick-data.parquet >/dev/null
    .venv/bin/proxy-model train artifacts/proxy-quick-data.parquet -o "$PROXY.tmp" --freeze-encoder \
      --epochs 30 --no-progress >/dev/null 2>artifacts/proxy-quick-train.log
    rm -rf "$PROXY" && mv "$PROXY.tmp" "$PROXY"
  fi
fi
echo "demo: proxy $PROXY ($(( $(date +%s) - start )) s so far)" >&2
.venv/bin/python scripts/demo.py --proxy "$PROXY" --out results/demo \
  --stages "${DEMO_STAGES:-real,emulated}" "$@"
echo "demo: total $(( $(date +%s) - start )) s" >&2
