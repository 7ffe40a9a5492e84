"""Simulator speed: simulated requests per second of wall time (issue 2, item 3).

Real arena lengths (bundled sample, drawn with replacement) with Poisson arrivals at a given load
of the measured saturation, on many replicas, for each batching mode and policy. Prints a
markdown table. Timings depend on the machine and on what else runs on it.

    .venv/bin/python benchmarks/sim_speed.py                      # 1,000,000 requests, 64 replicas
    .venv/bin/python benchmarks/sim_speed.py --num-requests 200000 --modes continuous
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from loadgen.predictors_sim import noisy_predictions
from loadgen.simulator import SimWorkload, measure_saturation, simulate
from loadgen.summary import markdown_row, markdown_rule
from router import SchedulerConfig
from router.cost_model import EngineProfile


def arena_lengths(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from proxy_model.datasets import load_dataset

    table = load_dataset("arena")
    out = table.column("output_tokens").to_numpy()
    prompt = table.column("num_prompt_tokens").to_numpy()
    keep = out >= 1
    out, prompt = out[keep], prompt[keep]
    idx = np.random.default_rng(seed).integers(0, len(out), n)
    return out[idx].astype(np.int64), prompt[idx].astype(np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-requests", type=int, default=1_000_000)
    ap.add_argument("--replicas", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--load", type=float, default=0.9)
    ap.add_argument("--modes", default="none,static,continuous")
    ap.add_argument("--policies", default="fcfs,ssjf")
    ap.add_argument("--balancer", default="least-work")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    n = args.num_requests
    out, prompt = arena_lengths(n, args.seed)
    pred = noisy_predictions(out, 0.6, args.seed)
    engine = EngineProfile.default()
    ids = [f"q{i}" for i in range(n)]
    print(f"{n:,} requests, {args.replicas} replicas, max_batch {args.max_batch}, load {args.load}, "
          f"balancer {args.balancer}, engine {engine.name}\n")
    header = ["batching", "policy", "saturation req/s", "sim wall s", "simulated req/s", "events"]
    print(markdown_row(header) + "\n" + markdown_rule(len(header)))
    for mode in args.modes.split(","):
        base = SchedulerConfig(policy="fcfs", batching=mode, max_batch=args.max_batch, balancer=args.balancer)
        n_sat = min(n, 50_000)
        sat_work = SimWorkload(ids[:n_sat], np.zeros(n_sat), prompt[:n_sat], out[:n_sat], pred[:n_sat],
                               4096, "m")
        sat = measure_saturation(sat_work, base, engine, args.replicas)["saturation_rps"]
        rate = args.load * sat
        arrivals = np.concatenate(([0.0], np.cumsum(np.random.default_rng(args.seed + 1).exponential(1 / rate, n - 1))))
        work = SimWorkload(ids, arrivals, prompt, out, pred, 4096, "m")
        for policy in args.policies.split(","):
            cfg = SchedulerConfig(policy=policy, batching=mode, max_batch=args.max_batch, balancer=args.balancer)
            t0 = time.perf_counter()
            res = simulate(work, cfg, engine, args.replicas)
            wall = time.perf_counter() - t0
            print(markdown_row([mode, policy, f"{sat:.2f}", f"{wall:.1f}", f"{n / wall:,.0f}", f"{res.num_events:,}"]),
                  flush=True)


if __name__ == "__main__":
    main()
