"""The aging frontier: how much of SSJF's mean-JCT gain each aging rule keeps per unit of p99 JCT.

For the three reference scenarios (issue 2; ``--dataset arena --trace azure-conv``, noisy:0.6
predictions, 4 replicas), sweep the parameter of each ``ssjf-aging`` rule and report, per point:

- ``p99 / FCFS p99`` (target <= 1.5) and
- ``gain kept`` = (FCFS mean - aging mean) / (FCFS mean - SSJF mean) (target >= 0.6).

Parameters are given on scales that travel between scenarios: the linear rule's rate as
``alpha x theta`` (theta = the cluster's predicted-token throughput at saturation, tokens/s), the
threshold rule's wait budget as ``c x`` the FCFS p99 JCT. Response ratio has no effective parameter
(the order by wait / predicted does not depend on the rate), so it is one point.

Writes a markdown table (stdout, and ``--table``) and a PNG of the frontier (``--png``).

    .venv/bin/python benchmarks/sim_aging_frontier.py                       # seed 0, 20,000 requests
    .venv/bin/python benchmarks/sim_aging_frontier.py --seeds 0,1,2 --no-png  # robustness
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from loadgen.cmd_simulate import AUTO_THRESHOLD_FACTOR, prepare_workload
from loadgen.options import WorkloadOptions
from loadgen.predictors_sim import PredictorSpec
from loadgen.simulator import simulate
from loadgen.summary import markdown_row, markdown_rule, ratio, share_of_gain, summarize
from router import SchedulerConfig
from router.cost_model import EngineProfile

SCENARIOS = {
    "paper-like (none, 4 replicas, load 0.9)": dict(batching="none", max_batch=1, load=0.9),
    "continuous (8 slots x 4, load 0.97)": dict(batching="continuous", max_batch=8, load=0.97),
    "static (batch 8 x 4, load 0.9)": dict(batching="static", max_batch=8, load=0.9),
}
ALPHAS = (0.25e-3, 0.5e-3, 0.8e-3, 1.0e-3, 1.25e-3, 1.5e-3, 2e-3, 4e-3, 8e-3)
THRESHOLDS = (0.6, 0.8, 1.0, 1.1, 1.2, AUTO_THRESHOLD_FACTOR, 1.4, 1.6, 2.0, 3.0)


def scenario_points(name: str, sc: dict, seed: int, num_requests: int, predictor: str) -> dict:
    opts = WorkloadOptions(dataset="arena", trace="azure-conv", load=sc["load"], num_requests=num_requests, seed=seed)
    base = SchedulerConfig(policy="fcfs", batching=sc["batching"], max_batch=sc["max_batch"], seed=seed)
    engine = EngineProfile.default()
    _, work, sat, _ = prepare_workload(opts, PredictorSpec.parse(predictor), engine, base, 4)
    theta = sat["saturation_rps"] * float(work.predicted_tokens.mean())

    def run(**kw):
        res = simulate(work, replace(base, **kw), engine, 4)
        s = summarize(res.arrival_at, res.finished_at)
        return s["mean_jct_s"], s["p99_jct_s"]

    fcfs, ssjf, oracle = run(policy="fcfs"), run(policy="ssjf"), run(policy="oracle")

    def point(rule, label, param, mean, p99):
        return {"rule": rule, "param": label, "value": param, "mean": mean, "p99": p99,
                "p99_ratio": ratio(p99, fcfs[1]), "gain_kept": share_of_gain(mean, best=ssjf[0], base=fcfs[0])}

    points = []
    for a in ALPHAS:
        points.append(point("linear", f"alpha={a:.2e} (rate {a * theta:.2f} tok/s)", a * theta,
                            *run(policy="ssjf-aging", aging_rule="linear", aging_rate=a * theta)))
    for c in THRESHOLDS:
        points.append(point("threshold", f"c={c:g} ({c * fcfs[1]:.0f} s)", c * fcfs[1],
                            *run(policy="ssjf-aging", aging_rule="threshold", aging_threshold_s=c * fcfs[1])))
    points.append(point("response-ratio", "-", 1.0, *run(policy="ssjf-aging", aging_rule="response-ratio",
                                                          aging_rate=1.0)))
    return {"name": name, "seed": seed, "theta": theta, "saturation_rps": sat["saturation_rps"],
            "fcfs": fcfs, "ssjf": ssjf, "oracle": oracle, "points": points}


def markdown(results: list[dict]) -> str:
    out = []
    for r in results:
        f, s, o = r["fcfs"], r["ssjf"], r["oracle"]
        out.append(f"### {r['name']}, seed {r['seed']}\n")
        out.append(f"FCFS mean {f[0]:.1f} s, p99 {f[1]:.0f} s; SSJF mean {s[0]:.1f} s, p99 {s[1]:.0f} s "
                   f"({ratio(s[1], f[1]):.2f}x); oracle mean {o[0]:.1f} s; theta = {r['theta']:.0f} predicted tokens/s\n")
        header = ["rule", "parameter", "mean JCT s", "p99 JCT s", "p99 / FCFS", "gain kept", "target"]
        out += [markdown_row(header), markdown_rule(len(header))]
        for p in r["points"]:
            ok = "yes" if p["p99_ratio"] <= 1.5 and p["gain_kept"] >= 0.6 else ""
            out.append(markdown_row([p["rule"], p["param"], f"{p['mean']:.1f}", f"{p['p99']:.0f}",
                                     f"{p['p99_ratio']:.2f}", f"{p['gain_kept']:.2f}", ok]))
        out.append("")
    return "\n".join(out)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.4), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        ax.axvspan(0, 1.5, ymin=0, ymax=1, color="0.93")
        ax.fill_between([0, 1.5], 0.6, 1.2, color="#cfe8cf", label="target")
        for rule, style in (("linear", "o-"), ("threshold", "s-"), ("response-ratio", "D")):
            pts = [p for p in r["points"] if p["rule"] == rule]
            ax.plot([p["p99_ratio"] for p in pts], [p["gain_kept"] for p in pts], style, label=rule, ms=4)
        chosen = [p for p in r["points"] if p["rule"] == "threshold" and p["param"].startswith(f"c={AUTO_THRESHOLD_FACTOR:g} ")]
        if chosen:
            ax.plot(chosen[0]["p99_ratio"], chosen[0]["gain_kept"], "*", ms=16, color="crimson",
                    label=f"default: threshold {AUTO_THRESHOLD_FACTOR:g} x FCFS p99")
        ssjf_ratio = ratio(r["ssjf"][1], r["fcfs"][1])
        ax.plot(ssjf_ratio, 1.0, "k^", label="ssjf (no aging)")
        ax.plot(1.0, 0.0, "kv", label="fcfs")
        ax.set_xlim(0.8, max(3.2, ssjf_ratio * 1.05))
        ax.set_ylim(-0.05, 1.1)
        ax.set_xscale("log")
        ax.set_xticks([1, 1.5, 2, 3])
        ax.set_xticks([], minor=True)
        ax.set_xticklabels(["1", "1.5", "2", "3"])
        ax.set_xlabel("p99 JCT / FCFS p99 JCT")
        ax.set_ylabel("fraction of SSJF's mean-JCT gain kept")
        ax.set_title(f"{r['name']}\nseed {r['seed']}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--num-requests", type=int, default=20_000)
    ap.add_argument("--predictor", default="noisy:0.6")
    ap.add_argument("--png", default="docs/simulator-aging-frontier.png")
    ap.add_argument("--no-png", action="store_true")
    ap.add_argument("--table", default=None, help="Also write the markdown table to this file.")
    args = ap.parse_args()
    t0 = time.perf_counter()
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for name, sc in SCENARIOS.items():
            results.append(scenario_points(name, sc, seed, args.num_requests, args.predictor))
    text = markdown(results)
    print(text)
    if args.table:
        Path(args.table).write_text(text + "\n")
    if not args.no_png:
        plot([r for r in results if r["seed"] == results[0]["seed"]], Path(args.png))
        print(f"frontier plot: {args.png}")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
