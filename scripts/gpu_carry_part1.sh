#!/usr/bin/env bash
# Device call 1 of 2, ON the GPU host: keep the first piece of the SmolLM2 GGUF in /tmp for call 2
# (scripts/gpu_engine_speed.sh), since one call carries at most 64 MiB. Carry:
#   .gpu_carry/gguf.part1 .gpu_carry/gguf.sha256        (made by scripts/gpu_carry_prepare.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${GGUF_PART1_DEST:-/tmp/gguf.part1}
want=$(awk '$2 == "gguf.part1" {print $1}' .gpu_carry/gguf.sha256)
cp .gpu_carry/gguf.part1 "$DEST"
got=$(sha256sum "$DEST" | cut -d' ' -f1)
[ "$got" = "$want" ] || { echo "gguf.part1: sha256 $got, expected $want" >&2; exit 1; }
echo "gguf.part1 -> $DEST ($(stat -c %s "$DEST") bytes, sha256 ok)"
# Cheap facts about the host, for the record.
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true) 2>&1
"${PYTHON:-python3}" -c 'import sys, torch, transformers; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available(), "transformers", transformers.__version__)' 2>&1 || true
