"""How many requests a load point needs before a p90-JCT goodput comparison means anything.

Goodput (``loadgen bench --sweep-load ... --slo-jct-s S``) is the largest swept load at which p90 JCT
stays within the SLO at it and every smaller load. SJF moves short requests forward and long ones
back, so a p90 sits near where its gains and losses meet, and over a short workload (one burst of
the trace) FCFS and SSJF often tie. This runs the same sweep in the simulator for several request
counts and seeds (the paper-like cluster: 4 replicas, no batching, arena prompts, azure-conv
arrivals, the trained proxy's predictions) and prints each policy's goodput per (count, seed) and
the p90 JCT per load, so the live sweep's request count and grid can be chosen before it runs.

    .venv/bin/python benchmarks/sim_goodput.py                       # ~1 min
    .venv/bin/python benchmarks/sim_goodput.py --num-requests 200,800 --seeds 0 --loads 0.8:1.3:0.05

JCTs are at time scale 1 (the emulated 7B-on-A100); the live sweep's SLO is this one x time_scale.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from cluster.bench import goodput, parse_sweep
from loadgen.options import WorkloadOptions
from loadgen.predictors_sim import PredictorSpec, predict
from loadgen.simulator import SimWorkload, measure_saturation, simulate
from loadgen.summary import fmt, markdown_row, markdown_rule, summarize
from router import Policy, SchedulerConfig
from router.cost_model import EngineProfile


def sweep(n: int, seed: int, loads: list[float], predictor: PredictorSpec, policies: list[str],
          aging_threshold_s: float | None, replicas: int) -> dict[str, list[tuple[float, dict]]]:
    engine = EngineProfile.default()
    base = SchedulerConfig(policy=Policy.FCFS, seed=seed)
    if aging_threshold_s is not None:
        base = replace(base, aging_threshold_s=aging_threshold_s)
    opts = WorkloadOptions(dataset="arena", trace="azure-conv", num_requests=n, seed=seed)
    pilot = replace(opts, rate=1.0).build()
    # Capacity as `loadgen bench` measures it (cluster.bench.replay_capacity): FCFS with the true
    # lengths, since the least-work balancer places by predicted work and a load must mean one rate.
    truth = pilot.column("output_tokens").to_numpy()
    saturation = measure_saturation(SimWorkload.from_table(pilot, truth), base, engine, replicas)["saturation_rps"]
    # The prompt draw does not depend on the rate, so one prediction per request serves every load. It is
    # made on the whole table in its order, as bench's simulation does: a bf16 proxy's answer shifts
    # slightly with the batch a prompt shares, and a p90 can follow that.
    predicted = predict(predictor, pilot, truth=truth, seed=seed)
    points: dict[str, list[tuple[float, dict]]] = {p: [] for p in policies}
    for load in loads:
        table = replace(opts, load=load).build(saturation)
        assert table.column("request_id").equals(pilot.column("request_id")), "the prompt draw changed with the rate"
        work = SimWorkload.from_table(table, predicted)
        for name in policies:
            res = simulate(work, replace(base, policy=Policy.parse(name)), engine, replicas)
            points[name].append((load, summarize(res.arrival_at, res.finished_at)))
    return points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-requests", default="200,400,800", help="request counts per load point (comma list)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--loads", default="0.8:1.3:0.05", help="START:STOP:STEP")
    ap.add_argument("--slo-s", type=float, default=45.0, help="p90 JCT SLO at time scale 1 (live_bench: 45)")
    ap.add_argument("--predictor", default="proxy:artifacts/proxy-default")
    ap.add_argument("--policies", default="fcfs,ssjf,oracle")
    ap.add_argument("--aging-threshold-s", type=float, default=None,
                    help="threshold of ssjf-aging when listed (time scale 1; live_bench prints the one it chose)")
    ap.add_argument("--replicas", type=int, default=4)
    args = ap.parse_args()
    loads = parse_sweep(args.loads)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if "ssjf-aging" in policies and args.aging_threshold_s is None:
        ap.error("ssjf-aging needs --aging-threshold-s")
    predictor = PredictorSpec.parse(args.predictor)

    print(f"p90 JCT SLO {args.slo_s:g} s (time scale 1); predictor {args.predictor}; loads {args.loads}\n")
    header = ["requests", "seed", *(f"goodput {p}" for p in policies), f"p90 JCT per load ({' / '.join(policies)})"]
    print(markdown_row(header) + "\n" + markdown_rule(len(header)))
    for n in (int(x) for x in args.num_requests.split(",")):
        for seed in (int(x) for x in args.seeds.split(",")):
            points = sweep(n, seed, loads, predictor, policies, args.aging_threshold_s, args.replicas)
            good = [goodput(points[p], "p90_jct_s", args.slo_s) for p in policies]
            per_load = "; ".join(
                f"{load:g}: " + " / ".join(f"{points[p][i][1]['p90_jct_s']:.0f}" for p in policies)
                for i, load in enumerate(loads))
            print(markdown_row([n, seed, *(fmt(g, "{:g}") for g in good), per_load]), flush=True)


if __name__ == "__main__":
    main()
