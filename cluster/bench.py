"""``ssjf-cluster bench`` (also spelt ``loadgen bench``): start the serving cluster once per policy on a local Ray, run the identical
workload against each over HTTP, tear down, and compare.

Per policy: ``ray.init`` (a fresh local instance, or ``--ray-address``), ``serve.start`` on a free
loopback port, ``serve.run(build_app(config with router.policy = P))``, wait for ``/healthz``,
a few unrecorded warm-up requests, then ``loadgen run`` (open loop, the same workload and seed for
every policy), and shut down. With ``--sweep-load`` every load of the sweep runs on the same
cluster before it is torn down; the goodput of a policy is the largest swept load at which the SLO
holds (and held at every smaller load).

``serve-default`` in ``--policies`` is the baseline a user would pick instead: the same replicas
with no router actor (``router.mode: serve-default``: Ray Serve's default request router, each
replica running its calls in arrival order). It is the baseline of the ratios whenever it is listed
(``--baseline`` chooses another); the baseline runs first.

``srpt`` (preemptive) runs live too. On replay replicas every request carries its EMULATED
re-predicted remaining length at each progress point (``--repredictor``, default ``measured``: the
simulator's re-predictor with the measured remaining-length Kendall tau, seeded by the router's seed),
so the live router gets exactly the re-predictions that ``loadgen simulate`` gives the same workload,
and the simulated expectation uses the same ones. The report gives the preemptions and the tokens
they sent back to prefill, live (the ingress's counters) and simulated.

SLOs: ``--slo-attach`` sends every request the SLO ``--slo-jct-s`` as its ``x-slo-jct-ms`` header (the
``slo`` policy schedules by it and, with ``router.slo_infeasible: shed`` in the config, answers 503
``slo_unattainable`` to a request predicted to miss it; other policies only carry it), and the
simulation gets the same objectives. Every run with ``--slo-jct-s`` reports its SLO attainment (the
share of requests that finished within it; shed and failed ones missed). ``--goodput-attainment A``
adds a second goodput to a sweep: the largest load whose attainment is at least ``A`` (at it and at
every smaller load), beside the one bounded by ``--slo-metric``.

``--load`` (a fraction of capacity) needs a known capacity: for the ``replay`` engine it is the
saturation throughput that ``loadgen.simulator.measure_saturation`` computes for this workload's
lengths on the config's replicas, batching and engine profile (scaled by ``llm.time_scale``). For
real engines give ``--rate``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import click
import httpx

from cluster.lifecycle import ClusterNotReady, serve_cluster
from deployments.config import AppConfig, RoutingMode
from loadgen.client import ClientConfig, default_model
from loadgen.cmd_report import RATIO_KEYS, emit_comparison, format_summary, plot_runs
from loadgen.cmd_run import RunSettings, build_workload_or_fail, default_out_dir, execute_run
from loadgen.options import WorkloadOptions, parse_policies, with_slo_columns, workload_options
from loadgen.predictors_sim import predict_table
from loadgen.repredict_sim import KINDS as REPREDICTOR_KINDS
from loadgen.repredict_sim import RepredictorSpec
from loadgen.results import read_records, score_slo
from loadgen.simulator import SimWorkload, measure_saturation, simulate
from loadgen.summary import compare, fmt, gain, ratio, ratios_to_baseline, slo_attainment, summarize
from router.config import Balancer, SchedulerConfig
from router.cost_model import EngineProfile
from router.policies import Policy

DEFAULT_POLICIES = "fcfs,ssjf,ssjf-aging"
# Not a policy of the router: the app with no router at all (router.mode serve-default).
SERVE_DEFAULT = RoutingMode.SERVE_DEFAULT.value
SLO_METRICS = ("mean_jct_s", "p50_jct_s", "p90_jct_s", "p99_jct_s", "p90_ttft_s", "p99_ttft_s")


# --- config ---------------------------------------------------------------------------------

def read_app_config(path: str) -> dict:
    """The app config dict of a YAML/JSON file: either ``build_app``'s dict itself, or a Serve
    config (``applications: [{args: {...}}]``), whose first application's ``args`` is used."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"{path} is not valid YAML: {exc}", param_hint="--config") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a mapping, got {type(data).__name__}", param_hint="--config")
    if "applications" in data:
        apps = data["applications"] or []
        if not apps:
            raise click.BadParameter(f"{path} lists no applications", param_hint="--config")
        data = dict(apps[0].get("args") or {})
    return data


def config_for_policy(config: dict, policy: str) -> dict:
    """A copy of ``config`` whose router runs ``policy``, under an app name of its own (so a router
    actor left by another policy's app can never be reused). ``serve-default``: no router
    (``router.mode: serve-default``; its policy field, unused, says FCFS: arrival order)."""
    out = copy.deepcopy(config)
    router = out.setdefault("router", {})
    if policy == SERVE_DEFAULT:
        router.update(mode=SERVE_DEFAULT, policy=Policy.FCFS.value)
    else:
        router.update(mode=RoutingMode.CENTRAL.value, policy=policy)
    out["name"] = f"{config.get('name', 'ssjf')}-{policy}"
    return out


def parse_bench_policies(value: str, baseline: str | None) -> list[str]:
    """``--policies`` (router policies, and ``serve-default``) with the baseline first: ``baseline``
    if given, else ``serve-default`` when listed, else the first listed."""
    names = [p.strip() for p in value.split(",") if p.strip()]
    seen = set()
    for name in names:
        if name in seen:
            raise click.BadParameter(f"policy {name!r} is listed twice", param_hint="--policies")
        seen.add(name)
    out = [SERVE_DEFAULT if name == SERVE_DEFAULT else parse_policies(name, live=True)[0].value for name in names]
    if not out:
        raise click.BadParameter("give at least one policy", param_hint="--policies")
    if baseline is None:
        baseline = SERVE_DEFAULT if SERVE_DEFAULT in out else out[0]
    if baseline not in out:
        raise click.BadParameter(f"the baseline {baseline!r} is not in --policies ({', '.join(out)})",
                                 param_hint="--baseline")
    return [baseline] + [p for p in out if p != baseline]


def validate_config(config: dict) -> AppConfig:
    """``deployments.config.AppConfig`` of ``config`` (ValueError on a bad value)."""
    return AppConfig.from_dict(config)


def parse_sweep(value: str | None) -> list[float] | None:
    """``START:STOP:STEP`` -> loads from START to STOP inclusive."""
    if value is None:
        return None
    try:
        start, stop, step = (float(x) for x in value.split(":"))
    except ValueError:
        raise click.BadParameter(f"expected START:STOP:STEP (e.g. 0.3:1.0:0.1), got {value!r}",
                                 param_hint="--sweep-load") from None
    if not (start > 0 and stop >= start and step > 0):
        raise click.BadParameter(f"need 0 < START <= STOP and STEP > 0, got {value!r}", param_hint="--sweep-load")
    n = int(math.floor((stop - start) / step + 1e-9)) + 1
    return [round(start + i * step, 10) for i in range(n)]


# --- capacity -------------------------------------------------------------------------------

def replay_profile(app):
    """The replay engine's cost profile as it runs: the config's profile times ``llm.time_scale``
    (every term of the iteration time is linear in the profile's coefficients)."""
    profile = EngineProfile.load(app.llm.profile) if app.llm.profile else EngineProfile.default()
    scale = app.llm.time_scale
    return replace(profile, **{name: getattr(profile, name) * scale for name in
                               ("overhead_s", "per_seq_s", "weights_floor_s", "per_token_s", "per_context_token_s")})


def simulated_scheduler(app: AppConfig) -> SchedulerConfig:
    """The scheduling core's model of how ``app`` routes, for ``loadgen.simulator``. Central: the
    router's own config. serve-default, FCFS with Serve's queue: where a replica takes no more calls
    than its slots (``max_ongoing_requests`` = slots, the default) the calls wait in one queue that
    hands them out oldest first as slots free (late binding); above the slots, each call goes at once
    to the less loaded of two random replicas and waits there in arrival order (power of two, no work
    stealing). Where the model differs from Serve (docs/routing.md): Serve finds a free slot by
    probing two replicas with backoff (up to 0.5 s) rather than at once, and compares queue lengths,
    not predicted work."""
    sched = app.scheduler_config()
    if app.routing_mode is RoutingMode.CENTRAL:
        return sched
    balancer = Balancer.LATE_BINDING if app.llm_max_ongoing_requests <= sched.max_batch else Balancer.POWER_OF_TWO
    return replace(sched, policy=Policy.FCFS, balancer=balancer, work_stealing=False, max_queued=None)


def replay_capacity(app, table, seed: int) -> dict:
    """Saturation throughput of a replay cluster for this workload's lengths (see module docstring)."""
    # FCFS saturation does not depend on predictions; the oracle's are cheapest.
    work = SimWorkload.from_table(table, predict_table("oracle", table, seed))
    base = replace(app.scheduler_config(), policy="fcfs")
    sat = measure_saturation(work, base, replay_profile(app), app.llm.num_replicas)
    sat["time_scale"] = app.llm.time_scale
    return sat


def simulator_predictor(app) -> str | None:
    """The ``loadgen simulate --predictor`` that matches the cluster's proxy pool (None: no match)."""
    proxy = app.proxy
    if proxy.predictor in ("learned", "auto") and Path(proxy.artifact_path).exists():
        return f"proxy:{proxy.artifact_path}"
    if proxy.predictor in ("heuristic", "auto"):
        return "heuristic"
    if proxy.predictor == "constant":
        return f"constant:{proxy.constant_tokens:g}"
    return None  # "marker" reads test prompts; "learned" without its artifact fails in the cluster too


def simulate_same(apps: dict[str, AppConfig], table, seed: int, repredictor: str = "measured",
                  slo_jct_s: float | None = None) -> dict | None:
    """What ``loadgen simulate`` predicts for this very workload, cluster shape, engine profile and
    predictor, per policy (``apps``: the app each policy runs, in order; :func:`simulated_scheduler`
    models each): the yardstick for the live gain. ``srpt``: with ``repredictor``, the one the live
    replay replicas got (:func:`srpt_settings`); its summary adds ``preemption`` (what preemption did
    and cost). SLO attainment: against the table's SLO columns (``--slo-attach``: the simulated
    requests carry them too), else against ``slo_jct_s`` if given. None when the predictor has no match."""
    app = next(iter(apps.values()))
    spec = simulator_predictor(app)
    if spec is None:
        return None
    work = SimWorkload.from_table(table, predict_table(spec, table, seed))
    engine = replay_profile(app)
    summaries = {}
    for policy, policy_app in apps.items():
        sched = simulated_scheduler(policy_app)
        srpt = sched.policy is Policy.SRPT
        spec_r = RepredictorSpec.parse(repredictor) if srpt else None
        res = simulate(work, sched, engine, app.llm.num_replicas, repredictor=spec_r)
        summaries[policy] = summarize(res.arrival_at, res.finished_at, started_at=res.started_at,
                                      first_token_at=res.first_token_at, output_tokens=work.output_tokens)
        if work.has_slo or slo_jct_s is not None:
            ttft, jct = (work.slo_ttft_s, work.slo_jct_s) if work.has_slo else (None, slo_jct_s)
            summaries[policy].update(slo_attainment(res.arrival_at, res.first_token_at, res.finished_at, ttft, jct,
                                                    shed=res.shed))
        if srpt:
            from loadgen.cmd_simulate import preemption_summary

            summaries[policy]["preemption"] = preemption_summary(res, work, spec_r)
    return {"predictor": spec, "policies": summaries}


def srpt_settings(settings: RunSettings, app: AppConfig, repredictor: str) -> RunSettings:
    """The run settings of an ``srpt`` run on replay replicas: every request carries its EMULATED
    re-predictions (the simulator's ``repredictor`` at the router's progress points, seeded by the
    router's seed, as :func:`simulate_same` simulates them). Other policies and engines: unchanged."""
    sched = app.scheduler_config()
    if sched.policy is not Policy.SRPT or not settings.replay_lengths or not sched.repredict_every_tokens:
        return settings
    return replace(settings, replay_repredictor=repredictor, repredict_every=sched.repredict_every_tokens,
                   repredict_seed=sched.seed)


def live_vs_simulated(live: dict[str, dict], sim: dict[str, dict], key: str = "mean_jct_s") -> dict:
    """Per policy: the gain over the baseline (1 - policy / baseline) live and simulated, and live / simulated."""
    baseline = next(iter(live))
    out = {}
    for policy in list(live)[1:]:
        live_gain = gain(live[policy].get(key), live[baseline].get(key))
        sim_gain = gain(sim[policy].get(key), sim[baseline].get(key))
        out[policy] = {f"{key}_gain_live": live_gain, f"{key}_gain_simulated": sim_gain,
                       "live_over_simulated": ratio(live_gain, sim_gain)}
    return out


# --- the cluster ---------------------------------------------------------------------------

def warm_up(url: str, model: str | None, n: int, timeout_s: float) -> None:
    """Unrecorded requests so that first-call costs (model load, JIT, connections) stay out of the numbers."""
    if n <= 0:
        return
    if model is None:
        try:
            model = default_model(httpx.get(f"{url}/v1/models", timeout=10).json().get("data") or []) or "warmup"
        except (httpx.HTTPError, ValueError):
            model = "warmup"
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "stream": False}
    for _ in range(n):
        try:
            httpx.post(f"{url}/v1/chat/completions", json=body, timeout=timeout_s)
        except httpx.HTTPError:
            pass  # a failing warm-up shows again, counted, in the measured run


# --- the command ----------------------------------------------------------------------------

@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The cluster: build_app's config dict as YAML/JSON, or a Serve config (first application's args).")
@click.option("--policies", default=DEFAULT_POLICIES, show_default=True,
              help="Comma list of fcfs, ssjf, ssjf-aging, srpt (preemptive: a running request is stopped at a "
                   "progress point for a much shorter one and resumed later), slo (by each request's SLO: "
                   "--slo-attach; the config's router.slo_* knobs apply) and serve-default (no router: Ray "
                   "Serve's default routing, the baseline a user would pick instead).")
@click.option("--baseline", default=None,
              help="The policy every other is compared with (ratios of mean and p99 JCT, and of goodput); it "
                   "runs first [default: serve-default if listed, else the first of --policies].")
@workload_options(with_temperature=True)
@click.option("--sweep-load", default=None, metavar="START:STOP:STEP",
              help="Run every load of the sweep per policy and report goodput (needs --slo-jct-s).")
@click.option("--slo-jct-s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Latency SLO in seconds for goodput: --slo-metric must stay at or below it.")
@click.option("--slo-metric", type=click.Choice(SLO_METRICS), default="p90_jct_s", show_default=True,
              help="Which summary metric the SLO bounds.")
@click.option("--slo-attach", is_flag=True,
              help="Send every request --slo-jct-s as its SLO (header x-slo-jct-ms): the slo policy schedules by it "
                   "(and sheds with router.slo_infeasible: shed); the simulation gets it too.")
@click.option("--goodput-attainment", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Sweeps: also report goodput as the largest load at which at least this share of requests "
                   "finished within --slo-jct-s (shed and failed ones missed), at it and every smaller load.")
@click.option("--model", default=None, help="Model name sent [default: replay: each row's dataset model; else the first listed].")
@click.option("--stream/--no-stream", default=True, show_default=True,
              help="Stream answers (SSE); without it TTFT and TPOT are not measured, and the client reads one body per request.")
@click.option("--concurrency", type=click.IntRange(min=1), default=None, help="Client cap on requests in flight [default: none].")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=600.0, show_default=True,
              help="Per-request limit in seconds.")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True,
              help="Unrecorded requests sent to each fresh cluster before measuring.")
@click.option("--ready-timeout", "ready_timeout_s", type=click.FloatRange(min=0, min_open=True), default=300.0,
              show_default=True, help="Seconds to wait for a started cluster's /healthz.")
@click.option("--repredictor", default="measured", show_default=True,
              help="srpt on replay replicas: the EMULATED re-predictor whose values every request carries (and the "
                   f"simulation uses): {', '.join(REPREDICTOR_KINDS)} (loadgen simulate --repredictor); measured: the "
                   "remaining-length predictor's measured Kendall tau per progress point, as calibrated noise.")
@click.option("--simulate/--no-simulate", "with_simulation", default=True, show_default=True,
              help="Replay clusters: also simulate the same workload, profile and predictor, and report the live "
                   "gain as a fraction of the simulated one.")
@click.option("--ray-address", default=None, help="Use this Ray cluster instead of starting a local one per policy.")
@click.option("--num-cpus", type=click.FloatRange(min=1), default=None,
              help="Logical CPUs of the local Ray [default: enough for the config's replicas].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Results directory: one sub-directory per policy (and load) [default: results/bench-TIMESTAMP].")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Comparison PNG [default: OUT/compare.png].")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON on stdout.")
@click.option("--progress/--no-progress", default=None, help="Live progress bar on stderr [default: when stderr is a terminal].")
def bench(config_path, policies, baseline, sweep_load, slo_jct_s, slo_metric, slo_attach, goodput_attainment, model,
          stream, concurrency, timeout_s, warmup, ready_timeout_s, repredictor, with_simulation, ray_address, num_cpus,
          out_dir, plot_path, as_json, progress, **workload_kwargs):
    """Start the cluster of --config once per policy, run the identical workload, compare FCFS vs SSJF."""
    opts = WorkloadOptions.from_kwargs(workload_kwargs)
    try:
        RepredictorSpec.parse(repredictor)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--repredictor") from None
    policy_names = parse_bench_policies(policies, baseline)
    loads = parse_sweep(sweep_load)
    if loads is not None and slo_jct_s is None:
        raise click.UsageError("--sweep-load needs --slo-jct-s (the SLO that defines goodput)")
    if loads is not None and (opts.rate is not None or opts.load is not None):
        raise click.UsageError("--sweep-load sets the load: drop --rate/--load")
    if slo_attach and slo_jct_s is None:
        raise click.UsageError("--slo-attach sends --slo-jct-s: give it")
    if goodput_attainment is not None and loads is None:
        raise click.UsageError("--goodput-attainment is a goodput over a sweep: give --sweep-load and --slo-jct-s")
    if Policy.SLO.value in policy_names and not slo_attach:
        click.echo("warning: the slo policy schedules by the requests' SLOs; without --slo-attach they carry none "
                   "and it orders like ssjf", err=True)
    base_config = read_app_config(config_path)
    try:
        apps = {p: validate_config(config_for_policy(base_config, p)) for p in policy_names}
        # The cluster as the central router runs it: its capacity and facts do not depend on which
        # policies are listed (the same --load is the same rate in every bench).
        app = validate_config(config_for_policy(base_config, Policy.FCFS.value))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--config") from None
    engine = app.llm.engine if app is not None else (base_config.get("llm") or {}).get("engine", "hf")
    is_replay = engine == "replay"
    if (opts.load is not None or loads is not None) and not is_replay:
        raise click.UsageError(f"--load/--sweep-load need a known capacity, which only the replay engine has "
                               f"(this config runs {engine!r}); give --rate")

    # The workload: prompts are drawn once; rates come from the capacity where loads are asked for.
    capacity = None
    if opts.load is not None or loads is not None:
        pilot = build_workload_or_fail(replace(opts, rate=1.0, load=None).spec())
        capacity = replay_capacity(app, pilot, opts.seed)
    runs = [(None, opts)] if loads is None else [(x, replace(opts, rate=None, load=x)) for x in loads]
    workloads = []
    for load, o in runs:
        spec = o.spec(capacity["saturation_rps"] if capacity else None)
        table = build_workload_or_fail(spec)
        if slo_attach:  # the client sends the column as the header; the simulation reads it too
            table = with_slo_columns(table, None, slo_jct_s)
        workloads.append((load, spec, table))

    out = Path(out_dir) if out_dir else default_out_dir("bench")
    settings = RunSettings(model=model, model_from_dataset=is_replay and model is None, replay_lengths=is_replay,
                           max_tokens=opts.max_tokens, temperature=opts.temperature,
                           progress=sys.stderr.isatty() if progress is None else progress)
    client_config = ClientConfig(url="http://placeholder", stream=stream, timeout_s=timeout_s, max_concurrency=concurrency)
    facts = cluster_facts(base_config, app, config_path, capacity)
    if SERVE_DEFAULT in apps:
        serve_model = simulated_scheduler(apps[SERVE_DEFAULT])
        facts["serve_default"] = {
            "llm_max_ongoing_requests": apps[SERVE_DEFAULT].llm_max_ongoing_requests,
            "simulated_as": f"{serve_model.policy.value}, {serve_model.balancer.value}, no work stealing"}
    results: dict[str, list[tuple[float | None, Path, dict]]] = {}
    # Ray prints some messages of its own (raylet errors) on stdout: keep stdout for the result.
    with contextlib.redirect_stdout(sys.stderr):
        run_policies(policy_names, base_config, workloads, settings, client_config, facts, opts, out, results,
                     model=model, warmup=warmup, timeout_s=timeout_s, ray_address=ray_address, num_cpus=num_cpus,
                     ready_timeout_s=ready_timeout_s, repredictor=repredictor)
    # Attainment is reported where asked for (--slo-attach, --goodput-attainment); else as before.
    score_jct_s = slo_jct_s if slo_attach or goodput_attainment is not None else None
    if score_jct_s is not None:
        score_runs(results, score_jct_s)
    simulated = None
    if with_simulation and is_replay and app is not None:
        simulated = {load: simulate_same(apps, table, opts.seed, repredictor, score_jct_s)
                     for load, _, table in workloads}
    report_bench(results, loads, facts, workloads, out, plot_path, as_json, slo_metric, slo_jct_s, simulated,
                 target_load=opts.load, attainment_goal=goodput_attainment, slo_attached=slo_attach)


def score_runs(results: dict, slo_jct_s: float) -> None:
    """Each run's SLO attainment into its summary: against the SLO its requests carried (--slo-attach:
    the run's own summary has it), else against ``slo_jct_s`` (what the requests were not told)."""
    for runs in results.values():
        for _, run_dir, summary in runs:
            if summary.get("slo_attainment") is None:
                summary.update(score_slo(read_records(run_dir), slo_jct_s=slo_jct_s))


@contextlib.contextmanager
def _cluster(config: dict, **kwargs):
    """:func:`serve_cluster`, with a cluster that never got ready reported as a CLI error."""
    try:
        with serve_cluster(config, **kwargs) as url:
            yield url
    except ClusterNotReady as exc:
        raise click.ClickException(str(exc)) from None


def run_policies(policy_names, base_config, workloads, settings, client_config, facts, opts, out, results, *,
                 model, warmup, timeout_s, ray_address, num_cpus, ready_timeout_s, repredictor="measured") -> None:
    for policy in policy_names:
        cfg = config_for_policy(base_config, policy)
        run_settings = srpt_settings(settings, validate_config(cfg), repredictor)
        click.echo(f"[bench] {policy}: starting the cluster", err=True)
        with _cluster(cfg, ray_address=ray_address, num_cpus=num_cpus, ready_timeout_s=ready_timeout_s) as url:
            warm_up(url, model, warmup, timeout_s)
            for load, spec, table in workloads:
                name = policy if load is None else f"{policy}@{load:g}"
                run_dir = out / (policy if load is None else f"{policy}/load-{load:g}")
                pace = f"{spec.rate:.3f} req/s" if spec.rate else "the trace's own times"
                click.echo(f"[bench] {name}: {table.num_rows} requests at {pace}", err=True)
                before = server_counters(url)
                outcome = execute_run(
                    replace(client_config, url=url), table, replace(run_settings, label=name), run_dir,
                    {"spec": spec.to_dict(), "options": opts.to_dict()},
                    extra_config={"command": "bench", "policy": policy, "load": load, "cluster": facts},
                )
                outcome.summary.update(counter_deltas(before, server_counters(url)))
                results.setdefault(policy, []).append((load, run_dir, outcome.summary))


# What the client cannot see: the ingress's own counters over one run (``GET /metrics``, read before
# and after it, while the cluster is still up). A prediction that missed ``proxy.timeout_s``, or that
# the proxy pool answered without its model (busy, failed, artifact not loaded), is counted there by
# reason; the policy ordered that request without the proxy.
SERVER_COUNTERS = {"proxy_fallbacks": "ssjf_proxy_fallbacks_total", "retries": "ssjf_retries_total",
                   "preemptions": "ssjf_preemptions_total", "preempted_tokens": "ssjf_preempted_tokens_total",
                   "slo_shed": "ssjf_slo_shed_total"}


def parse_counters(text: str) -> dict[str, float]:
    """Prometheus text -> {sample name: value summed over its labels} for every counter."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "counter":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def server_counters(url: str) -> dict[str, float] | None:
    """The counters of the ingress replica that answers ``/metrics`` (the bench configs run one);
    None when they cannot be read (the run's client-side numbers stand without them)."""
    try:
        resp = httpx.get(f"{url}/metrics", timeout=10.0)
        resp.raise_for_status()
        return parse_counters(resp.text)
    except (httpx.HTTPError, ValueError):
        return None


def counter_deltas(before: dict | None, after: dict | None) -> dict[str, int]:
    if before is None or after is None:
        return {}
    return {key: int(after.get(name, 0.0) - before.get(name, 0.0)) for key, name in SERVER_COUNTERS.items()}


def fallback_warnings(summaries: dict[str, dict], prefix: str = "") -> list[str]:
    """One line per run in which some requests were scheduled on the heuristic's guess."""
    lines = []
    for policy, s in summaries.items():
        n = s.get("proxy_fallbacks") or 0
        if n:
            lines.append(f"{prefix}{policy}: {n} of {s.get('num_requests', '?')} predictions were not the proxy "
                         f"model's (it missed proxy.timeout_s, was busy or failed; reasons in the ingress's "
                         f"ssjf_proxy_fallbacks_total): those requests were ordered without the proxy")
    return lines


def cluster_facts(config: dict, app, config_path: str, capacity: dict | None) -> dict:
    facts = {"config_path": str(config_path), "config": app.to_dict() if app is not None else config}
    if app is not None:
        facts.update(engine=app.llm.engine, num_replicas=app.llm.num_replicas, batching=app.llm.batching,
                     max_batch=app.llm.max_batch, predictor=app.proxy.predictor, balancer=app.router.balancer)
        if app.llm.engine == "replay":
            facts["emulated"] = True  # replay engines emulate generation at a profile's cost
            facts["time_scale"] = app.llm.time_scale
    if capacity is not None:
        facts["saturation_rps"] = capacity["saturation_rps"]
        facts["saturation_method"] = capacity["method"]
    try:
        import ray

        facts["ray_version"] = ray.__version__
    except ImportError:
        pass
    return facts


SLOWDOWN_WARN = 1.5


def slowdown_warning(live: dict[str, dict], sim: dict[str, dict], time_scale: float | None) -> str | None:
    """A warning when the live baseline ran much slower than the simulation of the same cluster: then
    the live queues (and gains) come from this machine's limits, not from the emulated engine."""
    baseline = next(iter(live))
    a, b = live[baseline].get("mean_jct_s"), (sim.get(baseline) or {}).get("mean_jct_s")
    if not a or not b or a <= SLOWDOWN_WARN * b:
        return None
    return (f"the live cluster ran {a / b:.1f}x slower than its simulation ({baseline} mean JCT {a:.3f} s live vs "
            f"{b:.3f} s simulated): this machine cannot keep up with llm.time_scale={time_scale}, so live queues and "
            "gains are not those of the emulated engine; raise llm.time_scale or lower the load")


def serve_default_warning(facts: dict) -> str | None:
    """A warning when serve-default ran on a replay engine sped up by ``llm.time_scale`` < 1 with its
    calls queued in Serve: Serve's request router finds a freed slot only at its next probe (backoff
    from 25 ms doubling to 0.5 s while every replica is full), wall time that the scale does not shrink,
    so it weighs more than it would beside the emulated engine at its own speed."""
    sd, scale = facts.get("serve_default"), facts.get("time_scale")
    if not sd or scale is None or scale >= 1 or "late-binding" not in sd.get("simulated_as", ""):
        return None
    return (f"serve-default ran at llm.time_scale={scale:g}: Serve's routing backoff while every replica is full "
            f"(25 ms doubling to 0.5 s, RAY_SERVE_ROUTER_RETRY_*) is not scaled, so it weighs about {1 / scale:.0f}x "
            "more here than beside the emulated engine at full speed; compare at llm.time_scale 1 for the real cost")


def goodput(points: list[tuple[float, dict]], metric: str, slo_s: float) -> float | None:
    """The largest load at which the SLO held, with every request completed, at it and every smaller load."""
    best = None
    for load, summary in sorted(points, key=lambda p: p[0]):
        value = summary.get(metric)
        if value is None or value > slo_s or summary.get("num_failed", 0) > 0:
            break
        best = load
    return best


def goodput_by_attainment(points: list[tuple[float, dict]], goal: float) -> float | None:
    """The largest load at which at least ``goal`` of the requests met their SLO (``slo_attainment``;
    shed and failed requests missed it), at it and every smaller load."""
    best = None
    for load, summary in sorted(points, key=lambda p: p[0]):
        value = summary.get("slo_attainment")
        if value is None or value < goal:
            break
        best = load
    return best


def report_bench(results, loads, facts, workloads, out: Path, plot_path, as_json, slo_metric, slo_jct_s,
                 simulated: dict | None = None, target_load: float | None = None, *,
                 attainment_goal: float | None = None, slo_attached: bool = False) -> None:
    """Write OUT/bench.json and print the comparison (one workload) or the goodput sweep (``loads``).
    ``attainment_goal``: a sweep's second goodput (:func:`goodput_by_attainment`); ``slo_attached``:
    the requests carried ``slo_jct_s`` (else it only scored them)."""
    spec_rates = {load: spec.rate for load, spec, _ in workloads}
    slo = {"jct_s": slo_jct_s, "attached": slo_attached}
    if loads is None:
        report_comparison(results, facts, workloads[0][1], spec_rates[None], out, plot_path, as_json,
                          (simulated or {}).get(None), target_load, slo=slo)
    else:
        report_sweep(results, loads, facts, workloads[0][1], spec_rates, out, as_json, slo_metric, slo_jct_s,
                     simulated or {}, attainment_goal=attainment_goal, slo=slo)


# Ratios to the baseline that bench.json holds (the printed table shows loadgen compare's RATIO_KEYS).
BENCH_RATIO_KEYS = ("mean_jct_s", "p50_jct_s", "p90_jct_s", "p99_jct_s", "mean_ttft_s", "p99_ttft_s",
                    "mean_jct_long_s", "p99_jct_long_s")


# The headline against the baseline: each policy's mean and p99 JCT (per load in a sweep) and goodput.
HEADLINE_KEYS = ("mean_jct_s", "p99_jct_s")


def vs_baseline(summaries: dict[str, dict], good: dict | None = None, baseline: str | None = None) -> dict:
    """``{policy: {"mean_jct_s": ratio, "p99_jct_s": ratio[, "goodput": ratio]}}`` for every policy but
    the baseline (default: the first): its value over the baseline's (None where undefined, e.g. a
    baseline with no goodput). ``good``: :func:`sweep_goodput`'s answer."""
    baseline = next(iter(summaries)) if baseline is None else baseline
    out = ratios_to_baseline(summaries, HEADLINE_KEYS, baseline)
    if good is not None:
        for p in out:
            out[p]["goodput"] = ratio(good[p]["rate_rps"], good[baseline]["rate_rps"])
    return out


def _headline(rows: dict, baseline: str) -> list[str]:
    """Printed lines of :func:`vs_baseline`'s answer."""
    lines = [f"vs {baseline} (policy / {baseline}; JCT below 1 and goodput above 1 are better):"]
    for p, r in rows.items():
        parts = [f"mean JCT {fmt(r.get('mean_jct_s'), '{:.3f}')}", f"p99 JCT {fmt(r.get('p99_jct_s'), '{:.3f}')}"]
        if "goodput" in r:
            parts.append(f"goodput {fmt(r['goodput'], '{:.3f}')}")
        lines.append(f"  {p}: " + ", ".join(parts))
    return lines


def _finish(summary: dict, warnings: list[str], out: Path) -> None:
    """Warnings to stderr and into the summary, which is written to OUT/bench.json."""
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if warnings:
        summary["warnings"] = warnings
    (out / "bench.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")


def preemption_rows(summaries: dict[str, dict], sim: dict | None) -> dict:
    """srpt runs: preemptions and the tokens they sent back to prefill, live (the ingress's counters)
    and simulated (with the simulator's re-prefill time)."""
    rows = {}
    for policy, s in summaries.items():
        simulated = ((sim or {}).get("policies", {}).get(policy) or {}).get("preemption")
        if policy != Policy.SRPT.value and simulated is None:
            continue
        rows[policy] = {"live": {"num_preemptions": s.get("preemptions"), "preempted_tokens": s.get("preempted_tokens")},
                        "simulated": simulated}
    return rows


def _preemption_lines(rows: dict) -> list[str]:
    lines = []
    for policy, row in rows.items():
        live, simulated = row["live"], row["simulated"] or {}
        line = (f"{policy}: {fmt(live['num_preemptions'], '{}')} preemptions live "
                f"({fmt(live['preempted_tokens'], '{}')} generated tokens prefilled again on resume)")
        if simulated:
            line += (f"; simulated {simulated['num_preemptions']} ({simulated['resume_tokens']} tokens, "
                     f"{simulated['resume_s']:.2f} s of re-prefill; re-predictor {simulated['repredictor']}, emulated)")
        lines.append(line)
    return lines


def attainment_lines(summaries: dict[str, dict], slo: dict | None, sim: dict | None = None) -> list[str]:
    """Per policy: its SLO attainment and the requests shed (live), and the simulated attainment."""
    if not slo or slo.get("jct_s") is None or not any(s.get("slo_attainment") is not None for s in summaries.values()):
        return []
    how = "sent with every request" if slo.get("attached") else "scored only: the requests did not carry it"
    lines = [f"SLO attainment (JCT <= {slo['jct_s']:g} s, {how}; shed and failed requests missed):"]
    for p, s in summaries.items():
        line = f"  {p}: {fmt(s.get('slo_attainment'), '{:.1%}')} ({s.get('num_slo_met')} of {s.get('num_with_slo')})"
        if s.get("num_shed"):
            line += f", {s['num_shed']} shed (503 slo_unattainable)"
        simulated = ((sim or {}).get(p) or {}).get("slo_attainment")
        if simulated is not None:
            line += f"; simulated {simulated:.1%}"
        lines.append(line)
    return lines


def report_comparison(results, facts, spec, rate, out: Path, plot_path, as_json, sim: dict | None,
                      target_load: float | None, slo: dict | None = None) -> None:
    """One workload per policy: the loadgen compare table, the plot, and the live gain vs the simulated one."""
    summaries = {p: runs[0][2] for p, runs in results.items()}
    tables = {p: read_records(runs[0][1]) for p, runs in results.items()}
    png = Path(plot_path) if plot_path else out / "compare.png"
    plot_runs(tables, png, title=" vs ".join(tables) + f" ({facts.get('engine', '?')}, live)")
    baseline = next(iter(summaries))
    summary = {
        "workload": spec.to_dict(), "rate_rps": rate, "target_load": target_load,
        "saturation_rps": facts.get("saturation_rps"), "cluster": facts, "policies": summaries,
        "baseline": baseline, "vs_baseline": vs_baseline(summaries),
        f"ratios_vs_{baseline}": compare(summaries, baseline, keys=BENCH_RATIO_KEYS),
        "results_dirs": {p: str(runs[0][1]) for p, runs in results.items()},
    }
    slo_lines = attainment_lines(summaries, slo, (sim or {}).get("policies"))
    if slo_lines:
        summary["slo"] = slo
    warnings = fallback_warnings(summaries) + [w for w in [serve_default_warning(facts)] if w]
    preemption = preemption_rows(summaries, sim)
    if preemption:
        summary["preemption"] = preemption
    if sim is not None:
        summary["simulated"] = {**sim, "live_vs_simulated": live_vs_simulated(summaries, sim["policies"])}
        warning = slowdown_warning(summaries, sim["policies"], facts.get("time_scale"))
        if warning:
            warnings.append(warning)
    _finish(summary, warnings, out)
    if as_json:
        click.echo(json.dumps({**summary, "plot": str(png)}, indent=2, default=str))
        return
    emit_comparison(tables, summaries, ratios_to_baseline(summaries, RATIO_KEYS), False, png)
    if len(summaries) > 1:
        click.echo("\n" + "\n".join(_headline(summary["vs_baseline"], baseline)))
    if sim is not None:
        click.echo(f"\nsimulated, same workload (predictor {sim['predictor']}), mean JCT gain over {baseline}:")
        for policy, row in summary["simulated"]["live_vs_simulated"].items():
            click.echo(f"  {policy}: live {fmt(row['mean_jct_s_gain_live'], '{:.1%}')}, simulated "
                       f"{fmt(row['mean_jct_s_gain_simulated'], '{:.1%}')}, live/simulated "
                       f"{fmt(row['live_over_simulated'], '{:.2f}')}")
    if preemption:
        click.echo("\npreemption (srpt):\n" + "\n".join("  " + line for line in _preemption_lines(preemption)))
    if slo_lines:
        click.echo("\n" + "\n".join(slo_lines))
    click.echo(f"results: {out}")


def _at_load(results, load) -> dict[str, dict]:
    """{policy: summary of its run at ``load``}."""
    return {p: next(s for x, _, s in runs if x == load) for p, runs in results.items()}


def sweep_goodput(results, loads, spec_rates, slo_metric, slo_jct_s, simulated: dict,
                  attainment_goal: float | None = None) -> dict:
    """Per policy: the live goodput (load and rate) and, where every load was simulated, the simulated one.
    The first policy is the baseline: the others' goodput rate over its (``ratio_vs_baseline``).
    ``attainment_goal``: the same again by attainment (:func:`goodput_by_attainment`) under ``by_attainment``."""
    all_simulated = bool(simulated) and all(simulated.get(load) for load in loads)
    good = {}
    for p, runs in results.items():
        g = goodput([(load, s) for load, _, s in runs], slo_metric, slo_jct_s)
        good[p] = {"load": g, "rate_rps": spec_rates.get(g) if g is not None else None}
        if all_simulated:
            good[p]["load_simulated"] = goodput([(load, simulated[load]["policies"][p]) for load in loads],
                                                slo_metric, slo_jct_s)
        if attainment_goal is not None:
            a = goodput_by_attainment([(load, s) for load, _, s in runs], attainment_goal)
            by = good[p]["by_attainment"] = {"load": a, "rate_rps": spec_rates.get(a) if a is not None else None}
            if all_simulated:
                by["load_simulated"] = goodput_by_attainment(
                    [(load, simulated[load]["policies"][p]) for load in loads], attainment_goal)
    baseline = next(iter(good), None)
    for p in list(good)[1:]:
        good[p]["ratio_vs_baseline"] = ratio(good[p]["rate_rps"], good[baseline]["rate_rps"])
        if attainment_goal is not None:
            good[p]["by_attainment"]["ratio_vs_baseline"] = ratio(good[p]["by_attainment"]["rate_rps"],
                                                                  good[baseline]["by_attainment"]["rate_rps"])
    return good


def _goodput_line(g: dict, baseline: str) -> str:
    line = "none" if g["load"] is None else f"load {g['load']:g} = {g['rate_rps']:.3f} req/s"
    if "load_simulated" in g:
        line += f" (simulated: {'none' if g['load_simulated'] is None else format(g['load_simulated'], 'g')})"
    if "ratio_vs_baseline" in g:
        line += f"; {fmt(g['ratio_vs_baseline'], '{:.3f}')} x {baseline}'s"
    return line


def report_sweep(results, loads, facts, spec, spec_rates, out: Path, as_json, slo_metric, slo_jct_s,
                 simulated: dict, *, attainment_goal: float | None = None, slo: dict | None = None) -> None:
    """Every load of the sweep per policy: a table per load and each policy's goodput (and, with
    ``attainment_goal``, its goodput by SLO attainment)."""
    for p, runs in results.items():
        for load, _, run_summary in runs:
            if simulated.get(load) is not None:
                run_summary["simulated_mean_jct_s"] = simulated[load]["policies"][p].get("mean_jct_s")
    sweep = {p: [{"load": load, "rate_rps": spec_rates[load], "results_dir": str(d), **s} for load, d, s in runs]
             for p, runs in results.items()}
    good = sweep_goodput(results, loads, spec_rates, slo_metric, slo_jct_s, simulated, attainment_goal)
    baseline = next(iter(results))
    # Mean and p99 per load, goodput over the sweep: each policy against the baseline.
    versus = {p: {key: {} for key in HEADLINE_KEYS} for p in list(results)[1:]}
    for load in loads:
        for p, r in vs_baseline(_at_load(results, load)).items():
            for key in HEADLINE_KEYS:
                versus[p][key][f"{load:g}"] = r[key]
    for p in versus:
        versus[p]["goodput"] = good[p]["ratio_vs_baseline"]
        if attainment_goal is not None:
            versus[p]["goodput_by_attainment"] = good[p]["by_attainment"]["ratio_vs_baseline"]
    summary = {"workload": spec.to_dict(), "cluster": facts, "saturation_rps": facts.get("saturation_rps"),
               "slo": {"metric": slo_metric, "max_s": slo_jct_s, "attainment_goal": attainment_goal,
                       "attached": bool((slo or {}).get("attached"))},
               "baseline": baseline, "goodput": good, "vs_baseline": versus, "sweep": sweep}
    warnings = [w for w in [serve_default_warning(facts)] if w]
    for load in loads:
        sim = simulated.get(load)
        per = _at_load(results, load)
        warning = slowdown_warning(per, sim["policies"], facts.get("time_scale")) if sim else None
        warnings += fallback_warnings(per, prefix=f"load {load:g}: ") + ([f"load {load:g}: {warning}"] if warning else [])
    _finish(summary, warnings, out)
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    for load in loads:
        click.echo(f"load {load:g} ({spec_rates[load]:.3f} req/s):")
        per = _at_load(results, load)
        click.echo(format_summary(per, ratios_to_baseline(per, RATIO_KEYS)))
        sim = simulated.get(load)
        lines = attainment_lines(per, slo, sim["policies"] if sim else None)
        if lines:
            click.echo("\n".join(lines))
        click.echo()
    click.echo(f"goodput (largest load with {slo_metric} <= {slo_jct_s:g} s and no failures, at it and below):")
    for p, g in good.items():
        click.echo(f"  {p}: {_goodput_line(g, baseline)}")
    if attainment_goal is not None:
        click.echo(f"goodput by attainment (largest load where at least {attainment_goal:.0%} of requests finished "
                   f"within {slo_jct_s:g} s, at it and below):")
        for p, g in good.items():
            click.echo(f"  {p}: {_goodput_line(g['by_attainment'], baseline)}")
    click.echo(f"results: {out}")
