"""`loadgen simulate` end to end on the bundled workload (small), and its usage errors."""

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import click
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from loadgen.cli import main
from loadgen.cmd_simulate import SCHEDULER_FLAGS, simulate
from router.config import SchedulerConfig

ROOT = Path(__file__).resolve().parents[3]


def run(*args):
    return CliRunner().invoke(main, ["simulate", *args], catch_exceptions=False)


def test_json_summary_has_every_policy_on_the_identical_workload_and_the_applied_load(tmp_path):
    result = run("--dataset", "arena", "--trace", "poisson", "--seed", "0", "--batching", "continuous",
                 "--max-batch", "4", "--replicas", "2", "--load", "0.8", "--num-requests", "400",
                 "--policies", "fcfs,ssjf,ssjf-aging,oracle", "--predictor", "noisy:0.8", "--json",
                 "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    s = json.loads(result.output)
    assert set(s["policies"]) == {"fcfs", "ssjf", "ssjf-aging", "oracle"}
    for summary in s["policies"].values():
        for key in ("mean_jct_s", "p50_jct_s", "p90_jct_s", "p99_jct_s", "mean_queue_delay_s", "throughput_rps"):
            assert summary[key] > 0
        assert summary["num_completed"] == 400
    assert s["saturation_rps"] > 0 and s["target_load"] == 0.8
    assert s["rate_rps"] == pytest.approx(0.8 * s["saturation_rps"])
    assert 0.5 < s["applied_load"] < 1.2  # realised over 400 Poisson gaps
    assert s["predictor"] == "noisy:0.8" and 0.6 < s["predictor_kendall_tau"] < 1.0
    rows = pq.read_table(tmp_path / "out" / "requests.parquet")
    assert rows.num_rows == 4 * 400
    by_policy = {}
    for rec in rows.select(["policy", "request_id", "arrival_at", "output_tokens"]).to_pylist():
        by_policy.setdefault(rec["policy"], []).append((rec["request_id"], rec["arrival_at"], rec["output_tokens"]))
    assert by_policy["fcfs"] == by_policy["ssjf"] == by_policy["oracle"]  # identical workload
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["scheduler"]["batching"] == "continuous" and config["engine"]["name"]


def test_text_output_names_the_oracle_as_a_bound_and_a_fixed_rate_works():
    result = run("--trace", "poisson", "--rate", "0.5", "--num-requests", "60", "--policies", "fcfs,ssjf")
    assert result.exit_code == 0, result.output
    assert "fcfs" in result.output and "ssjf" in result.output and "rate 0.5000" in result.output


@pytest.mark.parametrize("args,message", [
    (["--policies", "fcfs,sjf"], "unknown policy 'sjf'"),
    (["--policies", "fcfs,fcfs"], "listed twice"),
    (["--predictor", "psychic"], "unknown predictor"),
    (["--batching", "dynamic"], "dynamic"),
    (["--rate", "1", "--load", "0.5"], "not both"),
    (["--replicas", "0"], "0"),
    (["--engine-profile", "missing.json"], "not found"),
    (["--aging-rule", "response-ratio", "--aging-rate", "0", "--policies", "ssjf-aging", "--rate", "1"],
     "aging_rate > 0"),
    (["--aging-rate", "-1", "--rate", "1"], "aging_rate must be >= 0"),
    (["--max-batch", "0", "--rate", "1"], "max_batch must be >= 1"),
    (["--balancer", "random"], "least-work"),
])
def test_bad_arguments_are_usage_errors_with_exit_code_2(args, message):
    result = CliRunner().invoke(main, ["simulate", "--trace", "poisson", "--num-requests", "10", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_scheduler_options_are_the_scheduler_configs_fields():
    core = {f.name: f for f in fields(SchedulerConfig)}
    options = {p.name: p for p in simulate.params}
    for name in (*SCHEDULER_FLAGS, "aging_threshold_s"):
        assert core[name].metadata["help"] in options[name].help
    assert list(options["batching"].type.choices) == ["none", "static", "continuous"]
    assert options["balancer"].default == core["balancer"].default.value
    assert options["aging_rate"].default == core["aging_rate"].default
    assert options["work_stealing"].opts == ["--work-stealing"] and options["work_stealing"].secondary_opts == ["--no-work-stealing"]
    # the simulator's own defaults, kept: 8 slots when batching, the threshold from FCFS's tail
    assert options["max_batch"].default == 8 and options["aging_threshold_s"].default == "auto"


def test_simulate_runs_without_ray():
    # The simulator is the router core on simulated engines: a tiny run must not import Ray (nor the
    # serving stack), so it starts fast and runs where Ray is absent.
    script = (
        "import json, sys\n"
        "from loadgen.cli import main\n"
        "try:\n"
        "    main(['simulate', '--trace', 'poisson', '--rate', '1', '--num-requests', '20', '--policies', 'fcfs,ssjf',"
        " '--batching', 'continuous', '--max-batch', '2', '--replicas', '2', '--json'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'deployments', 'cluster'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary_end = proc.stdout.rindex("}")
    assert json.loads(proc.stdout[:summary_end + 1])["policies"]["ssjf"]["num_completed"] == 20
    assert json.loads(proc.stdout[summary_end + 1:]) == []


def test_srpt_reports_its_preemptions_resume_cost_and_re_predictor():
    result = run("--trace", "poisson", "--seed", "1", "--batching", "continuous", "--max-batch", "2",
                 "--replicas", "2", "--load", "0.95", "--num-requests", "300", "--policies", "ssjf,srpt",
                 "--repredictor", "noisy:0.7", "--repredict-every-tokens", "16", "--preempt-margin", "1.5",
                 "--max-preemptions", "3", "--srpt-aging-threshold-s", "1000", "--json")
    assert result.exit_code == 0, result.output
    s = json.loads(result.output)
    srpt = s["policies"]["srpt"]
    assert srpt["num_completed"] == 300 and srpt["num_preemptions"] > 0
    assert 0 < srpt["num_preempted_requests"] <= srpt["num_preemptions"] and srpt["max_preemptions_of_a_request"] <= 3
    assert srpt["resume_tokens"] > 0 and srpt["resume_s"] > 0 and srpt["repredictor"] == "noisy:0.7"
    assert 0.5 < srpt["repredictor_tau_by_k"]["64"] < 0.9
    assert s["scheduler"]["repredict_every_tokens"] == 16 and s["aging"]["srpt_threshold_s"] == 1000
    assert "num_preemptions" not in s["policies"]["ssjf"]


@pytest.mark.parametrize("args,message", [
    (["--policies", "srpt", "--batching", "static"], "static batch frees no slot"),
    (["--policies", "srpt", "--preempt-margin", "0.5"], "preempt_margin must be >= 1"),
    (["--policies", "srpt", "--repredictor", "psychic"], "unknown re-predictor"),
    (["--policies", "srpt", "--srpt-aging-threshold-s", "soon"], "expected seconds >= 0 or 'auto'"),
])
def test_bad_srpt_arguments_are_usage_errors(args, message):
    result = CliRunner().invoke(main, ["simulate", "--trace", "poisson", "--rate", "1", "--num-requests", "10", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_a_live_cluster_runs_srpt_and_refuses_the_oracle():
    from loadgen.options import parse_policies

    assert [p.value for p in parse_policies("fcfs,srpt", live=True)] == ["fcfs", "srpt"]
    with pytest.raises(click.BadParameter, match="true lengths"):
        parse_policies("fcfs,oracle", live=True)
