"""The load generator's SLOs: a workload's ``slo_ttft_s`` / ``slo_jct_s`` columns (or a default) become
the ``x-slo-ttft-ms`` / ``x-slo-jct-ms`` headers of each request; a 503 ``slo_unattainable`` answer is
recorded with its status and code (shed); the summary scores attainment from the records, and
``loadgen run --slo-jct-s`` sends the objective."""

from __future__ import annotations

import asyncio
import json

import httpx
import pyarrow as pa
import pytest
from click.testing import CliRunner

from loadgen.client import ClientConfig, LoadClient, PlannedRequest, RequestRecord, plan_requests
from loadgen.options import with_slo_columns
from loadgen.results import records_table, score_slo, summarize

SHED_BODY = {"error": {"message": "cannot meet its SLO", "type": "slo_unattainable", "param": None,
                       "code": "slo_unattainable"}}


def workload(n: int = 3) -> pa.Table:
    return pa.table({"request_id": [f"r{i}" for i in range(n)], "arrival_s": [float(i) for i in range(n)],
                     "prompt": ["hi"] * n})


def test_plan_takes_slo_columns_else_the_default_and_sends_them_as_headers():
    table = workload().append_column("slo_jct_s", pa.array([2.5, None, 0.0125], pa.float64()))
    planned = plan_requests(table, model="m", slo_ttft_s=0.2, slo_jct_s=9.0)
    assert [(p.slo_ttft_s, p.slo_jct_s) for p in planned] == [(0.2, 2.5), (0.2, 9.0), (0.2, 0.0125)]
    assert planned[0].headers() == {"x-slo-ttft-ms": "200", "x-slo-jct-ms": "2500"}
    assert planned[2].headers()["x-slo-jct-ms"] == "12.5"  # a plain decimal, as the ingress takes it
    none = plan_requests(workload(1), model="m")[0]
    assert none.headers() is None and none.slo_jct_s is None
    # The options' columns (loadgen run --slo-jct-s; bench --slo-attach) reach the headers the same way.
    both = plan_requests(with_slo_columns(workload(1), None, 4.0), model="m")[0]
    assert both.headers() == {"x-slo-jct-ms": "4000"}
    with pytest.raises(ValueError, match="slo_jct_s"):
        PlannedRequest("r", 0.0, "m", slo_jct_s=0.0)


def _client(handler, stream: bool) -> LoadClient:
    return LoadClient(ClientConfig(url="http://test", stream=stream), transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("stream", [True, False])
def test_a_shed_request_is_recorded_with_its_503_and_code(stream):
    seen = []

    def handler(request: httpx.Request):
        seen.append(dict(request.headers))
        return httpx.Response(503, content=json.dumps(SHED_BODY).encode(), headers={"content-type": "application/json"})

    async def go():
        async with _client(handler, stream) as client:
            return await client.send(PlannedRequest("r1", 0.0, "m", prompt="x", slo_jct_s=1.5), 0.0)

    rec = asyncio.run(go())
    assert seen[0]["x-slo-jct-ms"] == "1500" and "x-slo-ttft-ms" not in seen[0]
    assert (rec.status, rec.http_status, rec.error_code) == ("error", 503, "slo_unattainable")
    assert rec.slo_jct_s == 1.5 and "cannot meet its SLO" in rec.error


def _record(i: int, jct: float | None, slo_jct: float | None, status: str = "ok", code: str | None = None):
    rec = RequestRecord.planned(PlannedRequest(f"r{i}", float(i), "m", slo_jct_s=slo_jct))
    rec.sent_at = float(i)
    if status == "ok":
        rec.status, rec.error = "ok", None
        rec.first_token_at, rec.done_at = i + 0.1, i + jct
    else:
        rec.status, rec.error, rec.http_status, rec.error_code = "error", "HTTP 503", 503, code
        rec.done_at = i + 0.01
    rec.finish_metrics()
    return rec


def test_the_summary_scores_attainment_from_the_records_and_counts_sheds():
    records = [_record(0, 1.0, 2.0), _record(1, 3.0, 2.0), _record(2, None, 2.0, "error", "slo_unattainable"),
               _record(3, 5.0, None)]  # the last carried no objective: not scored
    summary = summarize(records_table(records))
    assert summary["num_shed"] == 1 and summary["num_with_slo"] == 3 and summary["num_slo_met"] == 1
    assert summary["slo_attainment"] == pytest.approx(1 / 3)
    # Scored against an SLO the run never sent (bench --goodput-attainment without --slo-attach).
    assert score_slo(records_table(records), slo_jct_s=4.0)["slo_attainment"] == pytest.approx(2 / 4)
    # A run without objectives has no attainment keys, and a 503 of another kind is no shed.
    plain = summarize(records_table([_record(0, 1.0, None), _record(1, None, None, "error", "no_replica")]))
    assert "slo_attainment" not in plain and plain["num_shed"] == 0


def test_loadgen_run_sends_the_slo_options_as_headers(tmp_path, monkeypatch):
    from loadgen.cli import main

    seen = []

    def handler(request: httpx.Request):
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        seen.append(dict(request.headers))
        body = {"choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
        return httpx.Response(200, json=body)

    path = tmp_path / "w.parquet"
    import pyarrow.parquet as pq

    pq.write_table(workload(2), path)
    original = LoadClient.__init__

    def with_mock(self, config, **kw):  # the command's clients talk to the handler instead of a network
        original(self, config, transport=httpx.MockTransport(handler))

    monkeypatch.setattr(LoadClient, "__init__", with_mock)
    result = CliRunner().invoke(main, ["run", "--url", "http://test", "--workload", str(path), "--no-stream",
                                       "--endpoint", "completions", "--slo-jct-s", "30", "--out",
                                       str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert [h.get("x-slo-jct-ms") for h in seen] == ["30000", "30000"]
    assert "SLO attainment 100.0%: 2 of 2" in result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["slo_attainment"] == 1.0 and summary["num_shed"] == 0
