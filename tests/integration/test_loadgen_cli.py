"""``loadgen run`` / ``report`` / ``compare`` end to end against the scripted fake server."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from loadgen.cli import main
from tests.integration.loadgen_fake_server import FakeOpenAIServer, Script

pytestmark = pytest.mark.timeout(60)

REPLAY_MODELS = [{"id": "replay-7b", "object": "model", "owned_by": "replay"}]


@pytest.fixture(scope="module")
def server():
    srv = FakeOpenAIServer(models=REPLAY_MODELS).start()
    yield srv
    srv.stop()


@pytest.fixture
def fake(server):
    server.reset()
    server.models = list(REPLAY_MODELS)
    server.default = Script(chunks=3, gaps_s=[0.01, 0.01])
    return server


@pytest.fixture
def workload_file(tmp_path):
    n = 6
    table = pa.table({
        "request_id": [f"r{i}" for i in range(n)],
        "arrival_s": [i * 0.02 for i in range(n)],
        "prompt_id": [f"p{i}" for i in range(n)],
        "prompt": [f"prompt {i}" for i in range(n)],
        "messages": [[{"role": "user", "content": f"prompt {i}"}] for i in range(n)],
        "model": ["gpt-4", "claude-v1"] * (n // 2),
        "num_prompt_tokens": [10] * n,
        "output_tokens": [5, 50, 500, 7, 70, 700],
        "max_tokens": [1024] * n,
    })
    path = tmp_path / "workload.parquet"
    pq.write_table(table, path)
    return str(path)


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def test_run_writes_records_config_and_json_summary(fake, workload_file, tmp_path):
    fake.scripts["prompt 1"] = Script(status=500)
    fake.scripts["prompt 4"] = Script(chunks=5, error_after=2)
    out = tmp_path / "run"
    result = run_cli("run", "--url", fake.url, "--workload", workload_file, "--out", out, "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["num_requests"] == 6 and summary["num_completed"] == 4
    assert summary["num_errors"] == 2 and summary["num_failed"] == 2
    for key in ("mean_jct_s", "p50_jct_s", "p90_jct_s", "p99_jct_s", "mean_ttft_s", "p99_ttft_s", "mean_tpot_s",
                "throughput_rps", "mean_jct_long_s"):
        assert summary[key] is not None, key
    assert summary["results_dir"] == str(out)

    records = pq.read_table(out / "records.parquet").to_pylist()
    assert sorted(r["request_id"] for r in records) == [f"r{i}" for i in range(6)]
    by_id = {r["request_id"]: r for r in records}
    assert by_id["r1"]["status"] == "error" and by_id["r1"]["http_status"] == 500
    assert by_id["r4"]["status"] == "error" and "scripted stream error" in by_id["r4"]["error"]
    assert by_id["r0"]["status"] == "ok" and by_id["r0"]["num_output_tokens"] == 3
    assert by_id["r2"]["expected_output_tokens"] == 500

    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "replay-7b" and config["replay_lengths"] is True
    assert config["workload"]["path"] == workload_file
    # /v1/models marks a replay engine: the true lengths travel in the benchmark-only field.
    sent = {b["messages"][-1]["content"]: b for b in fake.bodies}
    assert sent["prompt 2"]["replay_output_tokens"] == 500 and sent["prompt 2"]["model"] == "replay-7b"
    assert sent["prompt 2"]["max_tokens"] == 1024


def test_run_without_replay_engine_sends_no_truth_and_can_use_dataset_models(fake, workload_file, tmp_path):
    fake.models = [{"id": "smollm2", "object": "model", "owned_by": "hf"}]
    result = run_cli("run", "--url", fake.url, "--workload", workload_file, "--out", tmp_path / "a", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "mean JCT (s)" in result.stdout and "results:" in result.stdout
    assert all("replay_output_tokens" not in b and b["model"] == "smollm2" for b in fake.bodies)

    fake.bodies.clear()
    result = run_cli("run", "--url", fake.url, "--workload", workload_file, "--out", tmp_path / "b", "--no-progress",
                     "--model-from-dataset", "--replay-lengths", "--no-stream", "--endpoint", "completions")
    assert result.exit_code == 0, result.output
    sent = {b["prompt"]: b for b in fake.bodies}
    assert sent["prompt 0"]["model"] == "gpt-4" and sent["prompt 1"]["model"] == "claude-v1"
    assert sent["prompt 5"]["replay_output_tokens"] == 700 and sent["prompt 5"]["stream"] is False


def test_run_sends_temperature_only_when_given(fake, workload_file, tmp_path):
    result = run_cli("run", "--url", fake.url, "--workload", workload_file, "--out", tmp_path / "t0", "--no-progress",
                     "--temperature", "0")
    assert result.exit_code == 0, result.output
    assert len(fake.bodies) == 6 and all(b["temperature"] == 0 for b in fake.bodies)
    assert json.loads((tmp_path / "t0" / "config.json").read_text())["temperature"] == 0

    fake.bodies.clear()
    result = run_cli("run", "--url", fake.url, "--workload", workload_file, "--out", tmp_path / "t1", "--no-progress",
                     "--temperature", "0.7", "--no-stream")
    assert result.exit_code == 0, result.output
    assert len(fake.bodies) == 6 and all(b["temperature"] == 0.7 for b in fake.bodies)

    fake.bodies.clear()  # not given: not sent, so the server's default applies
    result = run_cli("run", "--url", fake.url, "--workload", workload_file, "--out", tmp_path / "t2", "--no-progress")
    assert result.exit_code == 0, result.output
    assert len(fake.bodies) == 6 and all("temperature" not in b for b in fake.bodies)


def test_run_builds_the_workload_from_options(fake, tmp_path):
    out = tmp_path / "built"
    result = run_cli("run", "--url", fake.url, "--dataset", "arena", "--trace", "poisson", "--rate", "100",
                     "--num-requests", "8", "--seed", "3", "--out", out, "--json", "--no-progress", "--label", "mine")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["num_requests"] == 8 and summary["num_completed"] == 8 and summary["label"] == "mine"
    config = json.loads((out / "config.json").read_text())
    assert config["workload"]["spec"]["seed"] == 3 and config["workload"]["spec"]["trace"] == "poisson"
    assert all(isinstance(b["replay_output_tokens"], int) for b in fake.bodies)


def test_run_unreachable_server_is_a_clear_error(tmp_path, workload_file):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = CliRunner().invoke(main, ["run", "--url", f"http://127.0.0.1:{port}", "--workload", workload_file,
                                       "--out", str(tmp_path / "x"), "--no-progress"])
    assert result.exit_code == 1 and "cannot reach" in result.output


def test_report_and_compare(fake, workload_file, tmp_path):
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    assert run_cli("run", "--url", fake.url, "--workload", workload_file, "--out", fast, "--no-progress",
                   "--label", "fcfs").exit_code == 0
    fake.default = Script(chunks=3, first_delay_s=0.2, gaps_s=[0.01, 0.01])
    assert run_cli("run", "--url", fake.url, "--workload", workload_file, "--out", slow, "--no-progress",
                   "--label", "ssjf").exit_code == 0

    result = run_cli("report", fast, "--json")
    report = json.loads(result.stdout)
    assert report["label"] == "fcfs" and report["num_completed"] == 6
    assert sum(b["count"] for b in report["jct_by_bucket"]) == 6

    png = tmp_path / "plots" / "cmp.png"
    result = run_cli("compare", fast, slow, "--json", "--plot", png)
    assert result.exit_code == 0, result.output
    cmp = json.loads(result.stdout)
    assert cmp["baseline"] == "fcfs" and set(cmp["runs"]) == {"fcfs", "ssjf"}
    ratio = cmp["ratios"]["ssjf"]["mean_ttft_s"]
    assert ratio == pytest.approx(cmp["runs"]["ssjf"]["mean_ttft_s"] / cmp["runs"]["fcfs"]["mean_ttft_s"])
    assert ratio > 1  # every answer of the second run waited 0.2 s more for its first token
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    result = run_cli("report", slow, "--plot")
    assert result.exit_code == 0 and (slow / "report.png").is_file()
    assert "p99 JCT (s)" in result.stdout and "JCT by output length" in result.stdout
