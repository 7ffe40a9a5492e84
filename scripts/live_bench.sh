#!/usr/bin/env bash
# Reproduce docs/live_bench.md: issue 5's live FCFS / SSJF / SSJF-aging measurements over HTTP on a
# local Ray, each with the simulator's prediction for the same workload and predictor.
#
#   scripts/live_bench.sh [paper|cont|sweep|hf|all]...   (default: all; about 60 min on 2 cores:
#   paper 16, cont 19, sweep ~25, hf ~10)
#
# paper: 4 replay replicas, no batching, load 0.9      (cluster/bench_paper.yaml)
# cont : 4 replay replicas x 8 continuous slots, 0.97  (cluster/bench_cont.yaml)
# sweep: goodput of SWEEP_POLICIES on the paper-like cluster, loads 0.9..1.3, SLO p90 JCT <= 45 s
# hf   : 2 hf replicas of SmolLM2-135M on CPU (real generation), FCFS vs SSJF vs SSJF-aging
#
# Environment: PROXY_ARTIFACT (default artifacts/proxy-default), OUT (default results/live),
# N_PAPER, N_CONT, N_SWEEP, N_HF (request counts), SWEEP (START:STOP:STEP), SWEEP_POLICIES,
# AGING_P99_BUDGET (see below), SLO_S (p90 JCT, s, at
# time_scale 1: scaled by the config's time_scale), HF_RATE (req/s), HF_MAX_TOKENS.
# The emulated (replay) replicas are labelled so in every output; the aging threshold of each
# scenario is chosen in the simulator first (the largest of 0.6/0.8/1.0/1.3 x FCFS p99 JCT whose
# simulated ssjf-aging p99 stays within AGING_P99_BUDGET x FCFS's, default 1.2: a margin below the
# 1.5 x target, because the threshold rule is a cliff that one slow moment of a busy box can push a
# whole burst over) and then validated live.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_AUTH_MODE=disabled DS_ACCELERATOR=cpu
export RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
LG=.venv/bin/loadgen
ART=${PROXY_ARTIFACT:-artifacts/proxy-default}
OUT=${OUT:-results/live}
N_PAPER=${N_PAPER:-800}
N_CONT=${N_CONT:-800}
N_SWEEP=${N_SWEEP:-200}
SWEEP=${SWEEP:-0.9:1.3:0.1}
SLO_S=${SLO_S:-45}
SWEEP_POLICIES=${SWEEP_POLICIES:-fcfs,ssjf,ssjf-aging}
AGING_P99_BUDGET=${AGING_P99_BUDGET:-1.2}
N_HF=${N_HF:-40}
HF_RATE=${HF_RATE:-0.35}
HF_MAX_TOKENS=${HF_MAX_TOKENS:-96}
[ -d "$ART" ] || { echo "live_bench: no proxy artifact at $ART (train it: scripts/train_default_proxy.sh, or set PROXY_ARTIFACT)" >&2; exit 2; }
mkdir -p "$OUT"
TAU=$($PY -c "import json,sys; print(round(json.load(open(sys.argv[1]+'/eval_test.json'))['all']['proxy']['kendall_tau'],3))" "$ART" 2>/dev/null || echo '?')
echo "live_bench: proxy artifact $ART (Kendall tau on its own test split: $TAU); results in $OUT" >&2

# derive CONFIG OUTFILE KEY=VALUE...: a copy of a cluster config with the artifact and overrides set.
derive() {
  $PY - "$@" <<'EOF'
import sys, yaml
src, dst, *pairs = sys.argv[1:]
data = yaml.safe_load(open(src))
cfg = data["applications"][0]["args"] if "applications" in data else data  # a Serve config: its first app
cfg.setdefault("proxy", {})["artifact_path"] = __import__("os").environ["ART"]
for pair in pairs:
    key, value = pair.split("=", 1)
    section, name = key.split(".")
    cfg.setdefault(section, {})[name] = yaml.safe_load(value)
yaml.safe_dump(data, open(dst, "w"), sort_keys=False)
EOF
}
export ART

# tune_aging NAME BATCHING MAX_BATCH LOAD N TIME_SCALE -> prints the live aging threshold (s).
# The simulator runs at time_scale 1 (JCTs scale linearly with time_scale at a fixed load).
tune_aging() {
  local name=$1 batching=$2 max_batch=$3 load=$4 n=$5 ts=$6 dir="$OUT/$1-sim"
  local common=(--dataset arena --trace azure-conv --seed 0 --batching "$batching" --max-batch "$max_batch"
                --replicas 4 --load "$load" --num-requests "$n" --aging-rule threshold --json)
  $LG simulate "${common[@]}" --predictor "proxy:$ART" --policies fcfs,ssjf,ssjf-aging,oracle \
      --aging-threshold-s auto --out "$dir" > "$dir.json"
  local best="" f
  for f in 0.6 0.8 1.0 1.3; do
    local th
    th=$($PY -c "import json,sys; print(round(float(sys.argv[2])*json.load(open(sys.argv[1]))['policies']['fcfs']['p99_jct_s'],3))" "$dir.json" "$f")
    $LG simulate "${common[@]}" --predictor "file:$dir/requests.parquet" --policies fcfs,ssjf-aging \
        --aging-threshold-s "$th" > "$dir-aging-$f.json"
    if $PY -c "import json,sys; p=json.load(open(sys.argv[1]))['policies']; sys.exit(0 if p['ssjf-aging']['p99_jct_s'] <= float(sys.argv[2])*p['fcfs']['p99_jct_s'] else 1)" "$dir-aging-$f.json" "$AGING_P99_BUDGET"; then
      best=$th
    fi
  done
  $PY - "$dir" >&2 <<'EOF2'
import json, sys
d = json.load(open(sys.argv[1] + ".json"))
print(f"live_bench: simulated (time_scale 1), predictor {d['predictor']} tau {d['predictor_kendall_tau']:.3f}:")
for p, s in d["policies"].items():
    print(f"  {p:11s} mean {s['mean_jct_s']:8.2f}  p99 {s['p99_jct_s']:8.2f}")
for f in ("0.6", "0.8", "1.0", "1.3"):
    e = json.load(open(f"{sys.argv[1]}-aging-{f}.json"))
    a, b = e["policies"]["ssjf-aging"], e["policies"]["fcfs"]
    print(f"  aging threshold {f} x FCFS p99 = {e['aging']['threshold_s']:.1f} s: mean {a['mean_jct_s']:.2f}  p99 {a['p99_jct_s']:.2f} ({a['p99_jct_s'] / b['p99_jct_s']:.2f} x FCFS)")
EOF2
  [ -n "$best" ] || best=$($PY -c "import json,sys; print(round(0.6*json.load(open(sys.argv[1]))['policies']['fcfs']['p99_jct_s'],3))" "$dir.json")
  $PY -c "import sys; print(round(float(sys.argv[1])*float(sys.argv[2]),3))" "$best" "$ts"
}

scenario() {  # NAME CONFIG BATCHING MAX_BATCH LOAD N TIME_SCALE
  local name=$1 config=$2 batching=$3 max_batch=$4 load=$5 n=$6 ts=$7
  local th
  th=$(tune_aging "$name" "$batching" "$max_batch" "$load" "$n" "$ts")
  echo "live_bench: $name: aging threshold $th s (live, time_scale $ts)" >&2
  derive "$config" "$OUT/$name.yaml" "router.aging_threshold_s=$th"
  rm -rf "${OUT:?}/$name"
  /usr/bin/time -f "live_bench: $name: %e s wall" \
    $LG bench --config "$OUT/$name.yaml" --policies fcfs,ssjf,ssjf-aging --dataset arena --trace azure-conv \
      --seed 0 --load "$load" --num-requests "$n" --no-stream --timeout 3600 --out "$OUT/$name" --no-progress \
      > "$OUT/$name.txt" 2> "$OUT/$name.log"
  cat "$OUT/$name.txt"
}

sweep() {
  local ts th slo
  ts=$($PY -c "import yaml; print(yaml.safe_load(open('cluster/bench_paper.yaml'))['llm']['time_scale'])")
  local top=${SWEEP%:*}; top=${top#*:}   # STOP of START:STOP:STEP
  th=$(tune_aging sweep none 1 "$top" "$N_SWEEP" "$ts")
  slo=$($PY -c "import sys; print(round(float(sys.argv[1])*float(sys.argv[2]),3))" "$SLO_S" "$ts")
  derive cluster/bench_paper.yaml "$OUT/sweep.yaml" "router.aging_threshold_s=$th"
  rm -rf "${OUT:?}/sweep"
  /usr/bin/time -f "live_bench: sweep: %e s wall" \
    $LG bench --config "$OUT/sweep.yaml" --policies "$SWEEP_POLICIES" --dataset arena --trace azure-conv \
      --seed 0 --num-requests "$N_SWEEP" --sweep-load "$SWEEP" --slo-jct-s "$slo" --no-stream --timeout 3600 \
      --out "$OUT/sweep" --no-progress > "$OUT/sweep.txt" 2> "$OUT/sweep.log"
  cat "$OUT/sweep.txt"
}

hf() {
  derive cluster/demo.yaml "$OUT/hf.yaml"
  rm -rf "${OUT:?}/hf"
  /usr/bin/time -f "live_bench: hf: %e s wall" \
    $LG bench --config "$OUT/hf.yaml" --policies fcfs,ssjf,ssjf-aging --dataset arena --trace azure-conv \
      --seed 0 --rate "$HF_RATE" --num-requests "$N_HF" --max-tokens "$HF_MAX_TOKENS" --no-stream \
      --timeout 3600 --out "$OUT/hf" --no-progress > "$OUT/hf.txt" 2> "$OUT/hf.log"
  cat "$OUT/hf.txt"
}

ts_of() { $PY -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['llm']['time_scale'])" "$1"; }
for what in "${@:-all}"; do
  case $what in
    paper) scenario paper cluster/bench_paper.yaml none 1 0.9 "$N_PAPER" "$(ts_of cluster/bench_paper.yaml)" ;;
    cont) scenario cont cluster/bench_cont.yaml continuous 8 0.97 "$N_CONT" "$(ts_of cluster/bench_cont.yaml)" ;;
    sweep) sweep ;;
    hf) hf ;;
    all) "$0" paper cont sweep hf ;;
    *) echo "live_bench: unknown part '$what' (paper, cont, sweep, hf, all)" >&2; exit 2 ;;
  esac
done
