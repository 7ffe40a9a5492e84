"""``ssjf-cluster bench`` end to end on the session's Ray: a small replay cluster per policy, the same
workload for each, the comparison and the plot. Each policy's app goes under its own route of the
running Serve and is removed afterwards (the session's Serve stays up)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from cluster.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def test_bench_runs_each_policy_on_the_same_workload(serve_url, replay_config, tmp_path):
    cfg = replay_config("lgbench", proxy={"predictor": "heuristic"},
                        llm={"num_replicas": 2, "batching": "none", "time_scale": 0.02})
    config_path = tmp_path / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "bench"
    result = CliRunner().invoke(main, [
        "bench", "--config", str(config_path), "--policies", "fcfs,ssjf", "--trace", "poisson", "--load", "0.8",
        "--num-requests", "12", "--seed", "4", "--warmup", "1", "--out", str(out), "--json", "--no-progress",
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert list(summary["policies"]) == ["fcfs", "ssjf"]
    for policy in ("fcfs", "ssjf"):
        s = summary["policies"][policy]
        assert s["num_requests"] == 12 and s["num_completed"] == 12, s
        records = pq.read_table(out / policy / "records.parquet")
        # The replay engine emits exactly the true length it was sent.
        assert records.column("num_output_tokens").to_pylist() == records.column("expected_output_tokens").to_pylist()
        config = json.loads((out / policy / "config.json").read_text())
        assert config["policy"] == policy and config["replay_lengths"] is True and config["model_from_dataset"] is True
    a = pq.read_table(out / "fcfs" / "records.parquet").sort_by("request_id")
    b = pq.read_table(out / "ssjf" / "records.parquet").sort_by("request_id")
    assert a.column("scheduled_at").equals(b.column("scheduled_at"))  # identical workload
    assert a.column("prompt_id").equals(b.column("prompt_id"))
    assert summary["cluster"]["engine"] == "replay" and summary["cluster"]["emulated"] is True
    assert summary["saturation_rps"] > 0 and summary["rate_rps"] == pytest.approx(0.8 * summary["saturation_rps"])
    assert "mean_jct_s_ratio" in summary["ratios_vs_fcfs"]["ssjf"]
    assert summary["simulated"]["predictor"] == "heuristic"
    assert set(summary["simulated"]["policies"]) == {"fcfs", "ssjf"}
    assert (out / "compare.png").is_file() and (out / "bench.json").is_file()
