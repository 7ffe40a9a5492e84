"""The scheduling gain a trained proxy buys, in the simulator's reference scenarios.

Runs ``loadgen simulate --predictor proxy:ARTIFACT`` (FCFS / SSJF / SSJF-aging / oracle on one
workload) for the paper-like scenario (no batching, 4 replicas, load 0.9) and the continuous one
(8 slots x 4 replicas, load 0.97), arena prompts, azure-conv arrivals, and prints SSJF / FCFS
mean JCT and SSJF's share of the oracle's reduction.

Honesty: ``--heldout`` (default) draws prompts only from the proxy's TEST split of the arena set
(prompts whose split is "test" under ``proxy-model prepare``'s rule and seed), written as a
loadgen table under ``--work-dir``; the proxy never saw them. ``--no-heldout`` uses the whole
bundled arena set (most of whose prompts the default proxy trained on).

    .venv/bin/python benchmarks/proxy_sim_gain.py --artifact artifacts/proxy-default
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SCENARIOS = {
    "paper-like": ["--batching", "none", "--replicas", "4", "--load", "0.9"],
    "continuous": ["--batching", "continuous", "--max-batch", "8", "--replicas", "4", "--load", "0.97"],
}


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def heldout_arena(path: Path, *, seed: int, val_frac: float, test_frac: float) -> Path:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from proxy_model.data import split_of
    from proxy_model.datasets import load_dataset

    table = load_dataset("arena")
    first = [next((m["content"] for m in msgs if m["role"] == "user"), "") for msgs in table.column("messages").to_pylist()]
    keep = [split_of(t, seed=seed, val_frac=val_frac, test_frac=test_frac) == "test" for t in first]
    held = table.filter(pc.equal(pa.array(keep), True))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(held, path)
    return path


def main(argv=None) -> int:
    from loadgen.summary import ratio, share_of_gain

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", default="artifacts/proxy-default")
    ap.add_argument("--heldout", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--val-frac", type=float, default=0.1)
    ap.add_argument("--test-frac", type=float, default=0.2)
    ap.add_argument("--num-requests", type=int, default=20000)
    ap.add_argument("--seeds", default="0", help="comma list of workload seeds")
    ap.add_argument("--scenarios", default="paper-like,continuous")
    ap.add_argument("--work-dir", default="results/proxy_sim_gain")
    args = ap.parse_args(argv)

    work = Path(args.work_dir)
    dataset = "arena"
    if args.heldout:
        dataset = str(heldout_arena(work / "arena_heldout.parquet", seed=args.split_seed,
                                    val_frac=args.val_frac, test_frac=args.test_frac))
    rows = []
    for scen in args.scenarios.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            cmd = [str(ROOT / ".venv/bin/loadgen"), "simulate", "--dataset", dataset, "--trace", "azure-conv",
                   "--seed", str(seed), "--num-requests", str(args.num_requests),
                   "--predictor", f"proxy:{args.artifact}", "--json", *SCENARIOS[scen]]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return out.returncode
            res = json.loads(out.stdout[out.stdout.index("{"):])
            pol = res["policies"]
            f, s, o = (pol[p]["mean_jct_s"] for p in ("fcfs", "ssjf", "oracle"))
            a = pol.get("ssjf-aging", {})
            row = {"scenario": scen, "seed": seed, "dataset": "arena test split" if args.heldout else "arena (all)",
                   "predictor_kendall_tau": round(res["predictor_kendall_tau"], 3),
                   "fcfs_mean_jct_s": round(f, 2), "ssjf_mean_jct_s": round(s, 2), "oracle_mean_jct_s": round(o, 2),
                   "ssjf_over_fcfs": _round(ratio(s, f), 3),
                   "share_of_oracle_reduction": _round(share_of_gain(s, best=o, base=f), 3),
                   "ssjf_aging_mean_jct_s": _round(a.get("mean_jct_s"), 2),
                   "ssjf_aging_p99_over_fcfs_p99": _round(ratio(a.get("p99_jct_s"), pol["fcfs"]["p99_jct_s"]), 3)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    work.mkdir(parents=True, exist_ok=True)
    (work / "summary.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
