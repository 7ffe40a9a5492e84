"""Nothing hung, nothing lost, on a live cluster (replay engine with its fault drills,
``llm.replay_faults``): a stream that stops mid-way, a request that never gets a first token and an
engine that fails mid-stream each end with an OpenAI error (a 504/500, or in a started stream an
error event then ``[DONE]``) within their deadlines; the router is left with nothing queued,
running or waiting, and the next request succeeds. And a replica whose engine hangs stops
heartbeating, is dropped by the router and replaced by Serve."""

import json
import re
import time

import httpx
import pytest

from tests.integration.conftest import make_replay_config

pytestmark = pytest.mark.integration

TOKEN_TIMEOUT_S = 1.0
FIRST_TOKEN_TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def app(deploy_module):
    return deploy_module(make_replay_config(
        "deadlines",
        llm={"num_replicas": 2, "max_batch": 2, "time_scale": 0.1, "heartbeat_s": 0.5, "replay_faults": True},
        ingress={"num_cpus": 0, "token_timeout_s": TOKEN_TIMEOUT_S, "first_token_timeout_s": FIRST_TOKEN_TIMEOUT_S,
                 "max_retries": 1, "metrics_push_s": 0.2}))


@pytest.fixture(scope="module")
def http(app):
    with httpx.Client(base_url=app.url, timeout=60) as client:
        yield client


def body(prompt: str, tokens: int = 12, stream: bool = False) -> dict:
    return {"model": "m", "prompt": prompt, "max_tokens": tokens, "replay_output_tokens": tokens, "stream": stream}


def stream(http: httpx.Client, prompt: str, tokens: int = 12) -> dict:
    """Read an SSE stream to its end: its text, the error event if any, whether [DONE] came last."""
    text, error, events = "", None, []
    with http.stream("POST", "/v1/completions", json=body(prompt, tokens, stream=True)) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            events.append(data)
            if data == "[DONE]":
                continue
            event = json.loads(data)
            if "error" in event:
                error = event["error"]
            elif event["choices"]:
                text += event["choices"][0]["text"]
    return {"text": text, "error": error, "done_last": events[-1:] == ["[DONE]"], "replica": r.headers["x-replica-id"]}


def settled(app, wait) -> dict:
    """The router once every request is accounted for: nothing queued, running or waiting."""
    return wait(lambda: (s := app.snapshot()) and s["num_queued"] == 0 and s["num_running"] == 0
                and s["num_waiters"] == 0 and len(s["replicas"]) == 2 and s,
                timeout=20, what="the router to settle (0 queued, 0 running, 0 waiters, 2 replicas)")


def next_request_succeeds(http):
    r = http.post("/v1/completions", json=body("after the fault", 5))
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 5


def counter(http, status: str) -> float:
    text = http.get("/metrics").text
    m = re.search(rf'^ssjf_requests_total{{endpoint="completions",status="{status}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_a_stream_that_stops_mid_way_ends_with_a_timeout_event_then_done(app, http, wait):
    t0 = time.monotonic()
    got = stream(http, "hung after three [[replay:stall:3]]")
    elapsed = time.monotonic() - t0
    assert len(got["text"].split()) == 3  # what came before the stall reached the client
    assert got["error"]["code"] == "token_timeout" and got["error"]["type"] == "timeout_error", got
    assert got["done_last"]
    assert elapsed < TOKEN_TIMEOUT_S + 10, elapsed  # bounded by the deadline, not by the client's patience
    settled(app, wait)
    next_request_succeeds(http)


def test_a_non_streaming_request_that_stops_is_a_504(app, http, wait):
    r = http.post("/v1/completions", json=body("hung [[replay:stall:2]]"))
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "token_timeout"
    settled(app, wait)
    wait(lambda: counter(http, "504") >= 1, timeout=10, what="the 504 in ssjf_requests_total")
    next_request_succeeds(http)


def test_no_first_token_anywhere_is_retried_then_a_504(app, http, wait):
    before = app.snapshot()["counters"]
    r = http.post("/v1/completions", json=body("never starts [[replay:stall:0]]"))
    assert r.status_code == 504, r.text
    error = r.json()["error"]
    assert error["code"] == "first_token_timeout" and "2 tries" in error["message"], error
    after = settled(app, wait)  # both replicas dropped, then back at their next heartbeat
    assert after["counters"]["requeued"] >= before["requeued"] + 1
    next_request_succeeds(http)


def test_an_engine_error_mid_stream_ends_with_an_error_event_then_done(app, http, wait):
    got = stream(http, "breaks [[replay:fail:2]]")
    assert len(got["text"].split()) == 2
    assert got["error"]["code"] == "engine_error" and got["error"]["type"] == "server_error", got
    assert got["done_last"]
    r = http.post("/v1/completions", json=body("breaks too [[replay:fail:1]]"))
    assert r.status_code == 500 and r.json()["error"]["code"] == "engine_error", r.text
    settled(app, wait)
    wait(lambda: counter(http, "500") >= 2, timeout=10, what="both 500s in ssjf_requests_total")
    next_request_succeeds(http)


def test_a_hung_engine_is_dropped_by_the_router_and_replaced_by_serve(deploy, wait):
    app = deploy(make_replay_config(
        "watchdog",
        router={"replica_timeout_s": 2.0},
        llm={"num_replicas": 2, "max_batch": 2, "time_scale": 0.1, "heartbeat_s": 0.5, "replay_faults": True,
             "stall_timeout_s": 1.0, "health_check_period_s": 0.5},
        # The ingress waits longer than the watchdog takes to trip and the router to drop the replica.
        ingress={"num_cpus": 0, "token_timeout_s": 6.0}))
    with httpx.Client(base_url=app.url, timeout=60) as http:
        got = stream(http, "the engine hangs [[replay:stall:2]]")
        assert got["error"]["code"] == "token_timeout" and got["done_last"], got
        victim = got["replica"]
        # Silent since its stall, the victim was dropped; Serve replaced it after failed health checks
        # (had it recovered, it would be back under its old id: never 2 replicas without it).
        wait(lambda: (s := app.snapshot()) and len(s["replicas"]) == 2
             and victim not in [r["replica_id"] for r in s["replicas"]], timeout=60,
             what="a replacement for the stalled replica")
        assert app.snapshot()["counters"]["replicas_removed"] >= 1
        settled(app, wait)
        next_request_succeeds(http)
