"""Issue 12's fault matrix: on a live replay cluster under concurrent load, every fault of the run
path (an LLM replica killed before or after its first token, or hung; stale reports; duplicate
dispatch answers; the router killed or hung; the proxy pool killed or hung; clients that leave
while predicted, queued, before their first token or mid-stream; overload; an ingress replica hung
past the router's lease or killed) loses nothing and hangs nothing. (A whole node lost under load:
tests/multinode/test_multinode_cluster.py.)

Each case sends a burst (half streaming, mixed lengths) with its fault, then asserts:

(a) every client got a 200 with its complete answer, or an OpenAI-style error (a body
    ``{"error": {message, type, param, code}}``; in a started stream an error event then
    ``[DONE]``), or left by its own choice; nothing else (no plain-text error, no stream that just
    stops, no client timeout, which is what a hang looks like here);
(b) the router has nothing queued, running or waiting;
(c) every LLM replica runs nothing (the replica's own view: ``LLMServer.state``);
(d) the router's counters balance (``router.actor.RouterService``: dispatched + adopted == completed
    + cancelled + failed + requeued + running, and enqueued == dispatched + withdrawn + queued; they
    count from the router's start, so after a restart they cover the new router's life);
(e) the next request succeeds.

Every case adds a row (requests, answers by kind, lost, hung) to a ledger; the module prints the
rows and writes the totals to ``fault-matrix/totals.json`` under pytest's temporary directory.
One app serves the cases that leave it whole (replicas Serve replaces, a router Ray restarts);
the ingress cases run on an app of their own, with two ingress replicas.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass

import httpx
import pytest

from tests.integration.conftest import make_replay_config, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MODEL = "m"
HANG_S = 60.0  # a client that waits this long for an answer counts as hung (every deadline is far below)
N = 16  # requests per burst
LENGTHS = (8, 20, 40, 70, 120)

# Small deadlines, so that each case takes seconds (the knobs of docs/serving.md).
FIRST_TOKEN_TIMEOUT_S = 3.0
TOKEN_TIMEOUT_S = 3.0
REPLICA_TIMEOUT_S = 3.0
MAX_IN_FLIGHT = 24
MAX_QUEUED = 14


def matrix_config(name: str, **overrides) -> dict:
    sections = {
        "router": {"replica_timeout_s": REPLICA_TIMEOUT_S, "lease_s": 10.0, "max_queued": MAX_QUEUED},
        "proxy": {"timeout_s": 0.5},
        "llm": {"num_replicas": 2, "max_batch": 2, "time_scale": 0.5, "heartbeat_s": 0.5, "replay_faults": True,
                "stall_timeout_s": 2.0, "health_check_period_s": 1.0},
        "ingress": {"num_cpus": 0, "first_token_timeout_s": FIRST_TOKEN_TIMEOUT_S, "token_timeout_s": TOKEN_TIMEOUT_S,
                    "first_chunk_timeout_s": 3.0, "pin_grace_s": 0.5, "max_retries": 3, "router_timeout_s": 40.0,
                    "max_in_flight": MAX_IN_FLIGHT, "metrics_push_s": 0.5},
    }
    for key, values in overrides.items():
        sections[key] = {**sections[key], **values}
    return make_replay_config(name, **sections)


# ---- the clients -----------------------------------------------------------------------------
@dataclass
class Req:
    """One client request. ``leave``: "event" (the client leaves when the case sets its event) or
    "tokens" (it leaves a stream after ``leave_after`` tokens)."""

    i: int
    tokens: int
    stream: bool
    predict: float | None = None  # the marker predictor's answer; default: the true length
    extra: str = ""  # fault markers in the prompt
    leave: str | None = None
    leave_after: int = 0

    def body(self) -> dict:
        predict = self.tokens if self.predict is None else self.predict
        return {"model": MODEL, "prompt": f"job {self.i} [[predict:{predict:g}]] {self.extra}".strip(),
                "max_tokens": self.tokens, "replay_output_tokens": self.tokens, "stream": self.stream}


@dataclass
class Progress:
    """What a client has seen so far (the faults trigger on it)."""

    headers: bool = False
    request_id: str | None = None
    replica: str | None = None
    tokens: int = 0
    done: bool = False


@dataclass
class Result:
    req: Req
    outcome: str  # ok | error | sse_error | left | proxy_5xx | transport | truncated | bad | hung
    status: int | None = None
    code: str | None = None
    replica: str | None = None
    detail: str = ""


def burst(n: int = N, start: int = 0, **kw) -> list[Req]:
    """``n`` requests, odd ones streaming, lengths cycling through LENGTHS."""
    return [Req(i, LENGTHS[i % len(LENGTHS)], i % 2 == 1, **kw) for i in range(start, start + n)]


def _openai_error(payload) -> dict | None:
    err = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(err, dict) and {"message", "type", "param", "code"} <= set(err):
        return err
    return None


def _classify_reply(req: Req, r: httpx.Response, replica: str | None) -> Result:
    """A whole (non-streamed) answer: a complete 200 or an OpenAI-style error; anything else is bad."""
    try:
        payload = r.json()
    except ValueError:
        payload = None
    if r.status_code == 200:
        text = payload["choices"][0]["text"] if payload else ""
        used = payload["usage"]["completion_tokens"] if payload else -1
        if used == req.tokens and len(text.split()) == req.tokens:
            return Result(req, "ok", 200, replica=replica)
        return Result(req, "bad", 200, detail=f"incomplete answer: {used} tokens, {len(text.split())} words")
    err = _openai_error(payload)
    if err is not None:
        return Result(req, "error", r.status_code, err["code"], replica)
    # Serve's own HTTP proxy answers a plain 5xx when the ingress replica died under the request.
    outcome = "proxy_5xx" if r.status_code >= 500 else "bad"
    return Result(req, outcome, r.status_code, detail=r.text[:200])


async def _exchange(client: httpx.AsyncClient, req: Req, seen: Progress) -> Result:
    if not req.stream:
        r = await client.post("/v1/completions", json=req.body())
        seen.headers = True
        return _classify_reply(req, r, r.headers.get("x-replica-id"))
    text, error, events, finish = "", None, [], None
    async with client.stream("POST", "/v1/completions", json=req.body()) as r:
        seen.headers = True
        seen.request_id = r.headers.get("x-ssjf-request-id")
        seen.replica = r.headers.get("x-replica-id")
        if r.status_code != 200:
            await r.aread()
            return _classify_reply(req, r, seen.replica)
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            events.append(data)
            if data == "[DONE]":
                continue
            event = json.loads(data)
            if "error" in event:
                error = event
            elif event.get("choices"):
                text += event["choices"][0].get("text") or ""
                finish = event["choices"][0].get("finish_reason") or finish
                seen.tokens = len(text.split())
                if req.leave == "tokens" and seen.tokens >= req.leave_after:
                    return Result(req, "left", 200, replica=seen.replica)
    done_last = events[-1:] == ["[DONE]"]
    if error is not None:
        err = _openai_error(error)
        if err is not None and done_last:
            return Result(req, "sse_error", 200, err["code"], seen.replica)
        return Result(req, "bad", 200, detail=f"error event {error} without [DONE] last")
    if done_last and finish is not None and len(text.split()) == req.tokens:
        return Result(req, "ok", 200, replica=seen.replica)
    return Result(req, "truncated", 200, detail=f"{len(text.split())} of {req.tokens} tokens, done={done_last}")


async def send(client: httpx.AsyncClient, req: Req, seen: Progress, leave: asyncio.Event) -> Result:
    task = asyncio.ensure_future(_exchange(client, req, seen))
    waiter = asyncio.ensure_future(leave.wait())
    try:
        done, _ = await asyncio.wait({task, waiter}, timeout=HANG_S, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            try:
                return task.result()
            except httpx.TransportError as e:  # the connection broke: no answer came
                return Result(req, "transport", detail=repr(e)[:200])
        task.cancel()  # leaving: closes the connection
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await task
        return Result(req, "left" if waiter in done else "hung")
    finally:
        waiter.cancel()
        seen.done = True


class Burst:
    """A burst in flight: each request's progress and leave event, for the fault to act on."""

    def __init__(self, reqs: list[Req]):
        self.reqs = reqs
        self.seen = {r.i: Progress() for r in reqs}
        self.leave = {r.i: asyncio.Event() for r in reqs}
        self.sent_at = time.monotonic()


async def run_burst(app, reqs: list[Req], fault=None) -> tuple[list[Result], object]:
    """Send ``reqs`` at once and run ``fault(burst)`` beside them; every client's result, and the fault's."""
    b = Burst(reqs)
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=app.url, timeout=httpx.Timeout(HANG_S + 30), limits=limits) as client:
        tasks = [asyncio.ensure_future(send(client, r, b.seen[r.i], b.leave[r.i])) for r in reqs]
        fault_task = asyncio.ensure_future(fault(b)) if fault is not None else None
        results = await asyncio.gather(*tasks)
        fault_out = await asyncio.wait_for(fault_task, HANG_S) if fault_task is not None else None
    return list(results), fault_out


async def until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll a blocking ``predicate`` (run on a thread) until truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        await asyncio.sleep(interval)


# ---- the cluster's parts ---------------------------------------------------------------------
def serve_actors(app_name: str, deployment: str) -> list[dict]:
    """The live replica actors of ``deployment``: name, pid, replica id (Ray's own actor table: the
    state API needs the dashboard, which the tests do not start)."""
    from ray._private import state

    marker = f"::{app_name}#{deployment}#"
    out = []
    for a in state.actors().values():
        name = a.get("Name") or ""
        if a["State"] == "ALIVE" and marker in name:
            out.append({"name": name, "pid": a["Pid"], "replica_id": name.rsplit("#", 1)[1]})
    return out


def kill_actor(name: str) -> None:
    """Kill a Serve replica actor (no restart: Serve starts a replacement, as after a crash)."""
    import ray

    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["name"] == name:
            ray.kill(ray.get_actor(entry["name"], namespace=entry["namespace"]), no_restart=True)
            return
    raise LookupError(f"no actor named {name}")


def router_pid(app) -> int:
    from ray._private import state

    from deployments.config import AppConfig

    name = AppConfig.from_dict(app.config).router_actor_name
    for a in state.actors().values():
        if a.get("Name") == name and a["State"] == "ALIVE":
            return a["Pid"]
    raise LookupError(f"no live router actor {name}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed process stays a zombie until its parent reaps it.
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split(") ", 1)[1].startswith("Z"):
                return False
    return True


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise LookupError(f"no VmRSS for pid {pid}")


def replica_state(app, replica_id: str, timeout: float = 20.0) -> dict:
    """``LLMServer.state`` of one replica, through a Serve handle pinned to it (a call that reaches
    another replica, as when this handle does not list it yet, is asked again)."""
    from ray import serve

    handle = serve.get_deployment_handle("llm", app_name=app.name)

    def ask():
        answer = handle.state.remote(target_replica_id=replica_id).result(timeout_s=10)
        return None if answer.get("misrouted") else answer

    return wait_until(ask, timeout=timeout, interval=0.2, what=f"replica {replica_id} to answer")


def counters_balance(snap: dict) -> None:
    c = snap["counters"]
    runs_in = c["dispatched"] + c["adopted"]
    # The router's identities (router.actor.RouterService), preempted runs (srpt) included.
    preempted = c.get("preempted", 0)
    runs_out = c["completed"] + c["cancelled"] + c["failed"] + c["requeued"] + preempted + snap["num_running"]
    assert runs_in == runs_out, f"runs do not balance: {runs_in} began, {runs_out} ended or running: {c}"
    queue_in, queue_out = c["enqueued"] + preempted, c["dispatched"] + c["withdrawn"] + snap["num_queued"]
    assert queue_in == queue_out, f"the queue does not balance: {queue_in} enqueued, {queue_out} left or queued: {c}"


def settle(app, num_replicas: int = 2, timeout: float = 60.0) -> dict:
    """(b) nothing queued, running or waiting, ``num_replicas`` registered; (c) every replica runs
    nothing by its own account; (d) the counters balance. Returns the router's snapshot."""
    snap = wait_until(lambda: (s := app.snapshot()) and s["num_queued"] == 0 and s["num_running"] == 0
                      and s["num_waiters"] == 0 and len(s["replicas"]) == num_replicas and s,
                      timeout=timeout, interval=0.1,
                      what=f"the router to settle (0 queued, 0 running, 0 waiters, {num_replicas} replicas)")
    for rep in snap["replicas"]:
        rid = rep["replica_id"]
        wait_until(lambda rid=rid: replica_state(app, rid)["num_running"] == 0, timeout=20, interval=0.2,
                   what=f"replica {rid} to run nothing")
    snap = app.snapshot()
    counters_balance(snap)
    return snap


def next_request_succeeds(app) -> None:
    """(e) a fresh request, whole and streamed, completes."""
    async def both():
        return await run_burst(app, [Req(900, 7, False), Req(901, 9, True)])

    results, _ = asyncio.run(both())
    assert [r.outcome for r in results] == ["ok", "ok"], results


def delta(after: dict, before: dict, key: str) -> int:
    return after["counters"][key] - before["counters"][key]


# ---- the ledger ------------------------------------------------------------------------------
LOST = ("truncated", "transport")  # no answer at all: a stream that just stopped, a dropped connection


def tally(case: str, results: list[Result], seconds: float, allowed=("ok", "error", "sse_error", "left")) -> dict:
    """(a) for one case, and its row of the ledger."""
    outcomes = collections.Counter(r.outcome for r in results)
    row = {
        "case": case, "requests": len(results), "ok": outcomes["ok"],
        "errors": dict(collections.Counter(str(r.status) for r in results if r.outcome in ("error", "proxy_5xx"))),
        "error_codes": dict(collections.Counter(r.code for r in results if r.outcome == "error")),
        "sse_errors": dict(collections.Counter(r.code for r in results if r.outcome == "sse_error")),
        "left": outcomes["left"], "proxy_5xx": outcomes["proxy_5xx"], "transport": outcomes["transport"],
        "bad": outcomes["bad"], "lost": sum(outcomes[k] for k in LOST if k not in allowed),
        "hung": outcomes["hung"], "seconds": round(seconds, 1),
    }
    print(f"[fault-matrix] {case}: {row['requests']} requests, {row['ok']} ok, errors {row['errors']} "
          f"{row['error_codes']}, sse errors {row['sse_errors']}, left {row['left']}, proxy 5xx {row['proxy_5xx']}, "
          f"transport {row['transport']}, lost {row['lost']}, hung {row['hung']} ({row['seconds']} s)")
    LEDGER.append(row)
    unexpected = [r for r in results if r.outcome not in allowed]
    assert not unexpected, unexpected
    return row


LEDGER: list[dict] = []


@pytest.fixture(scope="module", autouse=True)
def ledger(tmp_path_factory):
    yield LEDGER
    if not LEDGER:
        return
    totals = {"cases": len(LEDGER), "requests": sum(r["requests"] for r in LEDGER),
              "ok": sum(r["ok"] for r in LEDGER), "left": sum(r["left"] for r in LEDGER),
              "errors": dict(sum((collections.Counter(r["errors"]) for r in LEDGER), collections.Counter())),
              "sse_errors": dict(sum((collections.Counter(r["sse_errors"]) for r in LEDGER), collections.Counter())),
              "proxy_5xx": sum(r["proxy_5xx"] for r in LEDGER), "transport": sum(r["transport"] for r in LEDGER),
              "lost": sum(r["lost"] for r in LEDGER), "hung": sum(r["hung"] for r in LEDGER),
              "bad": sum(r["bad"] for r in LEDGER), "rows": LEDGER}
    path = tmp_path_factory.mktemp("fault-matrix") / "totals.json"
    path.write_text(json.dumps(totals, indent=1))
    print(f"\n[fault-matrix] totals ({path}): " + json.dumps({k: v for k, v in totals.items() if k != "rows"}))


@pytest.fixture(scope="module")
def app(deploy_module):
    return deploy_module(matrix_config("matrix"))


def case(app, name: str, reqs: list[Req], fault=None, allowed=("ok", "error", "sse_error", "left")):
    """Run one case: the burst with its fault, (a) on every answer; returns (results, fault's value, row)."""
    t0 = time.monotonic()
    results, out = asyncio.run(run_burst(app, reqs, fault))
    row = tally(name, results, time.monotonic() - t0, allowed)
    return results, out, row


# ---- cases that leave the cluster whole ------------------------------------------------------
def test_stale_reports_of_earlier_attempts_are_ignored(app):
    before = settle(app)
    reqs = burst() + [Req(100 + k, 200, True) for k in range(2)]

    async def stale_reports(b: Burst):
        import ray

        from router.messages import Report

        reports = []
        deadline = time.monotonic() + 30
        # The runs the router sees may end before a replica is asked for its own (short requests on a
        # busy box): look again until some replica names a run in flight.
        while not reports and time.monotonic() < deadline:
            snap = await until(lambda: (s := app.snapshot()) and s["num_running"] >= 1 and s, 30, "runs on the replicas")
            for rep in snap["replicas"]:
                state = await asyncio.to_thread(replica_state, app, rep["replica_id"])
                for run in state["runs"]:
                    old = run.attempt - 1  # an earlier try of this request, as a late replica would name it
                    rid = run.meta.request_id
                    reports += [Report.complete(rid, 3, attempt=old), Report.fail(rid, attempt=old),
                                Report.cancel(rid, attempt=old)]
        assert reports, "no run to report on"
        await asyncio.to_thread(ray.get, app.router().report.remote(reports), timeout=30)
        return len(reports)

    results, sent, _ = case(app, "stale reports of earlier attempts", reqs, stale_reports)
    assert all(r.outcome == "ok" for r in results)
    after = settle(app)
    assert delta(after, before, "stale_reports") >= sent  # each ignored and counted ...
    assert delta(after, before, "cancelled") == delta(after, before, "failed") == 0  # ... and none ended a run
    assert delta(after, before, "completed") == len(reqs)
    next_request_succeeds(app)


def test_duplicate_dispatch_answers_are_delivered_once(app):
    """The ingress's batched client gets a second Dispatched for a run it already started (the router
    answers a resubmitted request that runs with its run again): it must neither run it twice nor take
    it for an unwanted one (which would cancel the live run)."""
    before = settle(app)
    longs = [Req(200 + k, 250, True, predict=1) for k in range(3)]  # dispatched first, running for a while
    reqs = longs + burst(13)

    async def duplicates(b: Burst):
        import ray

        targets = await until(lambda: [b.seen[r.i].request_id for r in longs if 1 <= b.seen[r.i].tokens <= 150],
                              30, "a long stream under way")
        snap = await asyncio.to_thread(app.snapshot)
        clients = snap["client_ids"]
        assert len(clients) == 1, clients  # one ingress replica: the owner of every request
        sent = 0
        for rep in snap["replicas"]:
            state = await asyncio.to_thread(replica_state, app, rep["replica_id"])
            for run in state["runs"]:
                if run.meta.request_id in targets:
                    for _ in range(2):
                        await asyncio.to_thread(ray.get, app.router().submit.remote(clients[0], [run.meta], []),
                                                timeout=30)
                        sent += 1
        assert sent, "the long streams ended before their duplicates were sent"
        return sent

    results, sent, _ = case(app, "duplicate dispatch answers", reqs, duplicates)
    assert all(r.outcome == "ok" for r in results)
    after = settle(app)
    # No run was cancelled by a duplicate taken for an unwanted answer, and none ended twice.
    assert delta(after, before, "cancelled") == 0 and delta(after, before, "stale_reports") == 0
    assert delta(after, before, "completed") == len(reqs)
    assert delta(after, before, "enqueued") == len(reqs)  # the duplicates joined their runs
    next_request_succeeds(app)


def test_proxy_hung_serving_goes_on_and_clients_leave_while_predicted(app):
    """The proxy replica is stopped (SIGSTOP): every prediction falls back to the heuristic after
    proxy.timeout_s and serving goes on. Clients that leave during that wait never reach the router."""
    before = settle(app)
    leavers = [Req(300 + k, 30, k % 2 == 1, leave="event") for k in range(6)]
    reqs = burst() + leavers
    [proxy] = serve_actors(app.name, "proxy")

    async def leave_soon(b: Burst):
        await asyncio.sleep(0.2)  # within the proxy's 0.5 s deadline, which a stopped proxy always uses up
        for r in leavers:
            b.leave[r.i].set()

    os.kill(proxy["pid"], signal.SIGSTOP)
    try:
        results, _, _ = case(app, "proxy hung (SIGSTOP); clients leave while predicted", reqs, leave_soon)
        assert [r.outcome for r in results if r.req in leavers] == ["left"] * len(leavers)
        assert all(r.outcome == "ok" for r in results if r.req not in leavers)
        after = settle(app)
        assert delta(after, before, "enqueued") == N  # the leavers never reached the router
        next_request_succeeds(app)
    finally:
        os.kill(proxy["pid"], signal.SIGCONT)


def test_proxy_replica_killed_serving_goes_on(app):
    before = settle(app)

    async def kill_proxy(b: Burst):
        await until(lambda: delta(app.snapshot(), before, "enqueued") >= 4, 30, "the burst to reach the router")
        [proxy] = await asyncio.to_thread(serve_actors, app.name, "proxy")
        await asyncio.to_thread(kill_actor, proxy["name"])
        return proxy["replica_id"]

    results, victim, _ = case(app, "proxy replica killed", burst(), kill_proxy)
    assert all(r.outcome == "ok" for r in results)
    settle(app)
    next_request_succeeds(app)
    # The later cases order by the proxy's (marker) predictions: wait for Serve's replacement.
    wait_until(lambda: [a for a in serve_actors(app.name, "proxy") if a["replica_id"] != victim], timeout=60,
               interval=0.5, what="Serve to replace the proxy replica")

    def predicted_by_marker():
        r = httpx.post(f"{app.url}/v1/completions", timeout=30, json=Req(950, 2, False, predict=77).body())
        return r.status_code == 200 and r.headers.get("x-predicted-tokens") == "77.0"

    wait_until(predicted_by_marker, timeout=60, interval=0.5, what="the new proxy replica to predict")


LEAVER_PREDICTED = 5000.0


def test_clients_leave_while_queued(app):
    before = settle(app)
    # Predicted longest, they wait behind the whole burst (SSJF) until their clients leave.
    leavers = [Req(400 + k, 50, k % 2 == 1, predict=LEAVER_PREDICTED, leave="event") for k in range(4)]
    reqs = burst(12) + leavers

    since = time.time()

    def all_queued() -> bool:
        # Every request has reached the router and no leaver has been dispatched yet (a replica takes
        # from its own queue first, so a leaver may run before the other replica's queue drains).
        s = app.snapshot(dispatch_log=True)
        return (delta(s, before, "enqueued") >= len(reqs)
                and not [d for d in s["dispatch_log"] if d[2] >= since and d[3] == LEAVER_PREDICTED])

    async def leave_queued(b: Burst):
        await until(all_queued, 30, "the leavers queued at the router")
        for r in leavers:
            b.leave[r.i].set()

    results, _, _ = case(app, "clients leave while queued", reqs, leave_queued)
    assert [r.outcome for r in results if r.req in leavers] == ["left"] * len(leavers)
    assert all(r.outcome == "ok" for r in results if r.req not in leavers)
    after = settle(app)
    # Each leaver left once: withdrawn from the queue (or, had it just been dispatched, cancelled).
    assert delta(after, before, "withdrawn") + delta(after, before, "cancelled") == len(leavers)
    assert delta(after, before, "withdrawn") >= 1
    next_request_succeeds(app)


def test_clients_leave_before_the_first_token_and_mid_stream(app):
    before = settle(app)
    # Stalled before any token ([[replay:stall:0]]), dispatched first (predicted shortest).
    no_token = [Req(500 + k, 40, True, predict=1, extra="[[replay:stall:0]]", leave="event") for k in range(2)]
    mid_stream = [Req(510 + k, 200, True, predict=2, leave="tokens", leave_after=5) for k in range(3)]
    reqs = no_token + mid_stream + burst(11)

    async def leave_before_first_token(b: Burst):
        await until(lambda: all(b.seen[r.i].headers for r in no_token), 30, "the stalled streams to start")
        await asyncio.sleep(0.3)  # started on their replica, no token (the first-token deadline is 3 s)
        assert all(b.seen[r.i].tokens == 0 for r in no_token)
        for r in no_token:
            b.leave[r.i].set()

    results, _, _ = case(app, "clients leave before the first token and mid-stream", reqs, leave_before_first_token)
    leavers = no_token + mid_stream
    assert [r.outcome for r in results if r.req in leavers] == ["left"] * len(leavers)
    assert all(r.outcome == "ok" for r in results if r.req not in leavers)
    after = settle(app)
    assert delta(after, before, "cancelled") == len(leavers)  # each run ended once, as cancelled
    assert delta(after, before, "completed") == len(reqs) - len(leavers)
    next_request_succeeds(app)


def test_overload_at_three_times_capacity(app):
    """3 x ingress.max_in_flight at once: 200s and OpenAI-style 429s only, and the ingress's memory
    stays flat (a sanity bound on its RSS, not a timing)."""
    settle(app)
    [ingress] = serve_actors(app.name, "ingress")
    rss_before = rss_mb(ingress["pid"])
    reqs = [Req(600 + k, (8, 16, 24)[k % 3], k % 2 == 1) for k in range(3 * MAX_IN_FLIGHT)]
    results, _, row = case(app, "overload at 3x capacity", reqs, allowed=("ok", "error"))
    assert {r.status for r in results} <= {200, 429}, row
    assert {r.code for r in results if r.outcome == "error"} <= {"ingress_full", "queue_full"}, row
    assert row["errors"].get("429", 0) >= 1 and row["ok"] >= MAX_IN_FLIGHT // 2, row
    settle(app)
    rss_after = rss_mb(ingress["pid"])
    print(f"[fault-matrix] ingress RSS {rss_before:.0f} MB -> {rss_after:.0f} MB")
    assert rss_after - rss_before < 200, (rss_before, rss_after)
    next_request_succeeds(app)


# ---- an LLM replica hung or killed (Serve replaces it; the router drops it) --------------------
def _victim_of_a_stream(b: Burst, longs: list[Req]):
    return [b.seen[r.i].replica for r in longs if b.seen[r.i].tokens >= 3 and not b.seen[r.i].done]


def test_llm_replica_hung_past_the_deadlines(app):
    """A replica stopped (SIGSTOP) mid-burst: streams it was serving end with a token_timeout event
    (whole answers: a 504), its requests without a token yet are retried elsewhere, the router drops
    it; SIGCONT then brings it back (or Serve replaces it)."""
    before = settle(app)
    longs = [Req(700 + k, 300, True, predict=1) for k in range(2)]
    reqs = longs + burst(14)
    stopped = {}

    async def hang_a_replica(b: Burst):
        victims = await until(lambda: _victim_of_a_stream(b, longs), 30, "a long stream under way")
        state = await asyncio.to_thread(replica_state, app, victims[0])
        os.kill(state["pid"], signal.SIGSTOP)
        stopped.update(state)
        try:
            # Past the deadlines: the router dropped it, its clients were answered.
            await until(lambda: victims[0] not in [r["replica_id"] for r in app.snapshot()["replicas"]],
                        REPLICA_TIMEOUT_S + 20, "the router to drop the stopped replica")
            await until(lambda: all(b.seen[r.i].done for r in longs if b.seen[r.i].replica == victims[0]),
                        TOKEN_TIMEOUT_S + 20, "the stopped replica's streams to end")
        finally:
            os.kill(state["pid"], signal.SIGCONT)
        return victims[0]

    try:
        results, victim, row = case(app, "LLM replica hung (SIGSTOP) past the deadlines", reqs, hang_a_replica)
    finally:
        if stopped and alive(stopped["pid"]):
            os.kill(stopped["pid"], signal.SIGCONT)
    for r in results:
        if r.outcome == "sse_error":
            assert r.code == "token_timeout" and r.replica == victim, r
        elif r.outcome == "error":
            assert (r.status, r.code) == (504, "token_timeout"), r
    assert row["sse_errors"].get("token_timeout", 0) >= 1, row  # the stream it was serving
    after = settle(app)
    assert delta(after, before, "replicas_removed") >= 1
    next_request_succeeds(app)


def test_llm_replica_killed_before_its_first_token(app):
    """A replica stopped first (so nothing it is given produces a token), given work by the burst, then
    killed: every request dispatched to it is retried elsewhere and completes, streams included."""
    before = settle(app)
    snap0 = app.snapshot()
    victim = snap0["replicas"][0]["replica_id"]
    state = replica_state(app, victim)
    os.kill(state["pid"], signal.SIGSTOP)

    async def kill_once_given_work(b: Burst):
        try:
            await until(lambda: any(r["replica_id"] == victim and r["num_running"] >= 1
                                    for r in app.snapshot()["replicas"]), 30, "work dispatched to the stopped replica")
        finally:
            [actor] = [a for a in await asyncio.to_thread(serve_actors, app.name, "llm") if a["replica_id"] == victim]
            await asyncio.to_thread(kill_actor, actor["name"])

    try:
        results, _, _ = case(app, "LLM replica killed before its first token", burst(), kill_once_given_work)
    finally:
        if alive(state["pid"]):
            os.kill(state["pid"], signal.SIGCONT)
    assert all(r.outcome == "ok" for r in results)  # nobody saw a token from it: all retried
    after = settle(app)
    assert victim not in [r["replica_id"] for r in after["replicas"]]
    # Its runs ended once each: failed (a caller's report removed the replica) or requeued.
    assert delta(after, before, "failed") + delta(after, before, "requeued") >= 1
    next_request_succeeds(app)


def test_llm_replica_killed_after_its_first_token(app):
    """(tests/integration/test_deployments_faults.py's replica case.) Killed while a stream it serves
    is under way: that stream ends with a replica_failed event then [DONE]; whole answers restart
    elsewhere and complete; queued requests move to the other replica."""
    before = settle(app)
    longs = [Req(800 + k, 300, True, predict=1) for k in range(2)]
    reqs = longs + burst(14)

    async def kill_mid_stream(b: Burst):
        victims = await until(lambda: _victim_of_a_stream(b, longs), 30, "a long stream under way")
        [actor] = [a for a in await asyncio.to_thread(serve_actors, app.name, "llm") if a["replica_id"] == victims[0]]
        await asyncio.to_thread(kill_actor, actor["name"])
        return victims[0]

    results, victim, row = case(app, "LLM replica killed after its first token", reqs, kill_mid_stream)
    assert all(r.outcome == "ok" for r in results if not r.req.stream)  # restarted elsewhere
    for r in results:
        if r.outcome != "ok":  # a stream it had started: the error is in the stream, never silent
            assert r.outcome == "sse_error" and r.code == "replica_failed" and r.replica == victim, r
    assert row["sse_errors"].get("replica_failed", 0) >= 1, row
    after = settle(app)
    assert victim not in [r["replica_id"] for r in after["replicas"]]
    assert delta(after, before, "failed") + delta(after, before, "requeued") >= 1  # the kill ended runs, once each
    next_request_succeeds(app)


# ---- the router hung or killed (Ray restarts it; the replicas' heartbeats give it their runs) ----
def test_router_hung_is_killed_and_restarted(app):
    """The router actor stopped (SIGSTOP) mid-burst: the ingress's waits fail with RouterUnresponsive
    and are retried, the ingress kills the hung actor (RouterClient.kill_if_hung), Ray restarts it,
    it adopts the runs that went on; every request completes. Counters: the new router's life."""
    before = settle(app)
    pid = router_pid(app)

    async def hang_router(b: Burst):
        await until(lambda: (s := app.snapshot()) and s["num_queued"] >= 4, 30, "a queue at the router")
        os.kill(pid, signal.SIGSTOP)
        try:
            await until(lambda: not alive(pid), 60, "the ingress to kill the hung router")
        finally:
            if alive(pid):
                os.kill(pid, signal.SIGCONT)

    results, _, _ = case(app, "router hung (SIGSTOP), killed by its client", burst(), hang_router)
    assert all(r.outcome == "ok" for r in results)
    after = settle(app)
    assert after["started_at"] > before["started_at"]  # a new incarnation, counting from zero
    next_request_succeeds(app)


def test_router_killed_mid_burst(app):
    """(tests/integration/test_deployments_faults.py's router case.) Waiting requests are enqueued
    again at the restarted router, running ones finish; every request completes."""
    before = settle(app)

    async def kill_router(b: Burst):
        import ray

        await until(lambda: (s := app.snapshot()) and s["num_queued"] >= 4, 30, "a queue at the router")
        await asyncio.to_thread(ray.kill, app.router(), no_restart=False)

    results, _, _ = case(app, "router actor killed", burst(), kill_router)
    assert all(r.outcome == "ok" for r in results)
    after = settle(app)  # both replicas re-registered with the new router
    assert after["started_at"] > before["started_at"]
    next_request_succeeds(app)


# ---- an ingress replica hung or killed (an app of its own: two ingress replicas) -----------------
@pytest.fixture(scope="module")
def ingress_app(deploy_module):
    return deploy_module(matrix_config("matrix-ingress", router={"lease_s": 4.0}, ingress={"num_replicas": 2}))


async def _busier_ingress(app) -> dict:
    """The ingress replica that holds more requests now (Serve's own count), with its pid."""
    import ray

    ingresses = await asyncio.to_thread(serve_actors, app.name, "ingress")
    for a in ingresses:
        actor = ray.get_actor(a["name"], namespace="serve")
        a["ongoing"] = await asyncio.to_thread(ray.get, actor.get_num_ongoing_requests.remote(), timeout=10)
    return max(ingresses, key=lambda a: a["ongoing"])


def _burst_at_the_router(app, before: dict, reqs: list[Req]):
    """Every request has reached the router (so an ingress replica holds it), and some wait there."""
    return lambda: ((s := app.snapshot()) and s["num_queued"] >= 4
                    and delta(s, before, "enqueued") + delta(s, before, "rejected") >= len(reqs))


def test_ingress_replica_hung_past_the_router_lease(ingress_app):
    """An ingress replica stopped (SIGSTOP) for longer than router.lease_s: the router drops it as a
    client (what it waited for is withdrawn, its unpolled answers fail). When it resumes, its requests
    must not wait forever for answers that will never come: it enqueues them again."""
    app = ingress_app
    before = settle(app)
    reqs = burst(18)
    stopped = {}

    async def hang_an_ingress(b: Burst):
        await until(_burst_at_the_router(app, before, reqs), 30, "the burst at the router")
        victim = await _busier_ingress(app)
        assert victim["ongoing"] >= 1, victim
        os.kill(victim["pid"], signal.SIGSTOP)
        stopped.update(victim)
        try:
            # Wait for the drop itself (what it waited for is withdrawn), not for num_clients to fall:
            # an idle ingress stops polling and the router forgets it after lease_s too, so the count
            # may already be 1 before the stop (CI, stop 18).
            await until(lambda: delta(app.snapshot(), before, "withdrawn") >= 1, 30,
                        "the router to drop the stopped ingress")
        finally:
            os.kill(victim["pid"], signal.SIGCONT)

    try:
        results, _, row = case(app, "ingress replica hung past router.lease_s", reqs, hang_an_ingress)
    finally:
        if stopped and alive(stopped["pid"]):
            os.kill(stopped["pid"], signal.SIGCONT)
    # Its running requests may have seen their own pause as a deadline (504); nothing else fails.
    assert {r.code for r in results if r.outcome in ("error", "sse_error")} <= {"token_timeout", "queue_full"}, row
    after = settle(app)
    # The router had dropped the stopped client with requests waiting (withdrawn); they were submitted
    # again on its return (router.actor.BatchedEnqueuer) and answered: none is left hanging.
    assert delta(after, before, "withdrawn") >= 1, after["counters"]
    next_request_succeeds(app)


def test_ingress_replica_killed_mid_burst(ingress_app):
    """Serve's HTTP proxy answers the requests the dead ingress replica held: a plain 500 (Serve's,
    not ours: no OpenAI body), or a stream cut off without its last chunk (the client's HTTP library
    raises): reported to the caller, never a stream that ends as if complete. The other replica's
    requests complete, and the router frees what the dead one held (its batching client's lease,
    router.lease_s)."""
    app = ingress_app
    before = settle(app)
    held = {}
    reqs = burst(18)

    async def kill_the_busier_ingress(b: Burst):
        await until(_burst_at_the_router(app, before, reqs), 30, "the burst at the router")
        victim = await _busier_ingress(app)
        await asyncio.to_thread(kill_actor, victim["name"])
        held.update(victim)

    results, _, row = case(app, "ingress replica killed", reqs, kill_the_busier_ingress,
                           allowed=("ok", "error", "sse_error", "proxy_5xx", "transport"))
    print(f"[fault-matrix] the killed ingress replica held {held['ongoing']} request(s)")
    failed = row["proxy_5xx"] + row["transport"]
    assert 1 <= failed <= held["ongoing"], (row, held)  # only its own requests, and it had some
    assert row["ok"] >= 1, row  # the other replica's
    assert all(r.status == 500 for r in results if r.outcome == "proxy_5xx")
    settle(app, timeout=60)
    next_request_succeeds(app)
