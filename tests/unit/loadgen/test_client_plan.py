"""Planning requests from a workload table, server detection, config validation, summaries."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from loadgen.client import (
    ClientConfig,
    Endpoint,
    PlannedRequest,
    RequestRecord,
    default_model,
    is_replay_server,
    plan_requests,
)
from loadgen.cmd_report import jct_by_bucket
from loadgen.results import records_table, summarize


def workload(**extra) -> pa.Table:
    cols = {
        "request_id": ["b", "a"],
        "arrival_s": [0.5, 0.0],
        "prompt_id": ["p2", "p1"],
        "prompt": ["second?", "first?"],
        "messages": [[{"role": "user", "content": "second?"}],
                     [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first?"}]],
        "model": ["gpt-4", "vicuna-13b"],
        "num_prompt_tokens": [3, 5],
        "output_tokens": [40, 7],
    }
    cols.update(extra)
    return pa.table(cols)


def test_plan_keeps_rows_and_sends_only_what_is_asked():
    reqs = plan_requests(workload(), model="served")
    assert [r.request_id for r in reqs] == ["b", "a"]
    b = reqs[0]
    assert b.model == "served" and b.scheduled_at == 0.5 and b.prompt_id == "p2"
    assert b.replay_output_tokens is None  # the truth is not sent unless asked
    assert b.expected_output_tokens == 40  # but it is kept for the report
    body = reqs[1].body(Endpoint.CHAT, stream=True)
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    assert "replay_output_tokens" not in body and "max_tokens" not in body


def test_plan_replay_lengths_and_dataset_models():
    reqs = plan_requests(workload(max_tokens=[64, 64]), model=None, model_from_dataset=True, replay_lengths=True)
    assert [(r.model, r.replay_output_tokens, r.max_tokens) for r in reqs] == [("gpt-4", 40, 64), ("vicuna-13b", 7, 64)]
    body = reqs[0].body(Endpoint.COMPLETIONS, stream=False)
    assert body == {"model": "gpt-4", "stream": False, "prompt": "second?", "max_tokens": 64, "replay_output_tokens": 40}


def test_plan_max_tokens_option_overrides_the_row():
    reqs = plan_requests(workload(max_tokens=[64, 64]), model="m", max_tokens=16)
    assert {r.max_tokens for r in reqs} == {16}


def test_plan_prompt_from_messages_when_no_prompt_column():
    table = workload().drop_columns(["prompt"])
    assert plan_requests(table, model="m")[1].prompt == "first?"


@pytest.mark.parametrize("kwargs,missing", [
    ({"replay_lengths": True}, "output_tokens"),
    ({"model_from_dataset": True}, "model"),
])
def test_plan_names_missing_columns(kwargs, missing):
    table = workload().drop_columns([missing])
    with pytest.raises(ValueError, match=missing):
        plan_requests(table, model="m" if "model_from_dataset" not in kwargs else None, **kwargs)


def test_plan_needs_a_model():
    with pytest.raises(ValueError, match="no model"):
        plan_requests(workload(), model=None)


def test_replay_server_detection_and_default_model():
    assert is_replay_server([{"id": "x", "owned_by": "ssjf-replay"}])
    assert is_replay_server([{"id": "x", "engine": "replay"}])
    assert not is_replay_server([{"id": "x", "owned_by": "hf", "engine": "hf"}])
    assert default_model([{"id": "*"}, {"id": "smollm2"}]) == "smollm2"
    assert default_model([{"id": "*"}]) is None


@pytest.mark.parametrize("kwargs,match", [
    ({"url": "localhost:8000"}, "http://"),
    ({"url": "http://x", "timeout_s": 0}, "timeout_s"),
    ({"url": "http://x", "max_concurrency": 0}, "max_concurrency"),
    ({"url": "http://x", "endpoint": "embeddings"}, "chat, completions"),
])
def test_client_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClientConfig(**kwargs)


def test_client_config_accepts_a_v1_url():
    assert ClientConfig(url="http://h:8000/v1/").url == "http://h:8000"


def rec(rid, status, sent, done, first=None, tokens=None, truth=None, tpot=None, gap=None):
    r = RequestRecord.planned(PlannedRequest(rid, scheduled_at=sent, model="m", expected_output_tokens=truth))
    r.status, r.error = status, None if status == "ok" else "boom"
    r.sent_at, r.done_at, r.first_token_at = sent, done, first
    r.num_output_tokens, r.tpot_s, r.max_gap_s = tokens, tpot, gap
    r.finish_metrics()
    return r


def test_summary_counts_failures_and_takes_latencies_of_ok_requests_only():
    records = [
        rec("a", "ok", 0.0, 1.0, first=0.2, tokens=10, truth=10, tpot=0.05, gap=0.1),
        rec("b", "ok", 1.0, 4.0, first=1.5, tokens=100, truth=100, tpot=0.02, gap=0.3),
        rec("c", "error", 2.0, 2.1, truth=50),
        rec("d", "timeout", 3.0, 13.0, truth=60),
    ]
    s = summarize(records_table(records))
    assert (s["num_requests"], s["num_completed"], s["num_failed"]) == (4, 2, 2)
    assert (s["num_errors"], s["num_timeouts"]) == (1, 1)
    assert s["mean_jct_s"] == pytest.approx(2.0)  # (1 + 3) / 2: the failed ones are not zeros
    assert s["mean_ttft_s"] == pytest.approx(0.35)
    assert s["mean_tpot_s"] == pytest.approx(0.035)
    assert s["max_max_gap_s"] == pytest.approx(0.3)
    assert s["num_output_tokens"] == 110
    assert s["duration_s"] == pytest.approx(4.0) and s["throughput_rps"] == pytest.approx(0.5)


def test_summary_of_no_completed_request_has_no_latencies():
    s = summarize(records_table([rec("a", "error", 0.0, 0.1)]))
    assert s["num_completed"] == 0 and s["mean_jct_s"] is None and s["p99_ttft_s"] is None


def test_records_never_sent_still_count():
    never = RequestRecord.planned(PlannedRequest("z", scheduled_at=5.0, model="m"))
    s = summarize(records_table([rec("a", "ok", 0.0, 1.0), never]))
    assert s["num_requests"] == 2 and s["num_failed"] == 1 and never.error == "not sent"


def test_jct_by_bucket_uses_true_lengths():
    records = [rec("a", "ok", 0, 1.0, tokens=999, truth=10), rec("b", "ok", 0, 3.0, tokens=1, truth=20),
               rec("c", "ok", 0, 8.0, truth=300), rec("d", "error", 0, 0.1, truth=300)]
    rows = jct_by_bucket(records_table(records))
    assert rows == [{"bucket": "0-32", "count": 2, "mean_jct_s": 2.0, "p99_jct_s": pytest.approx(2.98)},
                    {"bucket": "257-512", "count": 1, "mean_jct_s": 8.0, "p99_jct_s": 8.0}]
    assert not any(math.isnan(r["mean_jct_s"]) for r in rows)
