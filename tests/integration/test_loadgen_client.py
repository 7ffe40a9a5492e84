"""The load generator's HTTP client against a scripted fake OpenAI server over real loopback HTTP.

Delays are scripted, so the measured TTFT and JCT must be at least what the server waited. A gap
between two chunks can shrink when the earlier chunk arrives late, so gap bounds leave 0.1 s of
slack: they still tell the scripted 0.3 s pause from the 0.05 s ones. Lower bounds only: no
assertion depends on how fast this machine is.
"""

from __future__ import annotations

import socket

import pytest

from loadgen.client import ClientConfig, LoadClient, PlannedRequest, run_open_loop
from tests.integration.loadgen_fake_server import FakeOpenAIServer, Script

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server():
    srv = FakeOpenAIServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def fake(server):
    server.reset()
    return server


def req(key: str, at: float = 0.0, **kw) -> PlannedRequest:
    return PlannedRequest(request_id=key, scheduled_at=at, model="fake-model",
                          messages=({"role": "user", "content": key},), prompt=key, **kw)


async def run(fake, planned, **cfg):
    async with LoadClient(ClientConfig(url=fake.url, **cfg)) as client:
        return await run_open_loop(client, planned)


async def test_streaming_metrics_cover_the_scripted_delays(fake):
    fake.scripts["a"] = Script(chunks=4, first_delay_s=0.2, gaps_s=[0.05, 0.3, 0.05])
    (rec,) = await run(fake, [req("a")])
    assert rec.status == "ok" and rec.error is None and rec.http_status == 200
    assert rec.num_output_tokens == 4 and rec.num_chunks == 4
    assert rec.finish_reason == "stop"
    assert rec.ttft_s >= 0.2
    assert rec.max_gap_s >= 0.2
    assert rec.tpot_s >= 0.3 / 3
    assert rec.jct_s >= 0.6
    assert rec.ttft_s < rec.jct_s and rec.max_gap_s < rec.jct_s
    assert rec.first_token_at < rec.last_token_at <= rec.done_at


async def test_usage_count_wins_over_chunk_count(fake):
    # A server may pack several tokens into one chunk: usage says how many tokens there were.
    fake.scripts["packed"] = Script(chunks=3, gaps_s=[0.1, 0.1], usage_tokens=9)
    (rec,) = await run(fake, [req("packed")])
    assert rec.status == "ok"
    assert rec.num_chunks == 3 and rec.num_output_tokens == 9
    assert rec.tpot_s >= 0.1 / 8


async def test_completions_endpoint_streams_text(fake):
    fake.scripts["p"] = Script(chunks=5)
    (rec,) = await run(fake, [req("p")], endpoint="completions")
    assert rec.status == "ok" and rec.num_output_tokens == 5
    assert "prompt" in fake.bodies[0] and "messages" not in fake.bodies[0]


async def test_non_streaming_counts_tokens_from_usage_and_has_no_ttft(fake):
    fake.scripts["n"] = Script(chunks=6, first_delay_s=0.1)
    (rec,) = await run(fake, [req("n")], stream=False)
    assert rec.status == "ok" and rec.num_output_tokens == 6
    assert rec.ttft_s is None and rec.tpot_s is None
    assert rec.jct_s >= 0.1
    assert fake.bodies[0]["stream"] is False and "stream_options" not in fake.bodies[0]


async def test_every_failure_ends_as_a_counted_record(fake):
    fake.scripts["http500"] = Script(status=500)
    fake.scripts["http429"] = Script(status=429)
    fake.scripts["midstream"] = Script(chunks=5, error_after=2)
    fake.scripts["dropped"] = Script(chunks=5, drop_after=3)
    fake.scripts["slow"] = Script(chunks=2, first_delay_s=5.0)
    fake.scripts["fine"] = Script(chunks=2)
    keys = ["http500", "http429", "midstream", "dropped", "slow", "fine"]
    recs = {r.request_id: r for r in await run(fake, [req(k) for k in keys], timeout_s=0.5)}
    assert set(recs) == set(keys)
    assert recs["http500"].status == "error" and recs["http500"].http_status == 500
    assert "scripted failure 500" in recs["http500"].error
    assert recs["http429"].status == "error" and recs["http429"].http_status == 429
    assert recs["midstream"].status == "error" and "scripted stream error" in recs["midstream"].error
    assert recs["midstream"].num_chunks == 2  # tokens before the error are still counted
    assert recs["dropped"].status == "error" and "before [DONE]" in recs["dropped"].error
    assert recs["slow"].status == "timeout" and recs["slow"].jct_s >= 0.5
    assert recs["fine"].status == "ok"


async def test_unreachable_server_gives_error_records_not_exceptions():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with LoadClient(ClientConfig(url=f"http://127.0.0.1:{port}")) as client:
        recs = await run_open_loop(client, [req("a"), req("b", at=0.01)])
    assert [r.status for r in recs] == ["error", "error"]
    assert all("ConnectError" in r.error for r in recs)


async def test_open_loop_does_not_wait_for_earlier_answers(fake):
    fake.scripts["long"] = Script(chunks=2, first_delay_s=1.0)
    fake.scripts["short"] = Script(chunks=1)
    recs = {r.request_id: r for r in await run(fake, [req("long", at=0.0), req("short", at=0.1)])}
    assert recs["short"].sent_at < recs["long"].done_at
    assert recs["short"].done_at < recs["long"].done_at


async def test_concurrency_cap_holds_later_requests_in_the_client(fake):
    fake.scripts["first"] = Script(chunks=1, first_delay_s=0.3)
    fake.scripts["second"] = Script(chunks=1)
    recs = {r.request_id: r for r in await run(fake, [req("first"), req("second", at=0.01)], max_concurrency=1)}
    assert recs["second"].sent_at >= recs["first"].done_at
    assert recs["second"].send_lag_s >= 0.2  # the wait shows as send lag, not as server latency


async def test_replay_field_and_max_tokens_are_sent(fake):
    await run(fake, [req("r", replay_output_tokens=17, max_tokens=64)])
    body = fake.bodies[0]
    assert body["replay_output_tokens"] == 17 and body["max_tokens"] == 64 and "temperature" not in body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_temperature_is_sent_when_set(fake):
    await run(fake, [req("t", temperature=0.0)])
    assert fake.bodies[0]["temperature"] == 0.0


async def test_many_concurrent_streams_all_recorded(fake):
    fake.default = Script(chunks=3, gaps_s=[0.01, 0.01])
    planned = [req(f"q{i}", at=i * 0.002) for i in range(150)]
    recs = await run(fake, planned)
    assert len(recs) == 150 and all(r.status == "ok" and r.num_output_tokens == 3 for r in recs)
