#!/usr/bin/env bash
# Train and evaluate the remaining-length predictor for SmolLM2-135M-Instruct (issue 14 item 1):
# from the prompt plus the last 64 generated tokens and the count so far, the tokens still to come.
# Writes artifacts/remaining (git-ignored: encoder, head, eval.json, feature cache) and, with
# TAU_TABLE=1, the committed per-k tau table proxy_model/data/remaining_tau.json.
#
# Data: $DATA/smollm2_replies.jsonl.gz (default ../shared/data): 5,198 greedy replies WITH their
# text, logs schema, 51% cut at the 512-token cap; research use only, read from there, never committed.
# Splits: `proxy-model prepare`'s prompt-hash rule with the settings of scripts/train_smollm2_proxy.sh
# (val 10%, test 20%, seed 0), so test prompts are never trained on here or by the prompt-only proxy.
# Recipe (docs/proxy_model.md, "Remaining-length prediction"): frozen MiniLM-L6 features of the prompt
# and of the tail (cached in $OUT/feature_cache.pt), the censored head, progress points
# 0,32,64,128,256,384 + 3 random per training reply, a head of 128 with dropout 0.3 (chosen on the
# val split). Baseline: the same head on the prompt alone (k = 0), minus the tokens so far.
# Wall time: 9 min 44 s on a 2-core CPU shared with other jobs, 8 of them the encoder pass; a rerun
# with the cache takes 1-10 minutes, by the load. Extra arguments go to `proxy-model train-remaining`.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-artifacts/remaining}
THREADS=${THREADS:-2}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

INPUT="$DATA/smollm2_replies.jsonl.gz"
if [[ ! -f "$INPUT" ]]; then
  # The bundled Apache-2.0 rows carry counts, not reply text: nothing to cut into prefixes.
  echo "no $INPUT: remaining-length training needs replies with their text" >&2
  exit 1
fi
TABLE=()
if [[ "${TAU_TABLE:-0}" == 1 ]]; then
  TABLE=(--tau-table proxy_model/data/remaining_tau.json)
fi
start=$(date +%s)
.venv/bin/proxy-model train-remaining "$INPUT" -o "$OUT" --eval-out "$OUT/eval.json" --cache "$OUT/feature_cache.pt" \
  --points 0,32,64,128,256,384 --random-per-reply 3 --tail-tokens 64 --val-frac 0.1 --test-frac 0.2 --seed 0 \
  --hidden-size 128 --dropout 0.3 --lr 3e-4 --epochs 15 --weight-decay 0.05 --rank-loss-weight 0.5 \
  "${TABLE[@]}" "$@"
echo "wall time: $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s"
