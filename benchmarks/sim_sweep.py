"""Where SJF matters and where it does not: a one-factor-at-a-time sweep for all three batching modes.

Base point per mode: bundled arena prompts, Poisson arrivals at load 0.9 of the measured saturation,
4 replicas (8 slots each for static/continuous), noisy:0.6 predictions, least-work balancer. Then
vary one factor at a time: load 0.5-0.99, predictor quality (Kendall tau 0.2-1.0), slots per
replica, burstiness (Gamma inter-arrival CV 0.5-4, and the Azure conversation trace).

Per row: FCFS mean JCT, the mean-JCT gain (1 - policy / FCFS) of the oracle, SSJF and SSJF-aging
(threshold rule, budget 1.3 x FCFS p99), and their p99 JCT relative to FCFS. Markdown on stdout.

    .venv/bin/python benchmarks/sim_sweep.py                  # 10,000 requests per point, ~2-4 min
    .venv/bin/python benchmarks/sim_sweep.py --num-requests 3000 --modes continuous
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from loadgen.cmd_simulate import AUTO_THRESHOLD_FACTOR, prepare_workload
from loadgen.options import WorkloadOptions
from loadgen.predictors_sim import TAU_MAX_N, PredictorSpec
from loadgen.simulator import simulate
from loadgen.summary import gain, markdown_row, markdown_rule, ratio, summarize
from proxy_model.metrics import kendall_tau
from router import SchedulerConfig
from router.cost_model import EngineProfile

LOADS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
TAUS = (0.2, 0.4, 0.6, 0.8, 1.0)
BATCHES = (2, 4, 8, 16, 32)
TRACES = ("gamma:0.5", "poisson", "gamma:2", "gamma:4", "azure-conv")
BASE = dict(load=0.9, tau=0.6, max_batch=8, trace="poisson")


def point(mode: str, replicas: int, num_requests: int, seed: int, *, load, tau, max_batch, trace) -> dict:
    opts = WorkloadOptions(dataset="arena", trace=trace, load=load, num_requests=num_requests, seed=seed)
    base = SchedulerConfig(policy="fcfs", batching=mode, max_batch=max_batch, seed=seed)
    engine = EngineProfile.default()
    predictor = PredictorSpec.parse(f"noisy:{tau:g}")
    _, work, sat, _ = prepare_workload(opts, predictor, engine, base, replicas)

    def run(**kw):
        res = simulate(work, replace(base, **kw), engine, replicas)
        s = summarize(res.arrival_at, res.finished_at)
        return s["mean_jct_s"], s["p99_jct_s"]

    fcfs = run(policy="fcfs")
    out = {"fcfs": fcfs, "oracle": run(policy="oracle"), "ssjf": run(policy="ssjf"),
           "aging": run(policy="ssjf-aging", aging_rule="threshold", aging_threshold_s=AUTO_THRESHOLD_FACTOR * fcfs[1]),
           "saturation_rps": sat["saturation_rps"],
           "tau": kendall_tau(work.output_tokens, work.predicted_tokens, max_n=TAU_MAX_N, seed=seed)}
    return out


def row(label: str, r: dict) -> str:
    f = r["fcfs"]
    gains = [f"{100 * gain(r[name][0], f[0]):.0f}%" for name in ("oracle", "ssjf", "aging")]
    tails = [f"{ratio(r[name][1], f[1]):.2f}" for name in ("ssjf", "aging")]
    return markdown_row([label, f"{f[0]:.1f}", *gains, *tails])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-requests", type=int, default=10_000)
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--modes", default="none,static,continuous")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    columns = ["FCFS mean JCT s", "oracle gain", "SSJF gain", "aging gain", "SSJF p99/FCFS", "aging p99/FCFS"]
    print(f"{args.num_requests:,} requests per point, {args.replicas} replicas, seed {args.seed}; base: "
          f"Poisson, load 0.9, noisy:0.6, 8 slots (static/continuous). Gain = 1 - policy mean JCT / FCFS mean JCT.\n")
    for mode in args.modes.split(","):
        print(f"### batching {mode}\n")
        factors = [("load", "load", LOADS), ("tau", "predictor Kendall tau", TAUS)]
        if mode != "none":
            factors.append(("max_batch", "slots per replica", BATCHES))
        factors.append(("trace", "arrivals", TRACES))
        for key, title, values in factors:
            print(markdown_row([title, *columns]) + "\n" + markdown_rule(1 + len(columns)))
            for v in values:
                kw = {**BASE, key: v}
                if mode == "none":
                    kw["max_batch"] = 1
                r = point(mode, args.replicas, args.num_requests, args.seed, **kw)
                label = f"{v} (tau {r['tau']:.2f})" if key == "tau" else str(v)
                print(row(label, r), flush=True)
            print()
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
