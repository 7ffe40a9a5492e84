#!/usr/bin/env bash
# Reproduce docs/live_bench.md: issue 5's live FCFS / SSJF / SSJF-aging measurements over HTTP on a
# local Ray, each with the simulator's prediction for the same workload and predictor.
#
#   scripts/live_bench.sh [paper|cont|sweep|hf|all]...   (default: all; about 60 min on 2 cores:
#   paper 16, cont 19, sweep ~70, hf ~30, ~50 with its collect and train steps)
#
# paper: 4 replay replicas, no batching, load 0.9      (cluster/bench_paper.yaml)
# cont : 4 replay replicas x 8 continuous slots, 0.97  (cluster/bench_cont.yaml)
# sweep: goodput of SWEEP_POLICIES on the paper-like cluster, loads 0.8..0.95, 800 requests per point
#        (the paper-like workload), SLO p90 JCT <= 45 s at time_scale 1
# hf   : 2 hf replicas of SmolLM2-135M on CPU (real generation), FCFS vs SSJF vs SSJF-aging
#
# Environment: PROXY_ARTIFACT (default artifacts/proxy-default), OUT (default results/live),
# N_PAPER, N_CONT, N_SWEEP, N_HF (request counts), SWEEP (START:STOP:STEP), SWEEP_POLICIES,
# AGING_P99_BUDGET (see below), SLO_S (p90 JCT, s, at
# time_scale 1: scaled by the config's time_scale), HF_OUT, HF_DATA, HF_PROXY, HF_COLLECT, HF_MAX_TOKENS,
# HF_TOKS, HF_LOAD, HF_TRACE, HF_RATE (see hf() below).
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
BENCH=".venv/bin/ssjf-cluster bench"
ART=${PROXY_ARTIFACT:-artifacts/proxy-default}
OUT=${OUT:-results/live}
N_PAPER=${N_PAPER:-800}
N_CONT=${N_CONT:-800}
N_SWEEP=${N_SWEEP:-800}
SWEEP=${SWEEP:-0.8:0.95:0.05}
SLO_S=${SLO_S:-45}
SWEEP_POLICIES=${SWEEP_POLICIES:-fcfs,ssjf,ssjf-aging}
AGING_P99_BUDGET=${AGING_P99_BUDGET:-1.2}
N_HF=${N_HF:-40}
[ -d "$ART" ] || { echo "live_bench: no proxy artifact at $ART (train it: scripts/train_default_proxy.sh, or set PROXY_ARTIFACT)" >&2; exit 2; }
mkdir -p "$OUT"
TAU=$($PY -c "import json,sys; print(round(json.load(open(sys.argv[1]+'/eval_test.json'))['all']['proxy']['kendall_tau'],3))" "$ART" 2>/dev/null || echo '?')
echo "live_bench: proxy artifact $ART (Kendall tau on its own test split: $TAU); results in $OUT" >&2

# derive CONFIG OUTFILE SECTION.KEY=VALUE...: a validated copy of a cluster config with the proxy
# artifact $ART and the overrides set (`ssjf-cluster derive`; a misspelt key stops the run).
derive() {
  local src=$1 dst=$2; shift 2
  local sets=() pair
  for pair in "$@"; do sets+=(--set "$pair"); done
  .venv/bin/ssjf-cluster derive "$src" "$dst" --proxy "$ART" "${sets[@]}"
}

# choose_threshold DIR PROXY SIM_ARGS... -> prints the aging threshold (s, simulated time): the
# largest of 0.6/0.8/1.0/1.3 x the simulated FCFS p99 JCT whose simulated ssjf-aging p99 stays within
# AGING_P99_BUDGET x FCFS's (none: 0.6 x). Writes DIR (requests), DIR.json, DIR-aging-F.json.
choose_threshold() {
  local dir=$1 proxy=$2; shift 2
  local common=("$@" --aging-rule threshold --json)
  $LG simulate "${common[@]}" --predictor "proxy:$proxy" --policies fcfs,ssjf,ssjf-aging,oracle \
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
print(f"live_bench: simulated, predictor {d['predictor']} tau {d['predictor_kendall_tau']:.3f}:")
for p, s in d["policies"].items():
    print(f"  {p:11s} mean {s['mean_jct_s']:8.2f}  p99 {s['p99_jct_s']:8.2f}")
for f in ("0.6", "0.8", "1.0", "1.3"):
    e = json.load(open(f"{sys.argv[1]}-aging-{f}.json"))
    a, b = e["policies"]["ssjf-aging"], e["policies"]["fcfs"]
    print(f"  aging threshold {f} x FCFS p99 = {e['aging']['threshold_s']:.1f} s: mean {a['mean_jct_s']:.2f}  p99 {a['p99_jct_s']:.2f} ({a['p99_jct_s'] / b['p99_jct_s']:.2f} x FCFS)")
EOF2
  [ -n "$best" ] || best=$($PY -c "import json,sys; print(round(0.6*json.load(open(sys.argv[1]))['policies']['fcfs']['p99_jct_s'],3))" "$dir.json")
  echo "$best"
}

# tune_aging NAME BATCHING MAX_BATCH LOAD N TIME_SCALE -> prints the live aging threshold (s).
# The simulator runs at time_scale 1 (JCTs scale linearly with time_scale at a fixed load).
tune_aging() {
  local name=$1 batching=$2 max_batch=$3 load=$4 n=$5 ts=$6 best
  best=$(choose_threshold "$OUT/$name-sim" "$ART" --dataset arena --trace azure-conv --seed 0 --batching "$batching" \
           --max-batch "$max_batch" --replicas 4 --load "$load" --num-requests "$n")
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
    $BENCH --config "$OUT/$name.yaml" --policies fcfs,ssjf,ssjf-aging --dataset arena --trace azure-conv \
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
    $BENCH --config "$OUT/sweep.yaml" --policies "$SWEEP_POLICIES" --dataset arena --trace azure-conv \
      --seed 0 --num-requests "$N_SWEEP" --sweep-load "$SWEEP" --slo-jct-s "$slo" --no-stream --timeout 3600 \
      --out "$OUT/sweep" --no-progress > "$OUT/sweep.txt" 2> "$OUT/sweep.log"
  cat "$OUT/sweep.txt"
}

# hf: greedy SmolLM2-135M on its own lengths. Steps (each skipped when its output exists):
#  1. `proxy-model collect` SmolLM2's greedy reply lengths (cap HF_MAX_TOKENS) on the first HF_COLLECT
#     Alpaca instructions (short instructions: lengths spread from 2 tokens to the cap; arena prompts
#     run almost all to the cap) into $HF_DATA/collected.jsonl;
#  2. `prepare` it (split by prompt: 65% train, 10% val, 25% held out), train the proxy
#     $HF_PROXY for model "smollm2" (fine-tuned from $ART with --init-from), `evaluate` it on the
#     held-out split ($HF_OUT/proxy-eval.json);
#  3. the held-out prompts with their true lengths as a logs JSONL dataset ($HF_OUT/heldout.jsonl);
#     the arrival rate = HF_LOAD x the 2 replicas' capacity, from the held-out mean length at
#     HF_TOKS tokens/s per replica (default 14: the speed of one replica on a quiet 2-core box; the
#     true lengths set the offered load only; they are never sent); arrivals HF_TRACE (default
#     gamma:4, bursty: the first 40 gaps of azure-conv are calm, so no queue would form);
#  4. `loadgen simulate` of the same workload (engine profile: HF_TOKS tokens/s, batch 1) picks the
#     aging threshold (choose_threshold, AGING_P99_BUDGET) and gives the simulated gains;
#  5. `ssjf-cluster bench` of fcfs, ssjf, ssjf-aging with --temperature 0 on cluster/demo.yaml with the
#     proxy and threshold set ($HF_OUT/hf.yaml); the load average is sampled to $HF_OUT/loadavg.txt.
hf() {
  local out=${HF_OUT:-$OUT/hf} data=${HF_DATA:-artifacts/data/smollm2} proxy=${HF_PROXY:-artifacts/proxy-smollm2}
  local alpaca=${DATA:-../shared/data}/llamafactory_alpaca_en_demo.json
  local n=${N_HF:-40} cap=${HF_MAX_TOKENS:-256} toks=${HF_TOKS:-14} load=${HF_LOAD:-1.0} trace=${HF_TRACE:-gamma:4}
  local px=.venv/bin/proxy-model
  mkdir -p "$out" "$data"
  if [ ! -f "$data/collected.jsonl" ]; then
    [ -f "$alpaca" ] || { echo "live_bench: hf: missing $alpaca (set DATA=...)" >&2; exit 2; }
    OMP_NUM_THREADS=1 $px collect "$alpaca" -o "$data/collected.jsonl" --model smollm2 --model-name smollm2 \
      --max-new-tokens "$cap" --batch-size 16 --limit "${HF_COLLECT:-256}"
  fi
  [ -f "$data/prepared.parquet" ] || $px prepare "$data/collected.jsonl" -o "$data/prepared.parquet" \
    --val-frac 0.1 --test-frac 0.25 --seed 0
  [ -f "$proxy/proxy_config.json" ] || $px train "$data/prepared.parquet" -o "$proxy" --init-from "$ART" --head regression \
    --epochs 8 --lr 8e-5 --head-lr 1e-3 --batch-size 16 --max-length 128 --rank-loss-weight 0.5 --seed 0 --no-progress
  $px evaluate "$proxy" "$data/prepared.parquet" --split test --out "$out/proxy-eval.json" | tee "$out/proxy-eval.txt"
  local rate
  rate=$($PY - "$data" "$out" "$toks" "$load" "$cap" <<'EOF2'
import json, sys
import pyarrow.parquet as pq
data, out, toks, load, cap = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
test = {r["prompt_id"] for r in pq.read_table(f"{data}/prepared.parquet").to_pylist() if r["split"] == "test"}
rows = [json.loads(line) for line in open(f"{data}/collected.jsonl")]
held = [r for r in rows if r["prompt_id"] in test and r["output_tokens"] > 0]
with open(f"{out}/heldout.jsonl", "w") as f:
    for r in held:
        f.write(json.dumps({k: r[k] for k in ("prompt_id", "messages", "model", "output_tokens", "source")}) + "\n")
# Batch 1 on CPU: one decode step costs 1/toks s; prefill ~4 ms per prompt token.
json.dump({"name": "smollm2-135m-cpu", "source": f"live_bench hf: {toks:g} tokens/s per replica, batch 1",
           "overhead_s": 0.0, "per_seq_s": 0.0, "weights_floor_s": 1 / toks, "per_token_s": 0.004,
           "per_context_token_s": 0.0}, open(f"{out}/engine.json", "w"))
mean = sum(min(r["output_tokens"], cap) for r in held) / len(held)
print(f"live_bench: hf: {len(held)} held-out prompts, mean true length {mean:.1f} tokens "
      f"({sum(r['output_tokens'] >= cap for r in held)} at the cap {cap})", file=sys.stderr)
print(round(load * 2 / (0.3 + mean / toks), 4))
EOF2
  )
  rate=${HF_RATE:-$rate}
  local th
  th=$(choose_threshold "$out/sim" "$proxy" --dataset "$out/heldout.jsonl" --trace "$trace" --seed 0 --rate "$rate" \
         --num-requests "$n" --max-tokens "$cap" --replicas 2 --batching none --balancer least-work \
         --engine-profile "$out/engine.json")
  echo "live_bench: hf: rate $rate req/s (load $load at $toks tokens/s per replica), aging threshold $th s" >&2
  ART=$proxy derive cluster/demo.yaml "$out/hf.yaml" "router.aging_threshold_s=$th"
  rm -rf "${out:?}/bench"
  (while sleep 15; do echo "$(date +%s) $(cat /proc/loadavg)"; done > "$out/loadavg.txt") &
  local sampler=$!
  /usr/bin/time -f "live_bench: hf: %e s wall" \
    $BENCH --config "$out/hf.yaml" --policies fcfs,ssjf,ssjf-aging --dataset "$out/heldout.jsonl" \
      --trace "$trace" --seed 0 --rate "$rate" --num-requests "$n" --max-tokens "$cap" --temperature 0 \
      --model smollm2 --no-stream --timeout 3600 --out "$out/bench" --no-progress > "$out/bench.txt" 2> "$out/bench.log" \
    || { kill "$sampler"; exit 1; }
  kill "$sampler"
  cat "$out/bench.txt"
  $PY - "$out" <<'EOF2'
import json, sys
out = sys.argv[1]
sim = {f: json.load(open(f"{out}/sim-aging-{f}.json")) for f in ("0.6", "0.8", "1.0", "1.3")}
live = json.load(open(f"{out}/bench/bench.json"))["policies"]
cfg = json.load(open(f"{out}/sim.json"))
print(f"simulated (engine.json, predictor tau {cfg['predictor_kendall_tau']:.3f}):")
for p, s in cfg["policies"].items():
    print(f"  {p:11s} mean {s['mean_jct_s']:7.2f}  p50 {s['p50_jct_s']:7.2f}  p90 {s['p90_jct_s']:7.2f}  p99 {s['p99_jct_s']:7.2f}")
for f, e in sim.items():
    a = e["policies"]["ssjf-aging"]
    print(f"  aging {f} x FCFS p99 = {e['aging']['threshold_s']:.1f} s: mean {a['mean_jct_s']:.2f} p99 {a['p99_jct_s']:.2f}")
loads = [float(line.split()[1]) for line in open(f"{out}/loadavg.txt") if line.strip()]
if loads:
    print(f"load average (1 min) during the bench: mean {sum(loads) / len(loads):.2f}, min {min(loads):.2f}, max {max(loads):.2f}")
base = live["fcfs"]
for p, s in live.items():
    print(f"  live {p:11s} mean {s['mean_jct_s']:7.2f} ({100 * (1 - s['mean_jct_s'] / base['mean_jct_s']):+.1f}% gain)  "
          f"p50 {s['p50_jct_s']:.2f}  p90 {s['p90_jct_s']:.2f}  p99 {s['p99_jct_s']:.2f}")
# The box's speed in each run: the first two requests meet idle replicas, so their JCT is pure service
# time. Runs that differ here differ in machine speed, not only in scheduling (2 shared cores).
import pyarrow.parquet as pq
for p in live:
    first = sorted(pq.read_table(f"{out}/bench/{p}/records.parquet").to_pylist(), key=lambda r: r["scheduled_at"])[:2]
    print(f"  speed check {p:11s} " + ", ".join(f"{r['num_output_tokens']} tokens in {r['jct_s']:.1f} s = "
                                                f"{r['num_output_tokens'] / r['jct_s']:.1f} tokens/s" for r in first))
EOF2
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
