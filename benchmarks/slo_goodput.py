"""SLO goodput in the simulator: for one fixed SLO, the largest load each policy sustains.

Every request carries the same completion-time objective (``slo_jct_s``; optionally a TTFT one). Per
scenario and load, each policy runs on the identical workload (same prompts, arrivals, predictions);
its *attainment* is the share of requests that met their SLO (shed or unfinished ones missed, see
``loadgen.summary.slo_attainment``), and its *goodput* the largest swept load at which attainment is
at least ``--target`` there and at every smaller swept load (docs/slo.md).

Scenarios (``--dataset arena --trace azure-conv --seed 0``, 4 replicas, least-work, the default 7B
engine, prompt-only predictions ``noisy:0.6`` as the other benchmarks use):

- paper-like: ``--batching none``;
- continuous: 8 slots per replica.

Policies: fcfs, ssjf, ssjf-aging (threshold rule), srpt (the defaults of SchedulerConfig, measured
re-predictor, guard 1.1 x FCFS p99 at that load as ``loadgen simulate`` sets it), slo defer, slo shed.

The SLO: ``--slo-x`` times the mean *unloaded* service time (each request alone on an idle replica,
simulated), so it scales with the engine and the workload; by default 10, about the longest reply's
unloaded time here, so on an idle cluster nearly every request can meet it and what misses under load
is queueing, not the request itself (the table header gives the share that cannot meet it even alone).

The slo policy starts its seconds-per-token estimate from the engine profile (one decode step of a
full replica, what an operator reads off a profile) and its first-token estimate from the prefill of
the mean prompt; it learns the rest from completions. Its guard is ``--guard-x`` times the mean
unloaded service time (default 0: SchedulerConfig's default; docs/slo.md gives the sensitivity).
ssjf-aging's threshold is ``--aging-x`` x FCFS's p99 JCT at the same load (1.3: loadgen simulate's
auto rule; thresholds tied to the SLO did worse, docs/slo.md).

    .venv/bin/python benchmarks/slo_goodput.py                      # both scenarios (~3 min on 2 cores)
    .venv/bin/python benchmarks/slo_goodput.py --scenario paper-like --loads 0.5:1.2:0.1 --slo-ttft-s 10
    .venv/bin/python benchmarks/slo_goodput.py --json out.json --table docs/slo-goodput.md
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from loadgen.options import WorkloadOptions
from loadgen.predictors_sim import PredictorSpec, predict_table
from loadgen.repredict_sim import RepredictorSpec
from loadgen.simulator import SimWorkload, measure_saturation, simulate
from loadgen.summary import fmt, markdown_row, markdown_rule, slo_attainment, summarize
from router import SchedulerConfig
from router.cost_model import EngineProfile

SCENARIOS = {
    "paper-like": dict(title="paper-like (none, 4 replicas)", batching="none", max_batch=1),
    "continuous": dict(title="continuous (8 slots x 4 replicas)", batching="continuous", max_batch=8),
}
POLICIES = ("fcfs", "ssjf", "ssjf-aging", "srpt", "slo defer", "slo shed")
REPLICAS = 4
# As loadgen simulate's 'auto' thresholds (loadgen.cmd_simulate): x FCFS p99 JCT at the same load.
SRPT_GUARD_X = 1.1


def parse_loads(value: str) -> list[float]:
    start, stop, step = (float(x) for x in value.split(":"))
    if not (0 < start <= stop and step > 0):
        raise argparse.ArgumentTypeError(f"need 0 < START <= STOP and STEP > 0, got {value!r}")
    n = int(math.floor((stop - start) / step + 1e-9)) + 1
    return [round(start + i * step, 10) for i in range(n)]


def goodput(points: list[tuple[float, float | None]], target: float) -> float | None:
    """The largest load whose attainment, and every smaller load's, is at least ``target`` (None: not even
    the smallest)."""
    best = None
    for load, attained in sorted(points):
        if attained is None or attained < target:
            break
        best = load
    return best


def unloaded_service(work: SimWorkload, base: SchedulerConfig, engine: EngineProfile) -> np.ndarray:
    """Each request's service time alone on an idle replica (arrivals far apart, one replica)."""
    n = len(work)
    gap = 1e6  # longer than any single request
    alone = replace(work, arrival_s=np.arange(n) * gap, slo_ttft_s=None, slo_jct_s=None)
    res = simulate(alone, replace(base, policy="fcfs"), engine, 1, record_first_token=False)
    return res.finished_at - res.arrival_at


def policy_config(name: str, base: SchedulerConfig, fcfs_p99: float, aging_threshold_s: float) -> tuple:
    """(SchedulerConfig, simulate kwargs) of one policy row."""
    if name == "ssjf-aging":
        return replace(base, policy="ssjf-aging", aging_rule="threshold", aging_threshold_s=aging_threshold_s), {}
    if name == "srpt":
        return (replace(base, policy="srpt", srpt_aging_threshold_s=SRPT_GUARD_X * fcfs_p99),
                {"repredictor": RepredictorSpec("measured")})
    if name.startswith("slo "):
        return replace(base, policy="slo", slo_infeasible=name.split()[1]), {}
    return replace(base, policy=name), {}


def run_scenario(key: str, args) -> dict:
    sc = SCENARIOS[key]
    engine = EngineProfile.default()
    opts = WorkloadOptions(dataset=args.dataset, trace=args.trace, num_requests=args.num_requests, seed=args.seed)
    base = SchedulerConfig(policy="fcfs", batching=sc["batching"], max_batch=sc["max_batch"], seed=args.seed)
    # The prompt draw does not depend on the rate: one prediction per request serves every load.
    pilot = replace(opts, rate=1.0).build()
    predicted = predict_table(PredictorSpec.parse(args.predictor), pilot, args.seed)
    pilot_work = SimWorkload.from_table(pilot, predicted)
    saturation = measure_saturation(pilot_work, base, engine, REPLICAS)["saturation_rps"]
    alone = unloaded_service(pilot_work, base, engine)
    mean_alone = float(alone.mean())
    slo_jct = args.slo_x * mean_alone
    slo_ttft = args.slo_ttft_s
    mean_prompt = float(pilot_work.num_prompt_tokens.mean())
    base = replace(base, slo_seconds_per_token=engine.decode_step_s(sc["max_batch"]),
                   slo_first_token_s=engine.iteration_time_s(round(mean_prompt), 1, 0),
                   slo_guard_s=args.guard_x * mean_alone)
    result = {"key": key, "title": sc["title"], "saturation_rps": saturation, "mean_unloaded_s": mean_alone,
              "slo_jct_s": slo_jct, "slo_ttft_s": slo_ttft, "infeasible_alone": float((alone > slo_jct).mean()),
              "slo_seconds_per_token_start": base.slo_seconds_per_token,
              "slo_first_token_s": base.slo_first_token_s, "slo_guard_s": base.slo_guard_s,
              "aging": args.aging, "rows": {p: [] for p in args.policies}}
    for load in args.loads:
        t0 = time.perf_counter()
        table = replace(opts, load=load, slo_jct_s=slo_jct, slo_ttft_s=slo_ttft).build(saturation)
        work = SimWorkload.from_table(table, predicted)
        fcfs = simulate(work, replace(base, policy="fcfs"), engine, REPLICAS)
        fcfs_p99 = summarize(fcfs.arrival_at, fcfs.finished_at)["p99_jct_s"]
        threshold = (args.aging_x * fcfs_p99) if args.aging == "fcfs-p99" else (args.aging_x * slo_jct)
        for name in args.policies:
            config, extra = policy_config(name, base, fcfs_p99, threshold)
            res = fcfs if name == "fcfs" else simulate(work, config, engine, REPLICAS, **extra)
            att = slo_attainment(res.arrival_at, res.first_token_at, res.finished_at, work.slo_ttft_s,
                                 work.slo_jct_s, shed=res.shed)
            s = summarize(res.arrival_at, res.finished_at)
            point = {"load": load, "attainment": att["slo_attainment"], "num_shed": att["num_shed"],
                     "mean_jct_s": s["mean_jct_s"], "p99_jct_s": s["p99_jct_s"], "wall_s": res.wall_s}
            if name.startswith("slo "):
                point["seconds_per_token_learned"] = res.extra["seconds_per_token"]
            result["rows"][name].append(point)
        print(f"  {key} load {load:g}: " + ", ".join(
            f"{p} {fmt(result['rows'][p][-1]['attainment'])}" for p in args.policies)
              + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    result["goodput"] = {p: goodput([(x["load"], x["attainment"]) for x in rows], args.target)
                         for p, rows in result["rows"].items()}
    return result


def markdown(result: dict, target: float) -> str:
    loads = [x["load"] for x in next(iter(result["rows"].values()))]
    ttft = f", TTFT {result['slo_ttft_s']:g} s" if result["slo_ttft_s"] else ""
    out = [f"### {result['title']}\n",
           f"saturation {result['saturation_rps']:.4f} req/s; mean unloaded service {result['mean_unloaded_s']:.2f} s; "
           f"SLO: JCT {result['slo_jct_s']:.1f} s{ttft} ({result['infeasible_alone']:.2%} of requests miss it even "
           f"alone); slo policy: start {result['slo_seconds_per_token_start'] * 1e3:.2f} ms/token, first token "
           f"{result['slo_first_token_s'] * 1e3:.0f} ms, guard {result['slo_guard_s']:.1f} s. Attainment per load; "
           f"goodput: the largest load with attainment >= {target:g} there and at every smaller load.\n"]
    header = ["policy", "goodput", *(f"{load:g}" for load in loads)]
    out += [markdown_row(header), markdown_rule(len(header))]
    for name, rows in result["rows"].items():
        cells = []
        for x in rows:
            cell = fmt(x["attainment"], "{:.3f}")
            if x["num_shed"]:
                cell += f" ({x['num_shed']} shed)"
            cells.append(cell)
        out.append(markdown_row([name, fmt(result["goodput"][name], "{:g}"), *cells]))
    learned = [x.get("seconds_per_token_learned") for x in result["rows"].get("slo defer", [])]
    if learned:
        out.append("\nslo defer's learned seconds per token at the end of each run: "
                   + ", ".join(f"{v * 1e3:.2f} ms" for v in learned if v is not None) + ".")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=["all", *SCENARIOS], default="all")
    ap.add_argument("--dataset", default="arena")
    ap.add_argument("--trace", default="azure-conv")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-requests", type=int, default=20_000)
    ap.add_argument("--loads", type=parse_loads, default=parse_loads("0.6:1.4:0.05"), help="START:STOP:STEP")
    ap.add_argument("--predictor", default="noisy:0.6", help="The prompt-only prediction (as loadgen simulate).")
    ap.add_argument("--policies", default=",".join(POLICIES), help=f"Comma list of {', '.join(POLICIES)}.")
    ap.add_argument("--slo-x", type=float, default=10.0, help="The JCT SLO as a multiple of the mean unloaded service.")
    ap.add_argument("--slo-ttft-s", type=float, default=None, help="Also a TTFT SLO (seconds) for every request.")
    ap.add_argument("--target", type=float, default=0.9, help="The attainment goodput asks for.")
    ap.add_argument("--guard-x", type=float, default=0.0,
                    help="slo_guard_s as a multiple of the mean unloaded service time (0, SchedulerConfig's default: "
                         "the best of 0-4 in docs/slo.md).")
    ap.add_argument("--aging", choices=["slo", "fcfs-p99"], default="fcfs-p99",
                    help="ssjf-aging's threshold: --aging-x times FCFS's p99 JCT at that load (default, with 1.3: "
                         "loadgen simulate's auto rule), or times the JCT SLO.")
    ap.add_argument("--aging-x", type=float, default=1.3)
    ap.add_argument("--table", default=None, help="Also write the markdown tables to this file.")
    ap.add_argument("--json", default=None, help="Write every point to this JSON file.")
    args = ap.parse_args()
    args.loads_text = f"{args.loads[0]:g}:{args.loads[-1]:g}:{args.loads[1] - args.loads[0] if len(args.loads) > 1 else 1:g}"
    args.policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = sorted(set(args.policies) - set(POLICIES))
    if unknown:
        ap.error(f"unknown policies {unknown}; choose from {', '.join(POLICIES)}")
    t0 = time.perf_counter()
    keys = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    results = []
    for key in keys:
        print(f"{SCENARIOS[key]['title']}: {args.num_requests} requests, loads {args.loads}", flush=True)
        results.append(run_scenario(key, args))
    text = "\n".join(markdown(r, args.target) for r in results)
    command = ("benchmarks/slo_goodput.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (("scenario", args.scenario), ("num_requests", args.num_requests),
                                                    ("seed", args.seed), ("predictor", args.predictor),
                                                    ("loads", args.loads_text),
                                                    ("slo_x", args.slo_x), ("guard_x", args.guard_x),
                                                    ("aging", args.aging), ("aging_x", args.aging_x),
                                                    *((("slo_ttft_s", args.slo_ttft_s),) if args.slo_ttft_s else ()))))
    print("\n" + text + f"\n{command}; {time.perf_counter() - t0:.0f} s")
    if args.table:
        Path(args.table).write_text(text + f"\n`{command}`\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, "scenarios": results},
                                              indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
