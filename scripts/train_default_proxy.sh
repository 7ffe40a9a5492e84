#!/usr/bin/env bash
# Reproduce the default proxy artifact (artifacts/proxy-default) from the shared data.
#
# Data: Chatbot Arena answers (300 prompts x 15 LLMs, Apache-2.0) and AlpacaEval outputs (805
# prompts x 19 LLMs, CC-BY-NC-4.0: research use only). Both are READ from $DATA (default
# ../shared/data) and never copied into the repo; the artifact stays in artifacts/ (git-ignored).
# Recipe: full fine-tuning of MiniLM-L6 + regression head (log tokens, pairwise rank loss), 128
# encoder tokens per prompt, 14 epochs over the ~765 training prompts (each prompt carries the
# reply lengths of every model that answered it). About 10 minutes on a 2-core CPU (bf16 autocast
# where the CPU has AMX / AVX512-BF16); see docs/proxy_model.md for the numbers it reaches.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-artifacts/proxy-default}
PREPARED=${PREPARED:-artifacts/data/arena_alpacaeval.parquet}
export HF_HUB_OFFLINE=1 DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}

for f in arena_bench_v1_answers.jsonl.gz alpaca_eval_outputs.jsonl.gz; do
  [[ -f "$DATA/$f" ]] || { echo "missing $DATA/$f (set DATA=...)" >&2; exit 2; }
done

.venv/bin/proxy-model prepare "$DATA/arena_bench_v1_answers.jsonl.gz" "$DATA/alpaca_eval_outputs.jsonl.gz" \
  -o "$PREPARED" --val-frac 0.1 --test-frac 0.2 --seed 0
.venv/bin/proxy-model train "$PREPARED" -o "$OUT" --encoder minilm --head regression \
  --epochs 14 --lr 8e-5 --head-lr 1e-3 --batch-size 16 --max-length 128 --rank-loss-weight 0.5 --seed 0 "$@"
.venv/bin/proxy-model evaluate "$OUT" "$PREPARED" --split test --out "$OUT/eval_test.json"
