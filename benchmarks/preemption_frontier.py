"""The preemption frontier: mean vs p99 JCT of ``srpt`` over K, margin, M and its starvation guard.

Two reference scenarios (docs/simulator.md; ``--dataset arena --trace azure-conv``, 20,000 requests,
4 replicas, least-work, the default 7B engine, prompt-only predictions ``noisy:0.6``):

- paper-like: ``--batching none``, load 0.9;
- continuous: 8 slots per replica, load 0.97 (a resume re-prefills prompt + generated tokens in a
  shared iteration, so preemption must pay for it there).

Per scenario: the non-preemptive baselines (fcfs, ssjf, ssjf-aging with the threshold rule at the
same guard multiples, oracle), then ``srpt`` on the grid ``K x margin x M x guard`` with the
realistic re-predictor (``measured``: Kendall tau by progress point from
proxy_model/data/remaining_tau.json, or the labelled placeholder until it exists), and the ceilings:
srpt with the ``oracle`` re-predictor, and with true lengths everywhere. The guard is given as a
multiple of the FCFS p99 JCT (``inf``: none). Columns: mean and p99 JCT (s and / FCFS), preemptions,
requests preempted, resume seconds (re-prefills, each timed alone), simulation wall seconds.

    .venv/bin/python benchmarks/preemption_frontier.py                  # both scenarios (~15 min on 2 cores)
    .venv/bin/python benchmarks/preemption_frontier.py --quick          # a smaller grid
    .venv/bin/python benchmarks/preemption_frontier.py --table docs/preemption-frontier.md --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from dataclasses import replace
from pathlib import Path

from loadgen.cmd_simulate import prepare_workload
from loadgen.options import WorkloadOptions
from loadgen.predictors_sim import PredictorSpec
from loadgen.repredict_sim import RepredictorSpec, TauTable
from loadgen.simulator import simulate
from loadgen.summary import markdown_row, markdown_rule, ratio, summarize
from router import SchedulerConfig
from router.cost_model import EngineProfile

SCENARIOS = {
    "paper-like (none, 4 replicas, load 0.9)": dict(batching="none", max_batch=1, load=0.9),
    "continuous (8 slots x 4, load 0.97)": dict(batching="continuous", max_batch=8, load=0.97),
}
KS = (16, 32, 64, 128)
MARGINS = (1.5, 2.0, 4.0)
MAX_PREEMPTIONS = (1, 3)
GUARDS = (math.inf, 1.3, 1.1, 1.0)  # x FCFS p99 JCT
QUICK = dict(ks=(32, 128), margins=(2.0,), max_preemptions=(1, 3), guards=(math.inf, 1.1))
# The defaults of SchedulerConfig (chosen from this frontier); the ceilings and sensitivities use it.
BASE_POINT = dict(repredict_every_tokens=32, preempt_margin=1.5, max_preemptions=1, preempt_min_remaining_tokens=32)


def guard_label(g: float) -> str:
    return "none" if math.isinf(g) else f"{g:g}x"


def scenario_rows(name: str, sc: dict, *, seed: int, num_requests: int, predictor: str, grid: dict) -> dict:
    opts = WorkloadOptions(dataset="arena", trace="azure-conv", load=sc["load"], num_requests=num_requests, seed=seed)
    base = SchedulerConfig(policy="fcfs", batching=sc["batching"], max_batch=sc["max_batch"], seed=seed)
    engine = EngineProfile.default()
    _, work, sat, _ = prepare_workload(opts, PredictorSpec.parse(predictor), engine, base, 4)
    truth_work = replace(work, predicted_tokens=work.output_tokens.astype(float))
    rows = []

    def run(label: str, kind: str, config: SchedulerConfig, workload=work, repredictor=None, **extra) -> dict:
        res = simulate(workload, config, engine, 4, repredictor=repredictor, **extra)
        s = summarize(res.arrival_at, res.finished_at)
        count = res.extra.get("num_preemptions")
        row = {"label": label, "kind": kind, "mean": s["mean_jct_s"], "p99": s["p99_jct_s"],
               "preemptions": int(count.sum()) if count is not None else 0,
               "preempted": int((count > 0).sum()) if count is not None else 0,
               "resume_s": float(res.extra["resume_s"].sum()) if count is not None else 0.0,
               "wall_s": res.wall_s, "config": {k: v for k, v in config.to_dict().items()
                                                 if k in BASE_POINT or k in ("policy", "srpt_aging_threshold_s",
                                                                             "aging_threshold_s")}}
        rows.append(row)
        return row

    fcfs = run("fcfs", "baseline", replace(base, policy="fcfs"))
    p99_fcfs = fcfs["p99"]
    run("ssjf", "baseline", replace(base, policy="ssjf"))
    for g in grid["guards"]:
        if not math.isinf(g):
            run(f"ssjf-aging, threshold {g:g}x", "baseline",
                replace(base, policy="ssjf-aging", aging_rule="threshold", aging_threshold_s=g * p99_fcfs))
    run("oracle (true lengths, non-preemptive)", "baseline", replace(base, policy="oracle"))
    measured = RepredictorSpec("measured")
    for k, m, mp, g in itertools.product(grid["ks"], grid["margins"], grid["max_preemptions"], grid["guards"]):
        cfg = replace(base, policy="srpt", repredict_every_tokens=k, preempt_margin=m, max_preemptions=mp,
                      preempt_min_remaining_tokens=BASE_POINT["preempt_min_remaining_tokens"],
                      srpt_aging_threshold_s=g * p99_fcfs)
        run(f"srpt K={k} margin={m:g} M={mp} guard={guard_label(g)}", "srpt", cfg, repredictor=measured)
    # Ceilings and sensitivities at the base point.
    for g in grid["guards"]:
        cfg = replace(base, policy="srpt", srpt_aging_threshold_s=g * p99_fcfs, **BASE_POINT)
        run(f"srpt base, oracle re-predictor, guard={guard_label(g)}", "ceiling", cfg,
            repredictor=RepredictorSpec("oracle"))
        run(f"srpt base, true lengths everywhere, guard={guard_label(g)}", "ceiling", cfg, workload=truth_work,
            repredictor=RepredictorSpec("oracle"))
        run(f"srpt base, no preemption (M=0), guard={guard_label(g)}", "sensitivity",
            replace(cfg, max_preemptions=0), repredictor=measured)
    cfg = replace(base, policy="srpt", srpt_aging_threshold_s=math.inf, **BASE_POINT)
    for tokens in (0.0, math.inf):
        run(f"srpt base, guard none, re-prediction noise {'independent' if tokens == 0 else 'persistent'}",
            "sensitivity", cfg, repredictor=RepredictorSpec("measured", noise_tokens=tokens))
    if sc["batching"] == "continuous":
        run("srpt base, guard none, KV kept on preemption", "sensitivity", cfg, repredictor=measured,
            resume_keeps_kv=True)
    return {"name": name, "seed": seed, "saturation_rps": sat["saturation_rps"], "fcfs_p99": p99_fcfs,
            "fcfs_mean": fcfs["mean"], "rows": rows}


def markdown(result: dict) -> str:
    f_mean, f_p99 = result["fcfs_mean"], result["fcfs_p99"]
    oracle = next(r for r in result["rows"] if r["label"].startswith("oracle"))
    out = [f"### {result['name']}, seed {result['seed']}\n",
           f"saturation {result['saturation_rps']:.4f} req/s; FCFS mean {f_mean:.1f} s, p99 {f_p99:.0f} s; "
           f"non-preemptive oracle mean {oracle['mean']:.1f} s. Target: mean <= the oracle's and p99 <= 1.2 x FCFS.\n"]
    header = ["policy", "mean JCT s", "p99 JCT s", "mean / FCFS", "p99 / FCFS", "preemptions", "requests preempted",
              "resume s", "wall s", "target"]
    out += [markdown_row(header), markdown_rule(len(header))]
    for r in result["rows"]:
        ok = r["mean"] <= oracle["mean"] and r["p99"] <= 1.2 * f_p99
        out.append(markdown_row([r["label"], f"{r['mean']:.1f}", f"{r['p99']:.0f}", f"{ratio(r['mean'], f_mean):.3f}",
                                 f"{ratio(r['p99'], f_p99):.2f}", r["preemptions"], r["preempted"],
                                 f"{r['resume_s']:.1f}", f"{r['wall_s']:.1f}", "yes" if ok else ""]))
    best = best_under(result, 1.2)
    if best:
        out.append(f"\nLowest mean with p99 <= 1.2 x FCFS: {best['label']} ({best['mean']:.1f} s, "
                   f"{ratio(best['mean'], oracle['mean']):.2f} x the oracle's mean).")
    return "\n".join(out) + "\n"


def best_under(result: dict, p99_ratio: float, kind: str | None = None) -> dict | None:
    rows = [r for r in result["rows"] if r["p99"] <= p99_ratio * result["fcfs_p99"] and (kind is None or r["kind"] == kind)]
    return min(rows, key=lambda r: r["mean"]) if rows else None


def plot(results: list[dict], path: Path) -> None:
    """Mean vs p99 JCT (both / FCFS) of every row, one panel per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.6), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        f_mean, f_p99 = r["fcfs_mean"], r["fcfs_p99"]
        oracle = next(x for x in r["rows"] if x["label"].startswith("oracle"))
        ax.fill_between([0.9, 1.2], 0, oracle["mean"] / f_mean, color="#cfe8cf", label="target")
        srpt = [x for x in r["rows"] if x["kind"] == "srpt"]
        for m, marker in (("M=1", "o"), ("M=3", "s")):
            pts = [x for x in srpt if f" {m} " in x["label"]]
            ax.scatter([x["p99"] / f_p99 for x in pts], [x["mean"] / f_mean for x in pts], s=14, marker=marker,
                       c=[math.log2(x["config"]["repredict_every_tokens"]) for x in pts], cmap="viridis",
                       label=f"srpt {m} (colour: K 16..128)")
        aging = [x for x in r["rows"] if x["label"].startswith("ssjf-aging")]
        ax.plot([x["p99"] / f_p99 for x in aging], [x["mean"] / f_mean for x in aging], "k^-", ms=6,
                label="ssjf-aging (threshold), no preemption")
        for label, style in (("ssjf", "kv"), ("fcfs", "kD"), ("oracle", "r*")):
            x = next(row for row in r["rows"] if row["label"].startswith(label))
            ax.plot(x["p99"] / f_p99, x["mean"] / f_mean, style, ms=9, label=x["label"])
        ceil = [x for x in r["rows"] if "true lengths everywhere" in x["label"]]
        ax.plot([x["p99"] / f_p99 for x in ceil], [x["mean"] / f_mean for x in ceil], "r.--",
                label="srpt, true lengths everywhere (ceiling)")
        ax.set_ylim(0.4, 1.05)
        ax.set_xscale("log")
        ax.set_xticks([1, 1.2, 1.5, 2, 3])
        ax.set_xticks([], minor=True)
        ax.set_xticklabels(["1", "1.2", "1.5", "2", "3"])
        ax.set_xlabel("p99 JCT / FCFS p99 JCT")
        ax.set_ylabel("mean JCT / FCFS mean JCT")
        ax.set_title(f"{r['name']}, seed {r['seed']}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-requests", type=int, default=20_000)
    ap.add_argument("--predictor", default="noisy:0.6", help="The prompt-only prediction (as loadgen simulate).")
    ap.add_argument("--scenario", choices=["all", "paper-like", "continuous"], default="all")
    ap.add_argument("--quick", action="store_true", help="A smaller grid (K 32/128, margin 2, M 1/3, guard none/1.1x).")
    ap.add_argument("--table", default=None, help="Also write the markdown tables to this file.")
    ap.add_argument("--json", default=None, help="Write every row (with its config) to this JSON file.")
    ap.add_argument("--png", default=None, help="Plot mean vs p99 of every row to this PNG.")
    ap.add_argument("--plot-only", default=None, metavar="JSON", help="Only redraw --png from a --json file.")
    args = ap.parse_args()
    if args.plot_only:
        plot(json.loads(Path(args.plot_only).read_text())["scenarios"], Path(args.png or "preemption-frontier.png"))
        return
    grid = QUICK if args.quick else dict(ks=KS, margins=MARGINS, max_preemptions=MAX_PREEMPTIONS, guards=GUARDS)
    t0 = time.perf_counter()
    table = TauTable.default()
    print(f"re-predictor 'measured': tau table {table.source}: "
          + ", ".join(f"k={k:g}: {t:.3f}" for k, t in zip(table.ks, table.taus, strict=True)) + "\n")
    results, texts = [], []
    for name, sc in SCENARIOS.items():
        if args.scenario != "all" and not name.startswith(args.scenario):
            continue
        t1 = time.perf_counter()
        result = scenario_rows(name, sc, seed=args.seed, num_requests=args.num_requests, predictor=args.predictor,
                               grid=grid)
        result["wall_s"] = time.perf_counter() - t1
        results.append(result)
        texts.append(markdown(result) + f"\n({result['wall_s']:.0f} s for this scenario)\n")
        print(texts[-1], flush=True)
    if args.table:
        Path(args.table).write_text("\n".join(texts))
    if args.json:
        doc = {"tau_table": {"source": table.source, "ks": table.ks, "taus": table.taus}, "predictor": args.predictor,
               "num_requests": args.num_requests, "scenarios": results}
        Path(args.json).write_text(json.dumps(doc, indent=1, default=float) + "\n")
    if args.png:
        plot(results, Path(args.png))
        print(f"frontier plot: {args.png}")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
