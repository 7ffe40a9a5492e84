"""srpt on a live cluster (replay engine, one replica with one slot, progress every 4 tokens): a long
request is running when a short one arrives; at the long one's next progress point the router
preempts it, the short one runs, and the long one resumes where it stopped. The client of the long
request sees one uninterrupted reply: every word once, in order, and the usage counts every token
once. Afterwards the router holds nothing (0 queued, 0 running, 0 waiters) and its counters balance
with the preemption on the run-end side."""

import json
import threading
import time

import httpx
import pytest

from deployments.engines.replay import _WORDS
from tests.integration.conftest import make_replay_config

pytestmark = pytest.mark.integration

LONG, SHORT, EVERY = 300, 5, 4


@pytest.fixture(scope="module")
def app(deploy_module):
    # time_scale 1: the default profile's ~11 ms per token, so the long reply lasts about 3 s.
    return deploy_module(make_replay_config(
        "preempt",
        router={"policy": "srpt", "repredict_every_tokens": EVERY, "preempt_margin": 2.0, "max_preemptions": 1,
                "preempt_min_remaining_tokens": 4, "srpt_aging_threshold_s": 600.0},
        llm={"num_replicas": 1, "batching": "none", "time_scale": 1.0, "heartbeat_s": 0.5},
        ingress={"num_cpus": 0, "metrics_push_s": 0.2}))


@pytest.fixture(scope="module")
def http(app):
    with httpx.Client(base_url=app.url, timeout=60) as client:
        yield client


def reply(n: int) -> str:
    """The replay engine's text of an n-token reply."""
    return "".join(" " + _WORDS[i % len(_WORDS)] for i in range(n))


def body(tokens: int, predicted: int, **extra) -> dict:
    return {"model": "m", "prompt": f"[[predict:{predicted}]] tell me", "max_tokens": tokens,
            "replay_output_tokens": tokens, **extra}


def balanced(snap: dict) -> bool:
    c = snap["counters"]
    runs = c["completed"] + c["cancelled"] + c["failed"] + c["requeued"] + c["preempted"] + snap["num_running"]
    queue = c["dispatched"] + c["withdrawn"] + snap["num_queued"]
    return c["dispatched"] + c["adopted"] == runs and c["enqueued"] + c["preempted"] == queue


def settled(app, wait) -> dict:
    return wait(lambda: (s := app.snapshot()) and s["num_queued"] == 0 and s["num_running"] == 0
                and s["num_waiters"] == 0 and s, timeout=20, what="the router to settle")


def send_short_after(http, started: threading.Event, out: dict) -> threading.Thread:
    """Once the long reply is under way, a short request; records its answer and when it ended."""
    def go():
        started.wait(30)
        r = http.post("/v1/completions", json=body(SHORT, SHORT))
        out.update(status=r.status_code, json=r.json(), ended_at=time.monotonic())

    thread = threading.Thread(target=go)
    thread.start()
    return thread


def test_a_long_stream_preempted_once_resumes_as_one_uninterrupted_reply(app, http, wait):
    before = app.snapshot()["counters"]
    started, short = threading.Event(), {}
    thread = send_short_after(http, started, short)
    # EMULATED re-predictions sent with the request (as a benchmark does): 296, 292, ... tokens left.
    long = body(LONG, LONG, stream=True, stream_options={"include_usage": True},
                replay_remaining_predictions=[float(LONG - k) for k in range(EVERY, LONG, EVERY)])
    text, usage, finish, events = "", None, None, []
    with http.stream("POST", "/v1/completions", json=long) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line[6:])
            if line[6:] == "[DONE]":
                continue
            event = json.loads(line[6:])
            assert "error" not in event, event
            if event.get("usage"):
                usage = event["usage"]
            for choice in event["choices"]:
                text += choice["text"]
                finish = choice.get("finish_reason") or finish
            if len(text.split()) >= 8:
                started.set()
    long_ended_at = time.monotonic()
    thread.join(30)
    assert text == reply(LONG)  # every word once, in order: the resume went on where it stopped
    assert usage["completion_tokens"] == LONG and finish == "stop" and events[-1] == "[DONE]"
    assert short["status"] == 200 and short["json"]["usage"]["completion_tokens"] == SHORT
    assert short["ended_at"] < long_ended_at  # the short one did not wait for the long one to end
    after = settled(app, wait)
    c = after["counters"]
    assert c["preempted"] - before["preempted"] == 1, c  # once: max_preemptions 1
    assert c["completed"] - before["completed"] == 2 and c["stale_reports"] == before["stale_reports"]
    assert balanced(after)
    wait(lambda: "ssjf_preemptions_total 1.0" in http.get("/metrics").text, timeout=10,
         what="the preemption in ssjf_preemptions_total")


def test_a_non_streaming_request_preempted_gets_its_whole_reply(app, http, wait):
    """No emulated values sent: the replica re-predicts the prompt-only prediction minus the tokens done."""
    before = app.snapshot()["counters"]
    started, short = threading.Event(), {}
    thread = send_short_after(http, started, short)
    threading.Timer(0.5, started.set).start()  # ~45 tokens into the long reply
    r = http.post("/v1/completions", json=body(LONG, LONG))
    thread.join(30)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == reply(LONG) and r.json()["usage"]["completion_tokens"] == LONG
    assert short["status"] == 200
    after = settled(app, wait)
    assert after["counters"]["preempted"] - before["preempted"] == 1 and balanced(after)
