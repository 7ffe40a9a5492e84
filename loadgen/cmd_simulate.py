"""``loadgen simulate``: run one workload through the router core on simulated engines, per policy.

Every policy in ``--policies`` runs on the identical workload (same prompts, arrival times and
predictions). ``srpt`` (preemptive) also reads ``--repredictor``: the remaining length re-predicted
at each progress point (``loadgen.repredict_sim``), and reports its preemptions and resume cost.
``--slo-ttft-s`` / ``--slo-jct-s`` give every request objectives: the ``slo`` policy schedules by them
and every policy's summary gives the share of requests that met theirs (shed ones missed). With ``--load``, the arrival rate is ``load x`` the saturation throughput that the
simulator measures first for this workload, engine, replicas and batching (see
:func:`loadgen.simulator.measure_saturation`); both numbers are reported.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import click
import numpy as np

from loadgen.options import SLO_COLUMNS, WorkloadOptions, parse_policies, scheduler_option, workload_options
from router import AgingRule, Policy, SchedulerConfig

DEFAULT_POLICIES = "fcfs,ssjf,ssjf-aging,oracle"
_DEFAULTS = SchedulerConfig()
# The SchedulerConfig fields that are options of their own (flags, choices, defaults and help from
# the core); the policy is --policies, the seed the workload's --seed, the threshold may be 'auto'.
SCHEDULER_FLAGS = ("batching", "max_batch", "balancer", "aging_rule", "aging_rate", "work_stealing",
                   "repredict_every_tokens", "preempt_margin", "max_preemptions", "preempt_min_remaining_tokens",
                   "slo_seconds_per_token", "slo_first_token_s", "slo_guard_s", "slo_infeasible")
# ``--aging-threshold-s auto``: the wait budget of the threshold rule is this multiple of the FCFS p99 JCT on
# the identical workload ("no request waits much longer than FCFS's tail"). Chosen from the aging
# frontier (benchmarks/sim_aging_frontier.py, docs/simulator.md): 1.3 keeps p99 within 1.5x FCFS and
# >= 60% of SSJF's mean gain in all three reference scenarios over seeds 0-2.
AUTO_THRESHOLD_FACTOR = 1.3
# ``--srpt-aging-threshold-s auto``: srpt's starvation guard at this multiple of the FCFS p99 JCT: the
# largest on the preemption frontier's grid whose p99 stays within 1.2 x FCFS's in both reference
# scenarios (1.12 x and 1.15 x; benchmarks/preemption_frontier.py, docs/preemption.md).
SRPT_AUTO_THRESHOLD_FACTOR = 1.1
# Progress points at which the report gives the re-predictor's realised Kendall tau.
TAU_REPORT_POINTS = (64, 256, 1024)


def _help(name: str) -> str:
    return next(f.metadata["help"] for f in fields(SchedulerConfig) if f.name == name)


def _parse_threshold(value: str, hint: str = "--aging-threshold-s") -> float | None:
    """A number of seconds, or ``auto`` (None)."""
    if value == "auto":
        return None
    try:
        t = float(value)
    except ValueError:
        raise click.BadParameter(f"expected seconds >= 0 or 'auto', got {value!r}", param_hint=hint) from None
    if not t >= 0:
        raise click.BadParameter(f"expected seconds >= 0 or 'auto', got {value!r}", param_hint=hint)
    return t


@click.command("simulate")
@workload_options(with_slo=True)
@click.option("--replicas", type=click.IntRange(min=1), default=4, show_default=True, help="LLM replicas.")
@scheduler_option("batching")
@scheduler_option("max_batch", default=8)
@click.option("--policies", default=DEFAULT_POLICIES, show_default=True,
              help="Comma list of fcfs, ssjf, ssjf-aging, srpt (preemptive), slo (by --slo-ttft-s/--slo-jct-s), "
                   "oracle (oracle: true lengths, a labelled baseline).")
@scheduler_option("balancer")
@click.option("--predictor", default="noisy:0.6", show_default=True,
              help="oracle, noisy:TAU (synthetic, Kendall tau ~TAU), heuristic, constant[:N], "
                   "file:PATH (predictions) or proxy:PATH (trained proxy artifact).")
@scheduler_option("aging_rule")
@scheduler_option("aging_rate")
@scheduler_option("aging_threshold_s", type=str, default="auto",
                  help=f"{_help('aging_threshold_s')} 'auto': {AUTO_THRESHOLD_FACTOR} x the FCFS p99 JCT on the "
                       "same workload (a tail budget no worse than FCFS's).")
@scheduler_option("work_stealing")
@scheduler_option("repredict_every_tokens")
@scheduler_option("preempt_margin")
@scheduler_option("max_preemptions")
@scheduler_option("preempt_min_remaining_tokens")
@scheduler_option("srpt_aging_threshold_s", type=str, default="auto",
                  help=f"{_help('srpt_aging_threshold_s')} 'auto': {SRPT_AUTO_THRESHOLD_FACTOR} x the FCFS p99 JCT "
                       "on the same workload.")
@scheduler_option("slo_seconds_per_token")
@scheduler_option("slo_first_token_s")
@scheduler_option("slo_guard_s")
@scheduler_option("slo_infeasible")
@click.option("--repredictor", default="measured", show_default=True,
              help="srpt: the remaining length re-predicted at each progress point: measured (Kendall tau by "
                   "progress point from proxy_model/data/remaining_tau.json, a labelled placeholder until it "
                   "exists), measured:PATH, noisy:TAU or oracle (true remaining, a ceiling).")
@click.option("--repredict-noise-tokens", type=click.FloatRange(min=0), default=None,
              help="srpt: generated tokens over which a request's re-prediction error decorrelates (1/e) "
                   "[default: 256; 0: independent at every point].")
@click.option("--resume-keeps-kv", is_flag=True,
              help="srpt: a preempted request resuming on the same replica finds its KV cache kept (no "
                   "re-prefill; the memory held meanwhile is not modelled). Default: dropped, re-prefilled.")
@click.option("--engine-profile", type=click.Path(dir_okay=False), default=None,
              help="Engine cost profile JSON (default: Llama-2-7B on one A100, see docs/simulator.md).")
@click.option("--saturation-requests", type=click.IntRange(min=1), default=None,
              help="With --load: requests used to measure the saturation throughput [default: all].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write requests.parquet (per request and policy), config.json and summary.json here.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def simulate(**kwargs):
    """Simulate FCFS / SSJF / SSJF-aging / oracle on one workload through the router core."""
    opts = WorkloadOptions.from_kwargs(kwargs)
    policies = parse_policies(kwargs["policies"])
    threshold = _parse_threshold(kwargs["aging_threshold_s"])
    srpt_threshold = _parse_threshold(kwargs["srpt_aging_threshold_s"], "--srpt-aging-threshold-s")
    from loadgen import predictors_sim, repredict_sim
    from router.cost_model import EngineProfile

    noise = kwargs["repredict_noise_tokens"]
    try:
        repredictor = repredict_sim.RepredictorSpec.parse(
            kwargs["repredictor"], **({} if noise is None else {"noise_tokens": noise}))
        repredictor.table()  # a measured:PATH that is missing or malformed fails here, not mid-run
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--repredictor") from None

    try:
        predictor = predictors_sim.PredictorSpec.parse(kwargs["predictor"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--predictor") from None
    if kwargs["engine_profile"]:
        try:
            engine = EngineProfile.load(kwargs["engine_profile"])
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--engine-profile") from None
    else:
        engine = EngineProfile.default()
    try:
        base = SchedulerConfig(
            policy=Policy.FCFS, **{k: kwargs[k] for k in SCHEDULER_FLAGS},
            aging_threshold_s=_DEFAULTS.aging_threshold_s if threshold is None else threshold, seed=opts.seed,
            srpt_aging_threshold_s=_DEFAULTS.srpt_aging_threshold_s if srpt_threshold is None else srpt_threshold,
        )
        for policy in policies:  # what holds for one policy only (response-ratio aging needs a rate)
            replace(base, policy=policy)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    result = run_simulation(opts, policies, predictor, engine, base, kwargs["replicas"],
                            saturation_requests=kwargs["saturation_requests"], out_dir=kwargs["out_dir"],
                            auto_threshold=threshold is None, auto_srpt_threshold=srpt_threshold is None,
                            repredictor=repredictor, resume_keeps_kv=kwargs["resume_keeps_kv"])
    if kwargs["as_json"]:
        click.echo(json.dumps(result["summary"], indent=2, default=_json_default))
    else:
        click.echo(result["text"])


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _predict(predictor, table, seed: int):
    from loadgen import predictors_sim

    try:
        return predictors_sim.predict_table(predictor, table, seed)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--predictor") from None


def prepare_workload(opts: WorkloadOptions, predictor, engine, base: SchedulerConfig, replicas: int, *,
                     saturation_requests: int | None = None):
    """The workload table, its :class:`SimWorkload` (with predictions), the saturation measurement
    (None unless ``--load``) and the resolved arrival rate."""
    from loadgen.simulator import SimWorkload, measure_saturation

    saturation = None
    if opts.load is not None:
        # Capacity depends on the lengths, not the arrival times: measure it on the same prompt draw
        # (the workload draws prompts and arrivals from independent streams of the seed).
        pilot = replace(opts, rate=1.0, load=None).build()
        pilot_work = SimWorkload.from_table(pilot, _predict(predictor, pilot, opts.seed))
        n_sat = saturation_requests or len(pilot_work)
        saturation = measure_saturation(pilot_work, base, engine, replicas, max_requests=n_sat)
        table = opts.build(saturation["saturation_rps"])
    else:
        table = opts.build()
    rate = opts.resolve_rate(saturation["saturation_rps"] if saturation else None)
    work = SimWorkload.from_table(table, _predict(predictor, table, opts.seed))
    return table, work, saturation, rate


def run_simulation(opts: WorkloadOptions, policies, predictor, engine, base: SchedulerConfig, replicas: int, *,
                   saturation_requests: int | None = None, out_dir: str | None = None,
                   auto_threshold: bool = False, auto_srpt_threshold: bool = False, repredictor=None,
                   resume_keeps_kv: bool = False) -> dict:
    """Build the workload, resolve the rate, simulate every policy; returns the summary and a text table.

    ``auto_threshold``: the threshold aging rule's wait budget becomes ``AUTO_THRESHOLD_FACTOR`` x the
    FCFS p99 JCT of this workload (FCFS runs first; it is simulated even when not listed);
    ``auto_srpt_threshold`` likewise sets srpt's starvation guard to ``SRPT_AUTO_THRESHOLD_FACTOR`` x it.
    ``repredictor``, ``resume_keeps_kv``: srpt's re-predictor and resume rule (see ``simulate``).
    """
    from loadgen import predictors_sim
    from loadgen.summary import compare
    from proxy_model.metrics import kendall_tau

    t0 = time.perf_counter()
    table, work, saturation, rate = prepare_workload(opts, predictor, engine, base, replicas,
                                                     saturation_requests=saturation_requests)
    predicted = work.predicted_tokens
    truth = work.output_tokens
    n = len(work)
    span = float(work.arrival_s[-1] - work.arrival_s[0]) if n > 1 else 0.0
    offered = (n - 1) / span if span > 0 else math.inf

    summaries, per_policy, base, aging = _simulate_policies(work, policies, engine, base, replicas, auto_threshold,
                                                            auto_srpt_threshold, repredictor, resume_keeps_kv)

    tau = kendall_tau(truth, predicted, max_n=predictors_sim.TAU_MAX_N, seed=opts.seed)
    summary = {
        "workload": {**opts.to_dict(), "num_requests": n},
        "rate_rps": rate,
        "offered_rate_rps": offered,
        "saturation_rps": saturation["saturation_rps"] if saturation else None,
        "saturation_method": saturation["method"] if saturation else None,
        "saturation_num_requests": saturation["num_requests"] if saturation else None,
        "target_load": opts.load,
        "applied_load": (offered / saturation["saturation_rps"]) if saturation else None,
        "replicas": replicas,
        "scheduler": {k: v for k, v in base.to_dict().items() if k != "policy"},
        "aging": aging,
        "engine": engine.to_dict(),
        "predictor": str(predictor),
        "predictor_kendall_tau": tau,
        "policies": summaries,
        "ratios_vs_fcfs": compare(summaries, "fcfs"),
        "wall_s": time.perf_counter() - t0,
    }
    if out_dir is not None:
        _write_out(Path(out_dir), table, predicted, per_policy, summary)
    lines = _summary_lines(opts, policies, predictor, engine, base, replicas, summary, saturation, out_dir)
    return {"summary": summary, "text": "\n".join(lines)}


def _simulate_policies(work, policies, engine, base: SchedulerConfig, replicas: int, auto_threshold: bool,
                       auto_srpt_threshold: bool = False, repredictor=None, resume_keeps_kv: bool = False):
    """Simulate every policy on ``work``; returns the summaries and results in ``policies`` order,
    the scheduler config after any auto threshold, and the aging block of the summary."""
    from loadgen.simulator import simulate
    from loadgen.summary import slo_attainment, summarize

    n = len(work)
    aging = {"rule": base.aging_rule.value, "rate": base.aging_rate, "threshold_s": base.aging_threshold_s,
             "threshold_source": "given", "srpt_threshold_s": base.srpt_aging_threshold_s,
             "srpt_threshold_source": "given"}
    use_auto_srpt = auto_srpt_threshold and Policy.SRPT in policies
    use_auto = (auto_threshold and Policy.SSJF_AGING in policies and base.aging_rule is AgingRule.THRESHOLD)
    # The auto thresholds are read off FCFS's p99, so FCFS runs first (and runs even when not listed).
    fcfs_first = use_auto or use_auto_srpt
    order = sorted(policies, key=lambda p: p is not Policy.FCFS) if fcfs_first else list(policies)
    if fcfs_first and Policy.FCFS not in order:
        order.insert(0, Policy.FCFS)

    results: dict[str, dict] = {}
    per_policy = {}
    for policy in order:
        config = replace(base, policy=policy)
        if policy is Policy.SSJF_AGING and use_auto:
            p99_fcfs = results[Policy.FCFS.value]["p99_jct_s"]
            base = replace(base, aging_threshold_s=AUTO_THRESHOLD_FACTOR * p99_fcfs)
            config = replace(base, policy=policy)
            aging.update(threshold_s=base.aging_threshold_s,
                         threshold_source=f"auto: {AUTO_THRESHOLD_FACTOR} x FCFS p99 JCT ({p99_fcfs:.3f} s)")
        if policy is Policy.SRPT and use_auto_srpt:
            p99_fcfs = results[Policy.FCFS.value]["p99_jct_s"]
            base = replace(base, srpt_aging_threshold_s=SRPT_AUTO_THRESHOLD_FACTOR * p99_fcfs)
            config = replace(base, policy=policy)
            aging.update(srpt_threshold_s=base.srpt_aging_threshold_s,
                         srpt_threshold_source=f"auto: {SRPT_AUTO_THRESHOLD_FACTOR} x FCFS p99 JCT ({p99_fcfs:.3f} s)")
        if policy is Policy.SRPT:
            res = simulate(work, config, engine, replicas, repredictor=repredictor, resume_keeps_kv=resume_keeps_kv)
        else:
            res = simulate(work, config, engine, replicas)
        s = summarize(res.arrival_at, res.finished_at, started_at=res.started_at,
                      first_token_at=res.first_token_at, output_tokens=work.output_tokens)
        if policy is Policy.SRPT:
            s.update(preemption_summary(res, work, repredictor))
        if work.has_slo:
            s.update(slo_attainment(res.arrival_at, res.first_token_at, res.finished_at, work.slo_ttft_s,
                                    work.slo_jct_s, shed=res.shed))
        if policy is Policy.SLO:
            s.update(slo_seconds_per_token=res.extra["seconds_per_token"], num_rejected=res.extra["num_rejected"])
        s["sim_wall_s"] = res.wall_s
        s["sim_requests_per_s"] = n / res.wall_s if res.wall_s > 0 else None
        s["num_events"] = res.num_events
        results[policy.value] = s
        per_policy[policy.value] = res
    summaries = {p.value: results[p.value] for p in policies}
    per_policy = {p.value: per_policy[p.value] for p in policies}
    return summaries, per_policy, base, aging


def preemption_summary(res, work, repredictor=None) -> dict:
    """What preemption did and cost in one srpt run (``SimResult.extra``): preemptions, requests
    preempted, generated tokens prefilled again on resume and what those re-prefills cost (seconds,
    each timed alone), and the re-predictor's realised Kendall tau at a few progress points."""
    from loadgen.repredict_sim import realised_taus

    extra = res.extra
    count = extra["num_preemptions"]
    out = {
        "num_preemptions": int(count.sum()),
        "num_preempted_requests": int((count > 0).sum()),
        "max_preemptions_of_a_request": int(count.max(initial=0)),
        "resume_tokens": int(extra["resume_tokens"].sum()),
        "resume_s": float(extra["resume_s"].sum()),
        "repredictor": str(repredictor) if repredictor is not None else "measured",
    }
    cps = extra["checkpoints"]
    if cps is not None:
        lengths = work.output_tokens
        points = [k for k in TAU_REPORT_POINTS if k % cps.every == 0 and (lengths > k).sum() >= 2]
        out["repredictor_tau_by_k"] = realised_taus(lengths, cps, points)
    return out


def _summary_lines(opts: WorkloadOptions, policies, predictor, engine, base: SchedulerConfig, replicas: int,
                   summary: dict, saturation: dict | None, out_dir: str | None) -> list[str]:
    """The text report of ``loadgen simulate`` (the header, the per-policy table, the footnotes)."""
    from loadgen.summary import fmt, format_table

    n = summary["workload"]["num_requests"]
    rate, offered = summary["rate_rps"], summary["offered_rate_rps"]
    lines = [
        f"workload: dataset={opts.dataset} trace={opts.trace} requests={n} seed={opts.seed}; "
        f"replicas={replicas} batching={base.batching.value} max_batch={base.max_batch} balancer={base.balancer.value}",
        f"engine: {engine.name}; predictor: {predictor} (Kendall tau {summary['predictor_kendall_tau']:.3f} vs truth)",
    ]
    if saturation:
        lines.append(f"saturation {saturation['saturation_rps']:.4f} req/s (measured); target load {opts.load} -> "
                     f"rate {rate:.4f} req/s; applied load {summary['applied_load']:.3f}")
    else:
        lines.append(f"rate {rate:.4f} req/s (offered {offered:.4f})")
    if Policy.SSJF_AGING in policies:
        if base.aging_rule is AgingRule.THRESHOLD:
            lines.append(f"ssjf-aging: rule=threshold threshold_s={base.aging_threshold_s:.1f} "
                         f"({summary['aging']['threshold_source']})")
        else:
            lines.append(f"ssjf-aging: rule={base.aging_rule.value} rate={base.aging_rate:g} tokens/s")
    if Policy.SRPT in policies:
        s = summary["policies"][Policy.SRPT.value]
        taus = ", ".join(f"k={k}: {t:.3f}" for k, t in s.get("repredictor_tau_by_k", {}).items())
        lines.append(f"srpt: re-predict every {base.repredict_every_tokens} tokens ({s['repredictor']}"
                     f"{'; Kendall tau of remaining ' + taus if taus else ''}), margin {base.preempt_margin:g}x, "
                     f"at most {base.max_preemptions} per request, not in the last "
                     f"{base.preempt_min_remaining_tokens} tokens, guard {base.srpt_aging_threshold_s:.1f} s "
                     f"({summary['aging']['srpt_threshold_source']})")
        lines.append(f"srpt: {s['num_preemptions']} preemptions of {s['num_preempted_requests']} requests; resumes "
                     f"re-prefilled {s['resume_tokens']} generated tokens ({s['resume_s']:.1f} s of engine time)")
    if Policy.SLO in policies:
        s = summary["policies"][Policy.SLO.value]
        lines.append(f"slo: guard {base.slo_guard_s:g} s, infeasible requests {base.slo_infeasible.value} "
                     f"({s['num_rejected']} shed); seconds per token {base.slo_seconds_per_token:g} at the start, "
                     f"{s['slo_seconds_per_token']:.4g} learned at the end; first token {base.slo_first_token_s:g} s")
    if opts.has_slo:
        lines.append(f"SLO of every request: TTFT {fmt(opts.slo_ttft_s, '{:g} s')}, JCT {fmt(opts.slo_jct_s, '{:g} s')} "
                     "(SLO met: share of requests within all of theirs; shed and unfinished ones missed)")
    elif Policy.SLO in policies:
        lines.append("note: no --slo-ttft-s/--slo-jct-s given, so slo orders like ssjf")
    lines += ["", format_table(summary["policies"], "fcfs"), "",
              "JCT, wait (queueing delay) in seconds; 'oracle' knows the true lengths (a benchmark bound only)."]
    if any(s.get("num_shed") for s in summary["policies"].values()):
        lines.append("JCTs and waits are over the requests that ran: a shed request has none (it missed its SLO).")
    if out_dir is not None:
        lines.append(f"per-request results in {out_dir}/requests.parquet")
    return lines


def _write_out(out: Path, table, predicted, per_policy: dict, summary: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for name, res in per_policy.items():
        n = len(res.arrival_at)
        parts.append(pa.table({
            "policy": pa.array([name] * n, pa.string()),
            "request_id": table.column("request_id"),
            "model": table.column("model"),
            "num_prompt_tokens": table.column("num_prompt_tokens"),
            "output_tokens": table.column("output_tokens"),
            "predicted_tokens": pa.array(predicted, pa.float64()),
            "arrival_at": pa.array(res.arrival_at),
            "dispatched_at": pa.array(res.dispatched_at),
            "started_at": pa.array(res.started_at),
            "first_token_at": pa.array(res.first_token_at),
            "last_token_at": pa.array(res.last_token_at),
            "finished_at": pa.array(res.finished_at),
            "jct_s": pa.array(res.jct_s),
            "queue_delay_s": pa.array(res.queue_delay_s),
            "replica": pa.array([f"r{r}" for r in res.replica.tolist()], pa.string()),
            # ok: it ran to its end; shed: the slo policy refused it (it never ran; its times are NaN)
            "status": pa.array(np.where(res.shed, "shed", "ok").tolist(), pa.string()),
            **{name: table.column(name) for name in SLO_COLUMNS if name in table.column_names},
        }))
    pq.write_table(pa.concat_tables(parts), out / "requests.parquet")
    config = {k: summary[k] for k in ("workload", "rate_rps", "saturation_rps", "saturation_method", "target_load",
                                      "replicas", "scheduler", "aging", "engine", "predictor")}
    config["policies"] = list(per_policy)
    config["command"] = " ".join(sys.argv)
    (out / "config.json").write_text(json.dumps(config, indent=2, default=_json_default) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
