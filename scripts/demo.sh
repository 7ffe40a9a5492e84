#!/usr/bin/env bash
# The main job, end to end: FCFS vs SSJF vs SSJF-aging live over HTTP on a local Ray cluster,
# with trained proxies predicting output lengths, answers streamed (TTFT, TPOT, queue delay).
# Stage 'real': two hf replicas of SmolLM2-135M on CPU, ordered by a proxy of SmolLM2's own reply
# lengths; stage 'emulated': four replay replicas at a 7B-on-A100 cost (where queues, and so the
# scheduling effect, show within minutes), ordered by an arena-trained proxy. Prints both
# comparisons; plots results/demo/*.png.
# Creates/updates .venv first. Trains, once each, the proxies it lacks (needs nothing outside the
# repo): the real stage's from proxy_model/data/smollm2_demo_train.jsonl into artifacts/proxy-demo-smollm2
# (scripts/demo_proxy.py, scored on the real stage's prompts, which it never saw); the emulated
# stage's from the bundled arena sample into artifacts/proxy-quick, unless artifacts/proxy-default
# exists. Under a minute each on 2 cores.
# Extra arguments go to `ssjf-cluster bench` (e.g. scripts/demo.sh --json); DEMO_STAGES=real|emulated
# runs one stage.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup-venv.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_AUTH_MODE=disabled DS_ACCELERATOR=cpu
export RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false PYTHONWARNINGS=ignore
STAGES=${DEMO_STAGES:-real,emulated}
mkdir -p artifacts
REAL_PROXY=artifacts/proxy-demo-smollm2
if [[ $STAGES == *real* && ! -f "$REAL_PROXY/proxy_config.json" ]]; then
  echo "demo: training the real stage's SmolLM2 proxy (frozen MiniLM encoder + censored head) from" \
       "proxy_model/data/smollm2_demo_train.jsonl into $REAL_PROXY" >&2
  .venv/bin/python scripts/demo_proxy.py --out "$REAL_PROXY" 2>artifacts/proxy-demo-smollm2-train.log >&2 \
    || { tail -20 artifacts/proxy-demo-smollm2-train.log >&2; exit 1; }
  grep '^demo proxy' artifacts/proxy-demo-smollm2-train.log >&2 || true
fi
EMU_PROXY=artifacts/proxy-default
if [[ ! -f "$EMU_PROXY/proxy_config.json" ]]; then
  EMU_PROXY=artifacts/proxy-quick
  if [[ $STAGES == *emulated* && ! -f "$EMU_PROXY/proxy_config.json" ]]; then
    echo "demo: no artifacts/proxy-default; training a quick proxy on the bundled arena sample" \
         "(frozen MiniLM encoder + regression head) into $EMU_PROXY" >&2
    .venv/bin/proxy-model prepare arena -o artifacts/proxy-quick-data.parquet >/dev/null
    .venv/bin/proxy-model train artifacts/proxy-quick-data.parquet -o "$EMU_PROXY.tmp" --freeze-encoder \
      --epochs 30 --no-progress >/dev/null 2>artifacts/proxy-quick-train.log
    rm -rf "$EMU_PROXY" && mv "$EMU_PROXY.tmp" "$EMU_PROXY"
  fi
fi
echo "demo: proxies $REAL_PROXY (real), $EMU_PROXY (emulated) ($(( $(date +%s) - start )) s so far)" >&2
.venv/bin/python scripts/demo.py --real-proxy "$REAL_PROXY" --emulated-proxy "$EMU_PROXY" --out results/demo \
  --stages "$STAGES" "$@"
echo "demo: total $(( $(date +%s) - start )) s" >&2
