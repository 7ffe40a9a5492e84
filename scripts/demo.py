"""The README's main job, run by scripts/demo.sh: FCFS vs SSJF vs SSJF-aging, live over HTTP.

One local Ray (in this process, so it dies with it) serves two stages in turn, each through
``ssjf-cluster bench`` (every policy gets a fresh Serve app and the identical workload):

1. real: two ``hf`` replicas of SmolLM2-135M-Instruct on CPU (cluster/demo.yaml), real generation.
2. emulated: four ``replay`` replicas at the cost of a 7B model on an A100 (cluster/bench_paper.yaml,
   time-scaled), the arena's real reply lengths: the regime where the scheduling effect shows
   in a few minutes on a small machine. Labelled emulated in every output.

Usage: python scripts/demo.py --proxy ARTIFACT --out DIR [--stages real,emulated] [BENCH ARGS...]
Extra arguments go to both ``ssjf-cluster bench`` calls (e.g. --json, --num-requests 40).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

# (stage, config, what it overrides, the bench arguments of the stage)
STAGES = {
    # Real: 12 short-answer and 12 long-answer instructions of our own (proxy_model/data/demo_mix.jsonl,
    # SmolLM2's greedy lengths 2-46 vs 64 at the cap; arena prompts run almost all to the cap, which
    # leaves nothing to reorder), in bursts at about 1.3 x the two replicas' capacity; greedy, so every
    # policy gets the same answers. The lengths in the file never reach the server (hf generates).
    "real": ("cluster/demo.yaml", {},
             ["--dataset", "proxy_model/data/demo_mix.jsonl", "--trace", "gamma:4", "--rate", "1.0",
              "--num-requests", "16", "--max-tokens", "64", "--temperature", "0", "--timeout", "600"]),
    "emulated": ("cluster/bench_paper.yaml",
                 # 0.3: the emulated A100 at 3.3x its speed; ~1,200 tokens/s through Serve at load 0.9.
                 # Threshold: 1.3 x the simulated FCFS p99 JCT of this workload (103 s) x 0.3.
                 # proxy.timeout_s 10: in the bursts the MiniLM proxy shares 2 cores with the whole cluster;
                 # at 2 s half of the SSJF run's predictions fell back to the heuristic on a slower box.
                 {"llm.time_scale": 0.3, "router.aging_threshold_s": 40.0, "proxy.timeout_s": 10.0},
                 ["--dataset", "arena", "--trace", "gamma:4", "--load", "0.9", "--num-requests", "150",
                  "--timeout", "600"]),
}


def real_stage_note(results: Path) -> str:
    """What the real stage's lengths allow: SJF can only reorder requests whose lengths differ."""
    import pyarrow.parquet as pq

    parts = []
    for run in sorted(p for p in results.iterdir() if (p / "records.parquet").exists()):
        t = pq.read_table(run / "records.parquet", columns=["num_output_tokens", "status"]).to_pylist()
        tokens = sorted(r["num_output_tokens"] for r in t if r["status"] == "ok")
        if tokens:
            at_cap = sum(1 for x in tokens if x == tokens[-1])
            parts.append(f"{run.name}: {len(tokens)} answers, {tokens[0]}-{tokens[-1]} tokens, {at_cap} at the longest")
    return ("note (real stage): 16 real generations per policy on a shared CPU: read the direction, not the size "
            "(scripts/live_bench.sh hf is the larger real-generation comparison). " + "; ".join(parts))


def main(argv: list[str]) -> int:
    proxy, out, stages, extra = None, Path("results/demo"), ["real", "emulated"], []
    it = iter(argv)
    for arg in it:
        if arg == "--proxy":
            proxy = next(it)
        elif arg == "--out":
            out = Path(next(it))
        elif arg == "--stages":
            stages = [s.strip() for s in next(it).split(",") if s.strip()]
        else:
            extra.append(arg)
    bad = [s for s in stages if s not in STAGES]
    if proxy is None or bad or not stages:
        print(f"usage: demo.py --proxy ARTIFACT [--out DIR] [--stages {','.join(STAGES)}] [BENCH ARGS...]"
              + (f"; unknown stage(s) {bad}" if bad else ""), file=sys.stderr)
        return 2

    import ray

    from cluster.bench import bench
    from cluster.tools import derive_file

    t0 = time.monotonic()
    # Logical CPUs: 2 hf replicas x 1 + proxy 0.5 + ingress 0.5 + the router; replay replicas take 0.
    ray.init(num_cpus=max(6, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    # Serve once for all stages and policies: bench then only adds and removes its apps (each under
    # its own route), which saves a Serve start per policy.
    from ray import serve

    from cluster.lifecycle import free_port

    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    rc = 0
    try:
        for stage in stages:
            src, overrides, args = STAGES[stage]
            cfg = derive_file(src, out / f"{stage}.yaml", proxy_artifact=proxy, overrides=overrides)
            label = "REAL generation, 2 hf SmolLM2-135M replicas on CPU" if stage == "real" else \
                "EMULATED replay replicas (7B-on-A100 cost model), arena reply lengths"
            print(f"\n=== demo stage '{stage}': {label} ===", flush=True)
            t = time.monotonic()
            try:
                bench.main(["--config", str(cfg), "--policies", "fcfs,ssjf,ssjf-aging",
                            "--seed", "0", "--no-stream", "--no-progress", "--out", str(out / stage),
                            "--plot", str(out / f"{stage}.png"), *args, *extra],
                           prog_name="ssjf-cluster bench", standalone_mode=False)
            except SystemExit as exc:  # click exits on --help and friends
                rc = exc.code or 0
            if stage == "real":
                print(real_stage_note(out / stage), flush=True)
            print(f"=== stage '{stage}' took {time.monotonic() - t:.0f} s; plot: {out / f'{stage}.png'} ===",
                  flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    print(f"\ndemo: {time.monotonic() - t0:.0f} s (proxy {proxy}); results and plots under {out}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
