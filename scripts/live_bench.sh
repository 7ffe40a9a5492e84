#!/usr/bin/env bash
# Reproduce docs/live_bench.md: issue 5's live FCFS / SSJF / SSJF-aging measurements over HTTP on a
# local Ray, each with the simulator's prediction for the same workload and predictor.
#
#   scripts/live_bench.sh [paper|cont|sweep|slo|hf|hfsrpt|all]...   (default: all; on 2 cores:
#   paper 16 min, cont 19, sweep ~70, slo ~45, hf ~30 (~50 when it trains the SmolLM2 proxy first),
#   hfsrpt ~15)
#
# paper: 4 replay replicas, no batching, load 0.9      (cluster/bench_paper.yaml)
# cont : 4 replay replicas x 8 continuous slots, 0.97  (cluster/bench_cont.yaml)
# sweep: goodput of SWEEP_POLICIES on the paper-like cluster, loads 0.8..0.95, 800 requests per point
#        (the paper-like workload), SLO p90 JCT <= 45 s at time_scale 1
# slo  : goodput under a per-request JCT SLO (issue 14 item 4): SLO_POLICIES on the paper-like cluster
#        at time scale SLO_TS (0.25, as paper: at 0.125 this 2-core box fell 3-23 x behind the
#        simulation, docs/live_bench.md 1e), loads SLO_SWEEP (0.7:1.1:0.2; the policies separate
#        at 1.3), N_SLO (300) requests per point; every request carries x-slo-jct-ms =
#        SLO_JCT_S (51.9 s: 10 x the mean unloaded service time, benchmarks/slo_goodput.py) x SLO_TS;
#        goodput = the largest load at which >= 90% of requests meet it (shed and failed ones missed)
# hfsrpt: srpt on real generation (issue 14): 2 hf SmolLM2 replicas x 2 continuous slots, the demo's
#        short/long instructions and its proxy (below), fcfs vs ssjf vs srpt, seeds HFS_SEEDS
# hf   : 2 hf replicas of SmolLM2-135M on CPU (real generation, continuous batching, streaming), FCFS vs
#        SSJF vs SSJF-aging on 120 test-split requests of smollm2_replies, with the SmolLM2 proxy
#
# Environment: PROXY_ARTIFACT (default artifacts/proxy-default), OUT (default results/live),
# N_PAPER, N_CONT, N_SWEEP, N_HF (request counts), POLICIES (paper, cont), SWEEP (START:STOP:STEP), SWEEP_POLICIES,
# AGING_P99_BUDGET (see below), SLO_S (p90 JCT, s, at
# time_scale 1: scaled by the config's time_scale), HF_OUT, HF_PROXY, HF_REPLIES, HF_MAX_TOKENS, HF_SLOTS,
# HF_MAX_PROMPT_TOKENS, HF_PROFILE, HF_LOAD, HF_TRACE, HF_RATE (see hf() below).
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
N_HF=${N_HF:-120}
N_SLO=${N_SLO:-300}
SLO_TS=${SLO_TS:-0.25}
SLO_SWEEP=${SLO_SWEEP:-0.7:1.1:0.2}
SLO_JCT_S=${SLO_JCT_S:-51.9}
SLO_POLICIES=${SLO_POLICIES:-serve-default,fcfs,ssjf,ssjf-aging,srpt,slo}
POLICIES=${POLICIES:-fcfs,ssjf,ssjf-aging}  # paper and cont (e.g. serve-default,fcfs,ssjf,ssjf-aging,srpt)
mkdir -p "$OUT"
if [ "${*:-all}" != hf ] && [ "${*:-all}" != hfsrpt ]; then  # hf and hfsrpt use their own proxies
  [ -d "$ART" ] || { echo "live_bench: no proxy artifact at $ART (train it: scripts/train_default_proxy.sh, or set PROXY_ARTIFACT)" >&2; exit 2; }
  TAU=$($PY -c "import json,sys; print(round(json.load(open(sys.argv[1]+'/eval_test.json'))['all']['proxy']['kendall_tau'],3))" "$ART" 2>/dev/null || echo '?')
  echo "live_bench: proxy artifact $ART (Kendall tau on its own test split: $TAU); results in $OUT" >&2
fi

# scaled A B -> A x B rounded to ms (a time at time_scale 1 -> the same time at time_scale B)
scaled() { $PY -c "import sys; print(round(float(sys.argv[1])*float(sys.argv[2]),3))" "$1" "$2"; }

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
  scaled "$best" "$ts"
}

scenario() {  # NAME CONFIG BATCHING MAX_BATCH LOAD N TIME_SCALE
  local name=$1 config=$2 batching=$3 max_batch=$4 load=$5 n=$6 ts=$7
  local th
  th=$(tune_aging "$name" "$batching" "$max_batch" "$load" "$n" "$ts")
  echo "live_bench: $name: aging threshold $th s (live, time_scale $ts)" >&2
  local sets=("router.aging_threshold_s=$th")
  if [[ ,$POLICIES, == *,srpt,* ]]; then
    # srpt's starvation guard as the simulator's `auto`: 1.1 x the simulated FCFS p99 JCT (docs/preemption.md)
    local guard
    guard=$(srpt_guard "$OUT/$name-sim.json" "$ts")
    echo "live_bench: $name: srpt guard $guard s (live)" >&2
    sets+=("router.srpt_aging_threshold_s=$guard")
  fi
  derive "$config" "$OUT/$name.yaml" "${sets[@]}"
  rm -rf "${OUT:?}/$name"
  /usr/bin/time -f "live_bench: $name: %e s wall" \
    $BENCH --config "$OUT/$name.yaml" --policies "$POLICIES" --dataset arena --trace azure-conv \
      --seed 0 --load "$load" --num-requests "$n" --no-stream --timeout 3600 --out "$OUT/$name" --no-progress \
      > "$OUT/$name.txt" 2> "$OUT/$name.log"
  cat "$OUT/$name.txt"
}

sweep() {
  local ts th slo
  ts=$($PY -c "import yaml; print(yaml.safe_load(open('cluster/bench_paper.yaml'))['llm']['time_scale'])")
  local top=${SWEEP%:*}; top=${top#*:}   # STOP of START:STOP:STEP
  th=$(tune_aging sweep none 1 "$top" "$N_SWEEP" "$ts")
  slo=$(scaled "$SLO_S" "$ts")
  derive cluster/bench_paper.yaml "$OUT/sweep.yaml" "router.aging_threshold_s=$th"
  rm -rf "${OUT:?}/sweep"
  /usr/bin/time -f "live_bench: sweep: %e s wall" \
    $BENCH --config "$OUT/sweep.yaml" --policies "$SWEEP_POLICIES" --dataset arena --trace azure-conv \
      --seed 0 --num-requests "$N_SWEEP" --sweep-load "$SWEEP" --slo-jct-s "$slo" --no-stream --timeout 3600 \
      --out "$OUT/sweep" --no-progress > "$OUT/sweep.txt" 2> "$OUT/sweep.log"
  cat "$OUT/sweep.txt"
}

# srpt_guard SIM_JSON TIME_SCALE -> srpt's starvation guard (s, live) as the simulator's `auto`:
# 1.1 x the simulated FCFS p99 JCT (docs/preemption.md).
srpt_guard() {
  $PY -c "import json,sys; print(round(1.1*float(sys.argv[2])*json.load(open(sys.argv[1]))['policies']['fcfs']['p99_jct_s'],3))" "$1" "$2"
}

slo() {
  local ts=$SLO_TS top th guard slo
  top=${SLO_SWEEP%:*}; top=${top#*:}   # STOP of START:STOP:STEP: thresholds for the highest load
  th=$(tune_aging slo none 1 "$top" "$N_SLO" "$ts")
  guard=$(srpt_guard "$OUT/slo-sim.json" "$ts")
  slo=$(scaled "$SLO_JCT_S" "$ts")
  echo "live_bench: slo: time scale $ts, JCT SLO $slo s, aging threshold $th s, srpt guard $guard s (live)" >&2
  derive cluster/bench_paper.yaml "$OUT/slo.yaml" "llm.time_scale=$ts" "router.aging_threshold_s=$th" \
    "router.srpt_aging_threshold_s=$guard"
  rm -rf "${OUT:?}/slo"
  /usr/bin/time -f "live_bench: slo: %e s wall" \
    $BENCH --config "$OUT/slo.yaml" --policies "$SLO_POLICIES" --dataset arena --trace azure-conv \
      --seed 0 --num-requests "$N_SLO" --sweep-load "$SLO_SWEEP" --slo-jct-s "$slo" --slo-attach \
      --goodput-attainment 0.9 --no-stream --timeout 3600 --out "$OUT/slo" --no-progress \
      > "$OUT/slo.txt" 2> "$OUT/slo.log"
  cat "$OUT/slo.txt"
}

# hf: real generation. 2 `hf` replicas of SmolLM2-135M-Instruct on CPU (continuous batching, HF_SLOTS
# slots each, one torch thread each), the SmolLM2 proxy, streaming, bursty arrivals; FCFS vs SSJF vs
# SSJF-aging, each next to the simulator's run of the very same requests with the same predictor.
#  1. The proxy $HF_PROXY (default artifacts/proxy-smollm2; scripts/train_smollm2_proxy.sh trains it
#     when missing) and its test split: `proxy-model prepare` of $HF_REPLIES with the training script's
#     split settings, so no request of the bench was a training prompt.
#  2. The workload file $HF_OUT/workload.jsonl (a logs-schema dataset): every test-split reply whose
#     chat prompt fits HF_MAX_PROMPT_TOKENS (default 1024, what `collect` fed the model, so the engine
#     here sees the same ids), output_tokens = min(collected length, HF_MAX_TOKENS). Greedy decoding
#     makes the reply under a smaller cap the prefix of the collected one, so that is the length
#     this run generates; loadgen keeps it as the truth (the simulator's service time, the report) and
#     never sends it (no replay_output_tokens for an hf cluster; the proxy reads the prompt only).
#     The proxy still predicts under the 512-token cap it was trained on: every reply of at least
#     HF_MAX_TOKENS tokens is the same job here, so only the proxy's order below the cap counts.
#  3. The engine profile for the simulator: HF_PROFILE if set, else $HF_OUT/engine.json, measured on
#     this box first when missing (about 2 min): two `benchmarks/engine_profile.py` processes at once,
#     as the two replicas run (prefill iterations and continuous decode steps at 1 and HF_SLOTS slots).
#  4. The rate: HF_LOAD (default 1.3) x the saturation throughput of the 2 replicas on this workload
#     under that profile (HF_RATE overrides); arrivals HF_TRACE (default gamma:4, bursty).
#  5. `loadgen simulate` of the same workload, profile and proxy: the aging threshold
#     (choose_threshold, AGING_P99_BUDGET) and the simulated gains.
#  6. `ssjf-cluster bench` of fcfs, ssjf, ssjf-aging (greedy, streaming) on cluster/demo.yaml with the
#     engine, slots, model name, proxy and threshold set ($HF_OUT/hf.yaml); the load average is
#     sampled to $HF_OUT/loadavg.txt; then the live gains against the simulated ones and the targets
#     (SSJF mean JCT <= 0.8 x FCFS, live gain >= 0.7 x simulated, ssjf-aging p99 <= 1.2 x FCFS).
# Default size: 120 requests, HF_MAX_TOKENS 256, HF_SLOTS 2, HF_LOAD 1.3 (bursts overload the cluster:
# the regime where SJF reorders a queue). The simulator puts each policy's run at ~9 min on a
# quiet box (the profile of docs/engine_speed.md), about 30-35 min in all with the cluster starts.
# Why 256: the proxy separates "runs to the 512 cap" from shorter replies; at a 128-token cap most
# of those shorter replies also hit the run's cap, and on the test split its Kendall tau against
# min(length, cap) falls from 0.45 (cap 256) to 0.36 (cap 128) (artifacts/proxy-smollm2, chat
# prompts <= 1024 tokens); 512 would double the run.
hf() {
  local out=${HF_OUT:-$OUT/hf} proxy=${HF_PROXY:-artifacts/proxy-smollm2}
  local replies=${HF_REPLIES:-${DATA:-../shared/data}/smollm2_replies.jsonl.gz}
  local n=${N_HF:-120} cap=${HF_MAX_TOKENS:-256} slots=${HF_SLOTS:-2} load=${HF_LOAD:-1.3} trace=${HF_TRACE:-gamma:4}
  local max_prompt=${HF_MAX_PROMPT_TOKENS:-1024}
  local model=SmolLM2-135M-Instruct   # the data's model name, served under it so the proxy uses its row
  local px=.venv/bin/proxy-model
  [ -f "$replies" ] || { echo "live_bench: hf: missing $replies (set HF_REPLIES or DATA)" >&2; exit 2; }
  mkdir -p "$out"
  if [ ! -f "$proxy/proxy_config.json" ]; then
    echo "live_bench: hf: no proxy at $proxy: training it (scripts/train_smollm2_proxy.sh)" >&2
    OUT=$proxy DATA=$(dirname "$replies") bash scripts/train_smollm2_proxy.sh
  fi
  # The split of the proxy's training script (val 0.1, test 0.2, seed 0).
  $px prepare "$replies" -o "$out/prepared.parquet" --val-frac 0.1 --test-frac 0.2 --seed 0 > /dev/null
  $px evaluate "$proxy" "$out/prepared.parquet" --split test --out "$out/proxy-eval.json" > "$out/proxy-eval.txt"
  $PY - "$replies" "$out" "$cap" "$max_prompt" "$model" <<'EOF2'
import gzip, json, sys
import pyarrow.parquet as pq
from proxy_model.offline_models import resolve_model_name
from transformers import AutoTokenizer
replies, out, cap, max_prompt, model = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
split = {r["prompt_id"]: r["split"] for r in pq.read_table(f"{out}/prepared.parquet", columns=["prompt_id", "split"]).to_pylist()}
path, kwargs = resolve_model_name("smollm2")
tok = AutoTokenizer.from_pretrained(path, **kwargs)
opener = gzip.open if open(replies, "rb").read(2) == b"\x1f\x8b" else open
kept = long_prompt = 0
at_cap = []
with opener(replies, "rt", encoding="utf-8") as f, open(f"{out}/workload.jsonl", "w") as w:
    for line in f:
        if not line.strip():
            continue
        r = json.loads(line)
        if split.get(r["prompt_id"]) != "test":
            continue
        ids = tok.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        if len(ids) > max_prompt:
            long_prompt += 1
            continue
        length = min(int(r["output_tokens"]), cap)
        at_cap.append(length >= cap)
        w.write(json.dumps({"prompt_id": r["prompt_id"], "messages": r["messages"], "model": model,
                            "output_tokens": length, "source": r.get("source", "smollm2_replies")}) + "\n")
        kept += 1
print(f"live_bench: hf: workload {out}/workload.jsonl: {kept} test-split replies ({long_prompt} left out: chat prompt "
      f"over {max_prompt} tokens); {sum(at_cap)} of {kept} reach max_tokens {cap}", file=sys.stderr)
EOF2
  local profile=${HF_PROFILE:-$out/engine.json}
  if [ ! -f "$profile" ]; then
    # Two processes at once, one torch thread each: what each of the two replicas gets on this box.
    echo "live_bench: hf: measuring the engine profile (2 processes, continuous, 1 and $slots slots)" >&2
    local i
    for i in 1 2; do
      OMP_NUM_THREADS=1 $PY benchmarks/engine_profile.py measure --threads 1 --slots "1,$slots" \
        --out "$out/engine_$i.json" > "$out/engine_$i.txt" 2>&1 &
    done
    wait
    $PY benchmarks/engine_profile.py fit "$out/engine_1.json" "$out/engine_2.json" --out "$profile" >&2
  fi
  local rate
  rate=$($PY - "$out" "$profile" "$trace" "$n" "$cap" "$slots" "$load" <<'EOF2'
import sys
from dataclasses import replace
from loadgen.predictors_sim import predict_table
from loadgen.simulator import SimWorkload, measure_saturation
from loadgen.workload import WorkloadSpec, build_workload
from router.config import SchedulerConfig
from router.cost_model import EngineProfile
out, profile, trace, n, cap, slots, load = sys.argv[1:8]
table = build_workload(WorkloadSpec(dataset=f"{out}/workload.jsonl", trace=trace, rate=1.0, num_requests=int(n),
                                    seed=0, max_tokens=int(cap)))
work = SimWorkload.from_table(table, predict_table("oracle", table, 0))
cfg = SchedulerConfig(policy="fcfs", batching="continuous", max_batch=int(slots))
sat = measure_saturation(work, cfg, EngineProfile.load(profile), 2)
print(f"live_bench: hf: saturation {sat['saturation_rps']:.4f} req/s (2 replicas x {slots} slots, this workload)", file=sys.stderr)
print(round(float(load) * sat["saturation_rps"], 4))
EOF2
  )
  rate=${HF_RATE:-$rate}
  local th
  th=$(choose_threshold "$out/sim" "$proxy" --dataset "$out/workload.jsonl" --trace "$trace" --seed 0 --rate "$rate" \
         --num-requests "$n" --max-tokens "$cap" --replicas 2 --batching continuous --max-batch "$slots" \
         --balancer least-work --engine-profile "$profile")
  echo "$th" > "$out/threshold.txt"
  echo "live_bench: hf: rate $rate req/s (load $load), aging threshold $th s" >&2
  ART=$proxy derive cluster/demo.yaml "$out/hf.yaml" "router.aging_threshold_s=$th" "router.balancer=least-work" \
    "llm.engine=hf" "llm.model=smollm2" "llm.served_models=[$model]" "llm.num_replicas=2" "llm.batching=continuous" \
    "llm.max_batch=$slots" "llm.torch_threads=1" "ingress.default_max_tokens=$cap"
  rm -rf "${out:?}/bench"
  (while sleep 15; do echo "$(date +%s) $(cat /proc/loadavg)"; done > "$out/loadavg.txt") &
  local sampler=$!
  /usr/bin/time -f "live_bench: hf: %e s wall" \
    $BENCH --config "$out/hf.yaml" --policies fcfs,ssjf,ssjf-aging --dataset "$out/workload.jsonl" \
      --trace "$trace" --seed 0 --rate "$rate" --num-requests "$n" --max-tokens "$cap" --temperature 0 \
      --model "$model" --stream --timeout 3600 --out "$out/bench" --no-progress > "$out/bench.txt" 2> "$out/bench.log" \
    || { kill "$sampler"; tail -20 "$out/bench.log" >&2; exit 1; }
  kill "$sampler"
  cat "$out/bench.txt"
  $PY - "$out" <<'EOF2'
import json, sys
import pyarrow.parquet as pq
out = sys.argv[1]
sim = json.load(open(f"{out}/sim.json"))
aging = {f: json.load(open(f"{out}/sim-aging-{f}.json")) for f in ("0.6", "0.8", "1.0", "1.3")}
live = json.load(open(f"{out}/bench/bench.json"))["policies"]
ev = json.load(open(f"{out}/proxy-eval.json"))
print(f"proxy on its test split (1 model): Kendall tau {ev['all']['proxy']['kendall_tau']:.3f}; on these requests "
      f"(lengths capped here): {sim['predictor_kendall_tau']:.3f}")
print(f"simulated (engine {out}/engine.json or HF_PROFILE, predictor {sim['predictor']}):")
for p, s in sim["policies"].items():
    print(f"  {p:11s} mean {s['mean_jct_s']:7.2f}  p50 {s['p50_jct_s']:7.2f}  p90 {s['p90_jct_s']:7.2f}  p99 {s['p99_jct_s']:7.2f}")
for f, e in aging.items():
    a = e["policies"]["ssjf-aging"]
    print(f"  aging {f} x FCFS p99 = {e['aging']['threshold_s']:.1f} s: mean {a['mean_jct_s']:.2f} p99 {a['p99_jct_s']:.2f}")
loads = [float(line.split()[1]) for line in open(f"{out}/loadavg.txt") if line.strip()]
if loads:
    print(f"load average (1 min) during the bench: mean {sum(loads) / len(loads):.2f}, min {min(loads):.2f}, max {max(loads):.2f}")
base, sbase = live["fcfs"], sim["policies"]["fcfs"]
# Far from 1: the box ran at another speed than the profile measured at the start, so the live load
# (and the queue that SJF reorders) differs from the simulated one.
print(f"live FCFS mean JCT / simulated: {base['mean_jct_s'] / sbase['mean_jct_s']:.2f}")
# The simulated ssjf-aging of the threshold the live run used is the one choose_threshold picked.
picked = min(aging.values(), key=lambda e: abs(e["aging"]["threshold_s"] - float(open(f"{out}/threshold.txt").read())))
sim_of = {"fcfs": sbase, "ssjf": sim["policies"]["ssjf"], "ssjf-aging": picked["policies"]["ssjf-aging"]}
ok = True
for p, s in live.items():
    g = 1 - s["mean_jct_s"] / base["mean_jct_s"]
    sg = 1 - sim_of[p]["mean_jct_s"] / sbase["mean_jct_s"]
    line = (f"  live {p:11s} mean {s['mean_jct_s']:7.2f} ({100 * g:+.1f}% gain; simulated {100 * sg:+.1f}%)  "
            f"p50 {s['p50_jct_s']:.2f}  p90 {s['p90_jct_s']:.2f}  p99 {s['p99_jct_s']:.2f} ({s['p99_jct_s'] / base['p99_jct_s']:.2f} x FCFS)")
    if p != "fcfs":
        line += f"  live/simulated gain {g / sg:.2f}" if sg > 0 else "  live/simulated gain n/a"
    print(line)
checks = [("SSJF mean JCT <= 0.80 x FCFS", live["ssjf"]["mean_jct_s"] <= 0.8 * base["mean_jct_s"],
           f"{live['ssjf']['mean_jct_s'] / base['mean_jct_s']:.2f} x")]
sg = 1 - sim["policies"]["ssjf"]["mean_jct_s"] / sbase["mean_jct_s"]
g = 1 - live["ssjf"]["mean_jct_s"] / base["mean_jct_s"]
checks.append(("SSJF live gain >= 0.7 x simulated", sg > 0 and g >= 0.7 * sg, f"{g:.3f} vs {sg:.3f}"))
if "ssjf-aging" in live:
    checks.append(("ssjf-aging p99 <= 1.2 x FCFS", live["ssjf-aging"]["p99_jct_s"] <= 1.2 * base["p99_jct_s"],
                   f"{live['ssjf-aging']['p99_jct_s'] / base['p99_jct_s']:.2f} x"))
for name, passed, value in checks:
    print(f"  target {name}: {'met' if passed else 'NOT met'} ({value})")
# The box's speed in each run: the first two requests meet idle replicas, so their JCT is mostly service
# time. And whether the engine generated the workload's lengths (greedy: the collected reply, cut at
# max_tokens; +1 where the reply ends with EOS, which the engine's usage counts).
for p in live:
    recs = pq.read_table(f"{out}/bench/{p}/records.parquet").to_pylist()
    first = sorted(recs, key=lambda r: r["scheduled_at"])[:2]
    same = sum(r["num_output_tokens"] is not None and 0 <= r["num_output_tokens"] - r["expected_output_tokens"] <= 1
               for r in recs)
    print(f"  speed check {p:11s} " + ", ".join(f"{r['num_output_tokens']} tokens in {r['jct_s']:.1f} s" for r in first)
          + f"; output lengths as in the workload (or +1): {same} of {len(recs)}")
EOF2
}

# hfsrpt: the demo's real stage (cluster/demo.yaml, proxy_model/data/demo_mix.jsonl: short answers of
# 2-46 tokens and long ones; artifacts/proxy-demo-smollm2, trained by scripts/demo_proxy.py when
# missing), but with continuous batching (HFS_SLOTS 2 per replica) and max_tokens HFS_MAX_TOKENS (128)
# so that a long answer has progress points to be preempted at: srpt re-predicts every 16 tokens
# (the prompt-only prediction minus the tokens so far: no remaining-length artifact for SmolLM2) and
# never preempts in the last 16; its starvation guard and ssjf-aging's threshold are the demo's 15 s.
# HFS_N (32) requests in Gamma bursts (CV 4) at HFS_RATE (1.0) req/s, greedy, streamed; one bench
# of fcfs, ssjf, srpt per seed of HFS_SEEDS (0 1). The report gives srpt's preemptions and the
# generated tokens they sent back to prefill (the cost).
hfsrpt() {
  local out=$OUT/hfsrpt proxy=artifacts/proxy-demo-smollm2 seed
  local n=${HFS_N:-32} cap=${HFS_MAX_TOKENS:-128} slots=${HFS_SLOTS:-2} rate=${HFS_RATE:-1.0}
  mkdir -p "$out"
  [ -f "$proxy/proxy_config.json" ] || $PY scripts/demo_proxy.py --out "$proxy" >&2
  ART=$proxy derive cluster/demo.yaml "$out/hfsrpt.yaml" "llm.batching=continuous" "llm.max_batch=$slots" \
    "ingress.default_max_tokens=$cap" "router.repredict_every_tokens=16" "router.preempt_min_remaining_tokens=16" \
    "router.aging_threshold_s=15" "router.srpt_aging_threshold_s=15"
  for seed in ${HFS_SEEDS:-0 1}; do
    rm -rf "${out:?}/seed$seed"
    /usr/bin/time -f "live_bench: hfsrpt seed $seed: %e s wall" \
      $BENCH --config "$out/hfsrpt.yaml" --policies fcfs,ssjf,srpt --dataset proxy_model/data/demo_mix.jsonl \
        --trace gamma:4 --rate "$rate" --num-requests "$n" --max-tokens "$cap" --temperature 0 --seed "$seed" \
        --stream --timeout 600 --out "$out/seed$seed" --no-progress > "$out/seed$seed.txt" 2> "$out/seed$seed.log"
    cat "$out/seed$seed.txt"
  done
}

ts_of() { $PY -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['llm']['time_scale'])" "$1"; }
for what in "${@:-all}"; do
  case $what in
    paper) scenario paper cluster/bench_paper.yaml none 1 0.9 "$N_PAPER" "$(ts_of cluster/bench_paper.yaml)" ;;
    cont) scenario cont cluster/bench_cont.yaml continuous 8 0.97 "$N_CONT" "$(ts_of cluster/bench_cont.yaml)" ;;
    sweep) sweep ;;
    slo) slo ;;
    hf) hf ;;
    hfsrpt) hfsrpt ;;
    all) "$0" paper cont sweep slo hf ;;
    *) echo "live_bench: unknown part '$what' (paper, cont, sweep, slo, hf, hfsrpt, all)" >&2; exit 2 ;;
  esac
done
