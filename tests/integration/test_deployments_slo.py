"""SLO shedding on a live cluster (issue 14 item 4): replay replicas, ``router.policy: slo`` with
``slo_infeasible: shed``. A request whose SLO no start can meet (header or body field, streamed or
not) is answered a plain 503 ``slo_unattainable`` before any output; feasible ones get their 200; a
request whose SLO runs out while it waits behind a long one is shed too (the router answers its
waiting enqueue). Afterwards the router holds nothing, its counters balance with ``shed`` on the
queue side, and the ingress counted every shed (``ssjf_slo_shed_total``, 503 in ``ssjf_requests_total``)."""

import threading

import httpx
import pytest

from tests.integration.conftest import make_replay_config

pytestmark = pytest.mark.integration

# The replay engine's default profile at time_scale 1 takes about 11 ms per token; the router's
# starting estimate says 12 ms, plus 50 ms to the first token.
SLO_ROUTER = {"policy": "slo", "slo_infeasible": "shed", "slo_seconds_per_token": 0.012, "slo_first_token_s": 0.05,
              "slo_guard_s": 0.0}


@pytest.fixture(scope="module")
def app(deploy_module):
    # One replica with one slot, so a long request makes the next one wait.
    return deploy_module(make_replay_config(
        "slo", router=SLO_ROUTER,
        llm={"num_replicas": 1, "batching": "none", "time_scale": 1.0, "heartbeat_s": 0.5},
        ingress={"num_cpus": 0, "metrics_push_s": 0.2}))


@pytest.fixture(scope="module")
def http(app):
    with httpx.Client(base_url=app.url, timeout=60) as client:
        yield client


def body(tokens: int, **extra) -> dict:
    """A completion the marker predictor predicts exactly (the replay engine emits ``tokens``)."""
    return {"model": "m", "prompt": f"[[predict:{tokens}]] tell me", "max_tokens": tokens,
            "replay_output_tokens": tokens, **extra}


def balanced(snap: dict) -> bool:
    c = snap["counters"]
    runs = c["completed"] + c["cancelled"] + c["failed"] + c["requeued"] + c["preempted"] + snap["num_running"]
    queue = c["dispatched"] + c["withdrawn"] + c["shed"] + snap["num_queued"]
    return c["dispatched"] + c["adopted"] == runs and c["enqueued"] + c["preempted"] == queue


def settled(app, wait) -> dict:
    return wait(lambda: (s := app.snapshot()) and s["num_queued"] == 0 and s["num_running"] == 0
                and s["num_waiters"] == 0 and s, timeout=20, what="the router to settle")


def counters(http) -> dict[str, float]:
    """The ingress's counters (GET /metrics), by sample name and labels."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def counted(http, wait, before: dict, sheds: int, completions_503: int, chat_503: int = 0) -> None:
    """The ingress counted these sheds since ``before``: in ssjf_slo_shed_total and as 503s."""
    def delta(now, name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return now.get(key, 0.0) - before.get(key, 0.0)

    def done():
        now = counters(http)
        return (delta(now, "ssjf_slo_shed_total") == sheds
                and delta(now, "ssjf_requests_total", endpoint="completions", status="503") == completions_503
                and delta(now, "ssjf_requests_total", endpoint="chat", status="503") == chat_503)

    wait(done, timeout=10, what="the sheds in the ingress's counters")


def assert_shed(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/json")  # a plain error, never an event stream
    error = r.json()["error"]
    assert error["type"] == error["code"] == "slo_unattainable" and error["param"] is None, error


def test_an_impossible_slo_is_a_503_and_feasible_ones_are_served(app, http, wait):
    before, metrics = app.snapshot()["counters"], counters(http)
    # 300 predicted tokens take about 3.6 s: 100 ms cannot be met even on an idle replica.
    assert_shed(http.post("/v1/completions", json=body(300), headers={"x-slo-jct-ms": "100"}))
    assert_shed(http.post("/v1/completions", json=body(300, slo={"jct_ms": 100})))
    assert_shed(http.post("/v1/completions", json=body(300, stream=True), headers={"x-slo-jct-ms": "100"}))
    chat = {"model": "m", "messages": [{"role": "user", "content": "[[predict:300]] hi"}], "max_tokens": 300,
            "replay_output_tokens": 300, "slo": {"ttft_ms": 20, "jct_ms": 60000}}  # TTFT: 50 ms > 20 ms
    assert_shed(http.post("/v1/chat/completions", json=chat))
    # Feasible: served as usual, streamed or not, header or body field.
    ok = http.post("/v1/completions", json=body(5), headers={"x-slo-jct-ms": "30000"})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 5
    ok = http.post("/v1/completions", json=body(5, stream=True, slo={"ttft_ms": 20000, "jct_ms": 30000}))
    assert ok.status_code == 200 and "data: [DONE]" in ok.text and "error" not in ok.text
    # A bad value is the client's mistake, a 400 naming it.
    bad = http.post("/v1/completions", json=body(5), headers={"x-slo-jct-ms": "soon"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-slo-jct-ms"
    after = settled(app, wait)
    c = after["counters"]
    assert c["shed"] - before["shed"] == 4 and c["completed"] - before["completed"] == 2, c
    assert balanced(after)
    counted(http, wait, metrics, sheds=4, completions_503=3, chat_503=1)


def test_a_request_whose_slo_runs_out_while_waiting_is_shed(app, http, wait):
    """The only slot runs a long reply (about 3.3 s); a short request with a 1 s objective arrives
    during it: feasible then (its service is about 0.1 s) but not once it has waited past 0.9 s. The
    router sheds it while it waits (its sweep, or at the long one's completion at the latest)."""
    before, metrics = app.snapshot()["counters"], counters(http)
    started, short = threading.Event(), {}

    def send_short():
        started.wait(30)
        r = http.post("/v1/completions", json=body(5), headers={"x-slo-jct-ms": "1000"})
        short.update(response=r)

    thread = threading.Thread(target=send_short)
    thread.start()
    words = 0
    with http.stream("POST", "/v1/completions", json=body(300, stream=True)) as r:  # no SLO: never shed
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and '"text"' in line:
                words += 1
                if words == 10:
                    started.set()
    thread.join(30)
    assert not thread.is_alive(), "the short request hung"
    assert_shed(short["response"])
    after = settled(app, wait)
    c = after["counters"]
    assert c["shed"] - before["shed"] == 1 and c["completed"] - before["completed"] == 1, c
    assert c["enqueued"] - before["enqueued"] == 2 and balanced(after)
    counted(http, wait, metrics, sheds=1, completions_503=1)
