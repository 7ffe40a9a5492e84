"""``ssjf-cluster bench``'s pure parts (config per policy, sweep parsing, goodput, capacity) and its
argument errors, which all come before any cluster starts."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from cluster.bench import config_for_policy, goodput, parse_bench_policies, parse_sweep, read_app_config
from cluster.cli import main

REPLAY = {"name": "demo", "llm": {"engine": "replay", "num_replicas": 2, "batching": "none", "time_scale": 0.5},
          "proxy": {"predictor": "heuristic"}}


def test_config_for_policy_sets_the_router_policy_and_a_name_of_its_own():
    cfg = config_for_policy(REPLAY, "ssjf-aging")
    assert cfg["router"]["policy"] == "ssjf-aging" and cfg["name"] == "demo-ssjf-aging"
    assert cfg["router"]["mode"] == "central"
    assert "router" not in REPLAY  # the input is left alone


def test_serve_default_is_the_app_with_no_router_and_its_baseline_by_default():
    from deployments.config import AppConfig, RoutingMode

    cfg = config_for_policy({**REPLAY, "router": {"mode": "serve-default"}}, "ssjf")
    assert cfg["router"]["mode"] == "central"  # a listed policy always runs on the router
    base = config_for_policy(REPLAY, "serve-default")
    assert base["router"] == {"mode": "serve-default", "policy": "fcfs"} and base["name"] == "demo-serve-default"
    app = AppConfig.from_dict(base)
    assert app.routing_mode is RoutingMode.SERVE_DEFAULT and app.llm_max_ongoing_requests == 1  # batching none
    assert parse_bench_policies("fcfs,ssjf,serve-default", None) == ["serve-default", "fcfs", "ssjf"]
    assert parse_bench_policies("fcfs,ssjf", None) == ["fcfs", "ssjf"]  # as before: the first
    assert parse_bench_policies("serve-default,fcfs,ssjf", "fcfs") == ["fcfs", "serve-default", "ssjf"]


def test_serve_default_is_simulated_as_fcfs_on_serves_queue():
    """Replicas that take no more calls than their slots leave the queue to Serve, one queue handed out
    oldest first (late binding); a wider cap sends every call at once to one of two random replicas."""
    from cluster.bench import simulated_scheduler
    from deployments.config import AppConfig
    from router.config import Balancer
    from router.policies import Policy

    central = AppConfig.from_dict(config_for_policy(REPLAY, "ssjf"))
    assert simulated_scheduler(central) == central.scheduler_config()
    slots = simulated_scheduler(AppConfig.from_dict(config_for_policy(REPLAY, "serve-default")))
    assert (slots.policy, slots.balancer, slots.work_stealing, slots.max_queued) == (
        Policy.FCFS, Balancer.LATE_BINDING, False, None)
    wide = {**REPLAY, "llm": {**REPLAY["llm"], "max_ongoing_requests": 4}}
    wider = simulated_scheduler(AppConfig.from_dict(config_for_policy(wide, "serve-default")))
    assert (wider.policy, wider.balancer, wider.work_stealing) == (Policy.FCFS, Balancer.POWER_OF_TWO, False)


def test_read_app_config_accepts_a_serve_config_or_the_dict(tmp_path):
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(REPLAY))
    serve_cfg = tmp_path / "serve.yaml"
    serve_cfg.write_text(yaml.safe_dump({"applications": [{"name": "x", "import_path": "deployments.app:app",
                                                            "args": REPLAY}]}))
    assert read_app_config(str(plain)) == REPLAY
    assert read_app_config(str(serve_cfg)) == REPLAY


def test_parse_sweep_is_inclusive():
    assert parse_sweep("0.3:1.0:0.1") == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert parse_sweep("0.5:0.5:0.1") == [0.5]
    assert parse_sweep(None) is None


def test_goodput_is_the_largest_load_before_the_first_violation():
    points = [(0.9, {"p90_jct_s": 3.0, "num_failed": 0}), (0.5, {"p90_jct_s": 1.0, "num_failed": 0}),
              (0.7, {"p90_jct_s": 1.9, "num_failed": 0}), (1.0, {"p90_jct_s": 1.5, "num_failed": 0})]
    assert goodput(points, "p90_jct_s", 2.0) == 0.7  # 1.0 meets the SLO again, but 0.9 did not
    assert goodput(points, "p90_jct_s", 0.5) is None
    failed = [(0.5, {"p90_jct_s": 1.0, "num_failed": 0}), (0.7, {"p90_jct_s": 1.0, "num_failed": 3})]
    assert goodput(failed, "p90_jct_s", 2.0) == 0.5  # failures break the SLO


def test_replay_capacity_scales_with_time_scale_and_replicas():
    pytest.importorskip("deployments.config")
    from cluster.bench import replay_capacity
    from deployments.config import AppConfig
    from loadgen.workload import WorkloadSpec, build_workload

    table = build_workload(WorkloadSpec(dataset="arena", trace="poisson", rate=1.0, num_requests=60, seed=1))
    one = replay_capacity(AppConfig.from_dict({"llm": {"engine": "replay", "num_replicas": 1, "batching": "none"}}),
                          table, 1)["saturation_rps"]
    fast = replay_capacity(AppConfig.from_dict({"llm": {"engine": "replay", "num_replicas": 1, "batching": "none",
                                                        "time_scale": 0.25}}), table, 1)["saturation_rps"]
    two = replay_capacity(AppConfig.from_dict({"llm": {"engine": "replay", "num_replicas": 2, "batching": "none"}}),
                          table, 1)["saturation_rps"]
    assert fast == pytest.approx(4 * one)
    assert two > 1.5 * one


@pytest.fixture
def config_file(tmp_path):
    def write(cfg):
        path = tmp_path / "cluster.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return str(path)
    return write


@pytest.mark.parametrize("args,message", [
    (("--policies", "fcfs,oracle"), "exists only in `loadgen simulate`"),
    (("--policies", "fcfs,lifo"), "unknown policy 'lifo'"),
    (("--policies", "fcfs,fcfs"), "listed twice"),
    (("--policies", "serve-default,serve-default"), "listed twice"),
    (("--policies", "fcfs,ssjf", "--baseline", "serve-default"), "not in --policies"),
    (("--sweep-load", "0.3:1.0"), "START:STOP:STEP"),
    (("--sweep-load", "0.9:0.3:0.1"), "START <= STOP"),
    (("--sweep-load", "0.3:1.0:0.1"), "needs --slo-jct-s"),
    (("--sweep-load", "0.3:1.0:0.1", "--slo-jct-s", "5", "--rate", "2"), "drop --rate"),
    (("--rate", "1", "--load", "0.5"), "not both"),
    (("--rate", "1", "--temperature", "2.5"), "--temperature"),
    (("--rate", "1", "--temperature", "-0.1"), "--temperature"),
    (("--rate", "1", "--slo-attach"), "--slo-attach sends --slo-jct-s"),
    (("--rate", "1", "--slo-jct-s", "5", "--goodput-attainment", "0.9"), "give --sweep-load"),
    (("--sweep-load", "0.3:1.0:0.1", "--slo-jct-s", "5", "--goodput-attainment", "1.5"), "--goodput-attainment"),
    (("--sweep-load", "0.3:1.0:0.1", "--slo-jct-s", "5", "--goodput-attainment", "0"), "--goodput-attainment"),
])
def test_bench_rejects_bad_arguments(config_file, args, message):
    result = CliRunner().invoke(main, ["bench", "--config", config_file(REPLAY), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_bench_rejects_a_bad_config_and_load_without_capacity(config_file):
    pytest.importorskip("deployments.config")
    result = CliRunner().invoke(main, ["bench", "--config", config_file({"llm": {"engine": "tpu"}}), "--rate", "1"])
    assert result.exit_code == 2 and "tpu" in result.output
    hf = {"llm": {"engine": "hf", "num_replicas": 1}}
    result = CliRunner().invoke(main, ["bench", "--config", config_file(hf), "--load", "0.9"])
    assert result.exit_code == 2 and "give --rate" in result.output
    assert CliRunner().invoke(main, ["bench", "--rate", "1"]).exit_code == 2  # no --config


def test_simulate_same_and_live_vs_simulated():
    pytest.importorskip("deployments.config")
    pytest.importorskip("proxy_model.predictor")
    from dataclasses import replace

    from cluster.bench import live_vs_simulated, simulate_same
    from deployments.config import AppConfig
    from loadgen.workload import WorkloadSpec, build_workload

    app = AppConfig.from_dict({"llm": {"engine": "replay", "num_replicas": 1, "batching": "none", "time_scale": 0.01},
                               "proxy": {"predictor": "constant", "constant_tokens": 100}})
    table = build_workload(WorkloadSpec(dataset="arena", trace="poisson", rate=50.0, num_requests=40, seed=2))
    sim = simulate_same({"fcfs": replace(app, router=replace(app.router, policy="fcfs")), "ssjf": app}, table, seed=2)
    assert sim["predictor"] == "constant:100"
    # A constant prediction gives SSJF nothing to sort by: it runs in FCFS order.
    assert sim["policies"]["ssjf"]["mean_jct_s"] == pytest.approx(sim["policies"]["fcfs"]["mean_jct_s"])
    rows = live_vs_simulated({"fcfs": {"mean_jct_s": 10.0}, "ssjf": {"mean_jct_s": 7.0}},
                             {"fcfs": {"mean_jct_s": 10.0}, "ssjf": {"mean_jct_s": 6.0}})
    assert rows["ssjf"]["mean_jct_s_gain_live"] == pytest.approx(0.3)
    assert rows["ssjf"]["mean_jct_s_gain_simulated"] == pytest.approx(0.4)
    assert rows["ssjf"]["live_over_simulated"] == pytest.approx(0.75)


def test_slowdown_warning_names_the_setting():
    from cluster.bench import slowdown_warning

    sim = {"fcfs": {"mean_jct_s": 2.0}}
    assert slowdown_warning({"fcfs": {"mean_jct_s": 2.5}}, sim, 0.1) is None
    warning = slowdown_warning({"fcfs": {"mean_jct_s": 8.0}}, sim, 0.1)
    assert "4.0x slower" in warning and "llm.time_scale" in warning


def test_server_counters_over_one_run_come_from_the_ingress_metrics():
    # The ingress's real Prometheus registry, rendered as GET /metrics renders it.
    from cluster.bench import counter_deltas, fallback_warnings, parse_counters
    from deployments.metrics import IngressMetrics

    metrics = IngressMetrics()
    metrics.proxy_fallbacks.labels("timeout").inc(2)  # warm-up, before the run
    metrics.retries.labels("misrouted").inc()
    before = parse_counters(metrics.render()[0].decode())
    metrics.proxy_fallbacks.labels("timeout").inc(3)  # every reason counts: the ingress's and the pool's
    metrics.proxy_fallbacks.labels("busy").inc(1)
    metrics.proxy_fallbacks.labels("load_failed").inc(1)
    metrics.retries.labels("misrouted").inc(2)
    metrics.retries.labels("replica_died").inc()
    metrics.preemptions.inc(2)  # srpt: two streams preempted, after 40 tokens in all
    metrics.preempted_tokens.inc(40)
    metrics.slo_shed.inc(3)  # slo: three requests answered 503 slo_unattainable
    after = parse_counters(metrics.render()[0].decode())
    assert counter_deltas(before, after) == {"proxy_fallbacks": 5, "retries": 3, "preemptions": 2,
                                             "preempted_tokens": 40, "slo_shed": 3}
    assert counter_deltas(None, after) == {}  # unreadable: nothing claimed
    lines = fallback_warnings({"fcfs": {"proxy_fallbacks": 0, "num_requests": 9},
                               "ssjf": {"proxy_fallbacks": 5, "num_requests": 9}}, prefix="load 0.9: ")
    assert len(lines) == 1 and lines[0].startswith("load 0.9: ssjf: 5 of 9 predictions") and "proxy.timeout_s" in lines[0]


def test_loadgen_bench_is_an_alias_that_runs_the_cluster_command(config_file):
    """The old spelling runs ``python -m cluster.cli bench`` as a process: same arguments, same exit code."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "loadgen.cli", "bench", "--config", config_file(REPLAY),
                           "--policies", "fcfs,oracle"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "exists only in `loadgen simulate`" in proc.stderr and "cluster.cli bench" in proc.stderr



def _run_dir(tmp_path, name, jcts, fallbacks=0):
    """A results directory of ok requests with the given JCTs, and its summary (with bench's counters)."""
    from loadgen.client import PlannedRequest, RequestRecord
    from loadgen.results import records_table, summarize, write_results

    records = []
    for i, jct in enumerate(jcts):
        rec = RequestRecord.planned(PlannedRequest(f"r{i}", scheduled_at=float(i), model="m", expected_output_tokens=10))
        rec.status, rec.error = "ok", None
        rec.sent_at, rec.first_token_at, rec.last_token_at, rec.done_at = float(i), i + 0.1, i + jct, i + jct
        rec.num_output_tokens = 10
        rec.finish_metrics()
        records.append(rec)
    summary = {**summarize(records_table(records)), "proxy_fallbacks": fallbacks, "retries": 0}
    write_results(tmp_path / name, records, {"label": name}, summary)
    return tmp_path / name, summary


def test_report_bench_compares_policies_and_sweeps_goodput(tmp_path, capsys):
    import json

    from cluster.bench import report_bench
    from loadgen.workload import WorkloadSpec

    spec = WorkloadSpec(dataset="arena", trace="poisson", rate=2.0, num_requests=3)
    facts = {"engine": "replay", "time_scale": 1.0}
    fcfs, ssjf = _run_dir(tmp_path, "fcfs", [4.0, 4.0, 4.0]), _run_dir(tmp_path, "ssjf", [1.0, 2.0, 3.0], fallbacks=1)
    sim = {"predictor": "heuristic", "policies": {"fcfs": {"mean_jct_s": 4.0}, "ssjf": {"mean_jct_s": 3.0}}}
    report_bench({"fcfs": [(None, *fcfs)], "ssjf": [(None, *ssjf)]}, None, facts, [(None, spec, None)], tmp_path,
                 None, False, "p90_jct_s", None, {None: sim})
    out, err = capsys.readouterr()
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["ratios_vs_fcfs"]["ssjf"]["mean_jct_s_ratio"] == pytest.approx(0.5)
    row = bench["simulated"]["live_vs_simulated"]["ssjf"]  # live gain 50%, simulated 25%
    assert row["live_over_simulated"] == pytest.approx(2.0)
    assert "live 50.0%, simulated 25.0%, live/simulated 2.00" in out and (tmp_path / "compare.png").is_file()
    assert "ssjf: 1 of 3 predictions" in err and bench["warnings"]

    sweep = {"fcfs": [(0.5, *fcfs), (0.9, *_run_dir(tmp_path, "fcfs9", [9.0, 9.0, 9.0]))],
             "ssjf": [(0.5, *ssjf), (0.9, *_run_dir(tmp_path, "ssjf9", [2.0, 3.0, 4.0]))]}
    workloads = [(0.5, spec, None), (0.9, spec, None)]
    report_bench(sweep, [0.5, 0.9], facts, workloads, tmp_path, None, False, "p90_jct_s", 5.0, None)
    out, _ = capsys.readouterr()
    good = json.loads((tmp_path / "bench.json").read_text())["goodput"]
    assert good["fcfs"]["load"] == 0.5 and good["ssjf"]["load"] == 0.9  # FCFS's p90 broke the 5 s SLO at 0.9
    assert "  ssjf: load 0.9 = 2.000 req/s" in out and "load 0.9 (2.000 req/s):" in out


def test_every_policy_is_reported_as_ratios_to_the_serve_default_baseline(tmp_path, capsys):
    """Mean and p99 JCT as ratios to the baseline in one comparison; per load and goodput in a sweep."""
    import json

    from cluster.bench import report_bench
    from loadgen.workload import WorkloadSpec

    spec = WorkloadSpec(dataset="arena", trace="poisson", rate=2.0, num_requests=3)
    facts = {"engine": "replay", "time_scale": 1.0}
    base, ssjf = _run_dir(tmp_path, "sd", [4.0, 4.0, 4.0]), _run_dir(tmp_path, "ssjf", [1.0, 2.0, 3.0])
    report_bench({"serve-default": [(None, *base)], "ssjf": [(None, *ssjf)]}, None, facts, [(None, spec, None)],
                 tmp_path, None, False, "p90_jct_s", None, None)
    out, _ = capsys.readouterr()
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["baseline"] == "serve-default"
    row = bench["vs_baseline"]["ssjf"]
    assert row["mean_jct_s"] == pytest.approx(0.5) and row["p99_jct_s"] == pytest.approx(2.98 / 4.0)
    assert bench["ratios_vs_serve-default"]["ssjf"]["mean_jct_s_ratio"] == pytest.approx(0.5)
    assert "vs serve-default" in out and "ssjf: mean JCT 0.500, p99 JCT 0.745" in out

    sweep = {"serve-default": [(0.5, *base), (0.9, *_run_dir(tmp_path, "sd9", [9.0, 9.0, 9.0]))],
             "ssjf": [(0.5, *ssjf), (0.9, *_run_dir(tmp_path, "ssjf9", [2.0, 3.0, 4.0]))]}
    rates = WorkloadSpec(dataset="arena", trace="poisson", rate=3.6, num_requests=3)
    report_bench(sweep, [0.5, 0.9], facts, [(0.5, spec, None), (0.9, rates, None)], tmp_path, None, False,
                 "p90_jct_s", 5.0, None)
    out, _ = capsys.readouterr()
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["goodput"]["ssjf"]["ratio_vs_baseline"] == pytest.approx(3.6 / 2.0)  # load 0.9 vs 0.5
    versus = bench["vs_baseline"]["ssjf"]
    assert versus["goodput"] == pytest.approx(1.8) and versus["mean_jct_s"]["0.9"] == pytest.approx(3.0 / 9.0)
    assert "1.800 x serve-default's" in out


def test_serve_default_warning_at_a_sped_up_time_scale():
    from cluster.bench import serve_default_warning

    queued_in_serve = {"llm_max_ongoing_requests": 1, "simulated_as": "fcfs, late-binding, no work stealing"}
    assert "50x" in serve_default_warning({"time_scale": 0.02, "serve_default": queued_in_serve})
    assert serve_default_warning({"time_scale": 1.0, "serve_default": queued_in_serve}) is None
    assert serve_default_warning({"time_scale": 0.02}) is None  # no serve-default in this bench


def test_srpt_runs_live_with_the_simulators_re_predictions_sent_and_simulated():
    """srpt on replay replicas: every request carries its EMULATED re-predictions, the very values the
    simulator uses for the same workload (same re-predictor, progress points and seed), and the
    simulated srpt run reports what preemption did."""
    from dataclasses import replace

    import numpy as np

    from cluster.bench import simulate_same, srpt_settings
    from deployments.config import AppConfig
    from loadgen.client import Endpoint, plan_requests
    from loadgen.cmd_run import RunSettings, replay_repredictions
    from loadgen.repredict_sim import remaining_predictions
    from loadgen.workload import WorkloadSpec, build_workload

    app = AppConfig.from_dict({"llm": {"engine": "replay", "num_replicas": 1, "batching": "none", "time_scale": 0.01},
                               "router": {"policy": "srpt", "repredict_every_tokens": 16, "seed": 3},
                               "proxy": {"predictor": "constant", "constant_tokens": 100}})
    table = build_workload(WorkloadSpec(dataset="arena", trace="poisson", rate=50.0, num_requests=40, seed=2))
    base = RunSettings(model="m", replay_lengths=True)
    settings = srpt_settings(base, app, "noisy:0.5")
    assert (settings.replay_repredictor, settings.repredict_every, settings.repredict_seed) == ("noisy:0.5", 16, 3)
    fcfs = replace(app, router=replace(app.router, policy="fcfs"))
    assert srpt_settings(base, fcfs, "noisy:0.5") is base  # other policies send nothing
    planned = plan_requests(table, model="m", replay_lengths=True, replay_remaining=replay_repredictions(table, settings))
    want = remaining_predictions(table.column("output_tokens").to_numpy(), 16, "noisy:0.5", 3)
    j = int(np.argmax(table.column("output_tokens").to_numpy()))  # the longest: several progress points
    assert planned[j].replay_remaining_predictions == tuple(want.of(j).tolist()) and len(want.of(j)) >= 2
    assert planned[j].body(Endpoint.CHAT, False)["replay_remaining_predictions"] == want.of(j).tolist()

    sim = simulate_same({"fcfs": fcfs, "srpt": app}, table, seed=2, repredictor="noisy:0.5")
    pre = sim["policies"]["srpt"]["preemption"]
    assert pre["repredictor"] == "noisy:0.5" and pre["num_preemptions"] >= 0 and "preemption" not in sim["policies"]["fcfs"]


def test_preemption_rows_put_live_counters_beside_the_simulation(tmp_path, capsys):
    from cluster.bench import _preemption_lines, preemption_rows

    summaries = {"fcfs": {"preemptions": 0}, "srpt": {"preemptions": 3, "preempted_tokens": 120}}
    sim = {"policies": {"fcfs": {}, "srpt": {"preemption": {"num_preemptions": 4, "resume_tokens": 150, "resume_s": 0.5,
                                                            "repredictor": "measured"}}}}
    rows = preemption_rows(summaries, sim)
    assert list(rows) == ["srpt"] and rows["srpt"]["live"] == {"num_preemptions": 3, "preempted_tokens": 120}
    line, = _preemption_lines(rows)
    assert line.startswith("srpt: 3 preemptions live (120 generated") and "simulated 4 (150 tokens, 0.50 s" in line


def test_goodput_by_attainment_is_the_largest_load_before_the_share_first_drops_below_the_goal():
    from cluster.bench import goodput_by_attainment

    points = [(0.9, {"slo_attainment": 0.85}), (0.5, {"slo_attainment": 0.99}), (0.7, {"slo_attainment": 0.9}),
              (1.0, {"slo_attainment": 0.95})]
    assert goodput_by_attainment(points, 0.9) == 0.7  # 1.0 meets the goal again, but 0.9 did not
    assert goodput_by_attainment(points, 0.995) is None
    assert goodput_by_attainment([(0.5, {"slo_attainment": 1.0}), (0.7, {})], 0.9) == 0.5  # unscored: stops


def test_slo_is_a_bench_policy_and_its_knobs_come_from_the_config():
    from deployments.config import AppConfig
    from router.policies import Policy, SLOInfeasible

    assert parse_bench_policies("fcfs,ssjf-aging,slo", None) == ["fcfs", "ssjf-aging", "slo"]
    cfg = config_for_policy({**REPLAY, "router": {"slo_infeasible": "shed", "slo_guard_s": 0.5}}, "slo")
    sched = AppConfig.from_dict(cfg).scheduler_config()
    assert (sched.policy, sched.slo_infeasible, sched.slo_guard_s) == (Policy.SLO, SLOInfeasible.SHED, 0.5)


def _slo_run_dir(tmp_path, name, outcomes, slo_jct_s):
    """A results directory whose requests carried ``slo_jct_s``: each outcome a JCT (ok) or "shed"."""
    from loadgen.client import PlannedRequest, RequestRecord
    from loadgen.results import records_table, summarize, write_results

    records = []
    for i, outcome in enumerate(outcomes):
        rec = RequestRecord.planned(PlannedRequest(f"r{i}", float(i), "m", expected_output_tokens=10,
                                                   slo_jct_s=slo_jct_s))
        rec.sent_at = float(i)
        if outcome == "shed":
            rec.status, rec.error, rec.http_status, rec.error_code = "error", "HTTP 503", 503, "slo_unattainable"
            rec.done_at = i + 0.01
        else:
            rec.status, rec.error = "ok", None
            rec.first_token_at, rec.last_token_at, rec.done_at = i + 0.1, i + outcome, i + outcome
            rec.num_output_tokens = 10
        rec.finish_metrics()
        records.append(rec)
    summary = summarize(records_table(records))
    write_results(tmp_path / name, records, {"label": name}, summary)
    return tmp_path / name, summary


def test_a_sweep_reports_attainment_and_goodput_by_attainment_beside_the_p90_goodput(tmp_path, capsys):
    import json

    from cluster.bench import report_bench
    from loadgen.workload import WorkloadSpec

    spec = WorkloadSpec(dataset="arena", trace="poisson", rate=2.0, num_requests=4)
    facts = {"engine": "replay", "time_scale": 1.0}
    # SLO 5 s. fcfs: all within at 0.5, 3 of 4 at 0.9. slo: all four at 0.5; at 0.9 it sheds one and the
    # rest make it (3 of 4). With a goal of 0.75 both hold at 0.9; the p90 goodput stops both at 0.5.
    sweep = {"fcfs": [(0.5, *_slo_run_dir(tmp_path, "f5", [1, 2, 3, 4], 5.0)),
                      (0.9, *_slo_run_dir(tmp_path, "f9", [2, 3, 4, 9], 5.0))],
             "slo": [(0.5, *_slo_run_dir(tmp_path, "s5", [1, 2, 3, 4], 5.0)),
                     (0.9, *_slo_run_dir(tmp_path, "s9", [1, 2, 3, "shed"], 5.0))]}
    assert sweep["slo"][1][2]["num_shed"] == 1 and sweep["slo"][1][2]["slo_attainment"] == 0.75
    report_bench(sweep, [0.5, 0.9], facts, [(0.5, spec, None), (0.9, spec, None)], tmp_path, None, False,
                 "p90_jct_s", 5.0, None, attainment_goal=0.75, slo_attached=True)
    out, _ = capsys.readouterr()
    bench = json.loads((tmp_path / "bench.json").read_text())
    good = bench["goodput"]
    assert good["fcfs"]["load"] == 0.5 and good["fcfs"]["by_attainment"]["load"] == 0.9
    assert good["slo"]["load"] == 0.5  # its shed request at 0.9 is a failure for the p90 goodput
    assert good["slo"]["by_attainment"]["load"] == 0.9
    assert good["slo"]["by_attainment"]["ratio_vs_baseline"] == pytest.approx(1.0)
    assert bench["vs_baseline"]["slo"]["goodput_by_attainment"] == pytest.approx(1.0)
    assert bench["slo"] == {"metric": "p90_jct_s", "max_s": 5.0, "attainment_goal": 0.75, "attached": True}
    assert "goodput by attainment (largest load where at least 75% of requests finished within 5 s" in out
    assert "  slo: 75.0% (3 of 4), 1 shed (503 slo_unattainable)" in out
    assert "sent with every request" in out


def test_the_simulation_of_the_same_workload_scores_and_sheds_with_the_attached_slo():
    from cluster.bench import simulate_same
    from deployments.config import AppConfig
    from loadgen.options import with_slo_columns
    from loadgen.workload import WorkloadSpec, build_workload

    base = {"llm": {"engine": "replay", "num_replicas": 1, "batching": "none", "time_scale": 0.01},
            "proxy": {"predictor": "heuristic"}}
    slo = AppConfig.from_dict({**base, "router": {"policy": "slo", "slo_infeasible": "shed"}})
    fcfs = AppConfig.from_dict({**base, "router": {"policy": "fcfs"}})
    table = build_workload(WorkloadSpec(dataset="arena", trace="poisson", rate=200.0, num_requests=60, seed=1))
    plain = simulate_same({"fcfs": fcfs, "slo": slo}, table, seed=1)
    assert "slo_attainment" not in plain["policies"]["fcfs"]  # no SLO asked: reported as before
    scored = simulate_same({"fcfs": fcfs, "slo": slo}, table, seed=1, slo_jct_s=0.5)
    assert scored["policies"]["fcfs"]["num_with_slo"] == 60 and scored["policies"]["slo"]["num_shed"] == 0
    attached = simulate_same({"fcfs": fcfs, "slo": slo}, with_slo_columns(table, None, 0.5), seed=1)
    fcfs_s, slo_s = attached["policies"]["fcfs"], attached["policies"]["slo"]
    assert fcfs_s["num_shed"] == 0 and slo_s["num_shed"] > 0  # only slo sheds, and only when it is told the SLO
    assert slo_s["slo_attainment"] is not None and fcfs_s["slo_attainment"] is not None
