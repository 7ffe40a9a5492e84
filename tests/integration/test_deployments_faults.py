"""Faults mid-burst on a live cluster (replay engine): kill an LLM replica, kill the router actor.
Every request either completes or gets an error response; none is lost or hangs (counted)."""

import asyncio
import json

import httpx
import pytest
import ray

pytestmark = pytest.mark.integration

MODEL = "replay-model"
TOKENS = 60
N = 16


async def one(client: httpx.AsyncClient, i: int) -> dict:
    """Send request ``i`` (odd ones stream) and classify what came back."""
    body = {"model": MODEL, "prompt": f"job {i} [[predict:{TOKENS}]]", "max_tokens": TOKENS,
            "replay_output_tokens": TOKENS, "stream": i % 2 == 1}
    if not body["stream"]:
        r = await client.post("/v1/completions", json=body)
        if r.status_code == 200:
            return {"i": i, "outcome": "ok", "tokens": r.json()["usage"]["completion_tokens"], "stream": False}
        return {"i": i, "outcome": "error", "status": r.status_code, "stream": False, "body": r.json()}
    tokens, text, done, error = 0, "", False, None
    async with client.stream("POST", "/v1/completions", json={**body, "stream_options": {"include_usage": True}}) as r:
        if r.status_code != 200:
            return {"i": i, "outcome": "error", "status": r.status_code, "stream": True}
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                continue
            event = json.loads(data)
            if "error" in event:
                error = event["error"]
            elif event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            elif event["choices"]:
                text += event["choices"][0]["text"]
    if error is not None:
        return {"i": i, "outcome": "error", "status": 200, "stream": True, "error": error, "done": done}
    return {"i": i, "outcome": "ok" if done else "truncated", "tokens": tokens, "words": len(text.split()),
            "stream": True}


async def burst_with_fault(app, fault, ready) -> list[dict]:
    async with httpx.AsyncClient(base_url=app.url, timeout=httpx.Timeout(120)) as client:
        tasks = [asyncio.create_task(one(client, i)) for i in range(N)]
        deadline = asyncio.get_running_loop().time() + 60
        while not await asyncio.to_thread(lambda: ready(app.snapshot())):
            assert asyncio.get_running_loop().time() < deadline, "the burst never reached the fault point"
            await asyncio.sleep(0.02)
        await asyncio.to_thread(fault)
        # A hang fails here: every request must come back well within the client timeout.
        return await asyncio.wait_for(asyncio.gather(*tasks), timeout=150)


def check_accounted(results: list[dict]) -> tuple[list[dict], list[dict]]:
    assert len(results) == N and sorted(r["i"] for r in results) == list(range(N))
    ok = [r for r in results if r["outcome"] == "ok"]
    errors = [r for r in results if r["outcome"] == "error"]
    assert len(ok) + len(errors) == N, [r for r in results if r["outcome"] not in ("ok", "error")]
    for r in ok:
        assert r["tokens"] == TOKENS, r
    return ok, errors


def replica_actor(app_name: str, replica_id: str):
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["name"].endswith(f"{app_name}#llm#{replica_id}"):
            return ray.get_actor(entry["name"], namespace=entry["namespace"])
    raise LookupError(f"no actor for replica {replica_id}")


def test_killing_an_llm_replica_mid_burst_loses_nothing(deploy, replay_config):
    app = deploy(replay_config("fault-replica", llm={"num_replicas": 2, "batching": "continuous", "max_batch": 2,
                                                     "time_scale": 0.5}, ingress={"max_retries": 3}))
    victim = {}

    def ready(snap):
        busy = [r for r in snap["replicas"] if r["num_running"] > 0]
        if snap["num_queued"] >= 4 and busy:
            victim["id"] = busy[0]["replica_id"]
            return True
        return False

    results = asyncio.run(burst_with_fault(
        app, lambda: ray.kill(replica_actor(app.name, victim["id"]), no_restart=True), ready))
    ok, errors = check_accounted(results)
    # Non-streaming clients have seen nothing yet: their requests are retried and complete.
    assert all(r["outcome"] == "ok" for r in results if not r["stream"]), errors
    # A stream that had started on the dead replica ends with an error event, never silently.
    for r in errors:
        assert r["stream"] and r["error"]["code"] == "replica_failed" and r["done"], r
    snap = app.snapshot()
    assert victim["id"] not in [r["replica_id"] for r in snap["replicas"]]
    # A run the kill cut ends once: "failed" when the caller's replica report removed it first,
    # "requeued" when its re-enqueue came first (router.actor's accounting).
    c = snap["counters"]
    assert c["requeued"] + c["failed"] + len(errors) >= 1, "the kill hit no request"
    assert snap["num_queued"] == 0


def test_killing_the_router_mid_burst_loses_nothing(deploy, replay_config, wait):
    app = deploy(replay_config("fault-router", llm={"num_replicas": 2, "batching": "continuous", "max_batch": 2,
                                                    "time_scale": 0.5}))
    before = app.snapshot()

    results = asyncio.run(burst_with_fault(
        app, lambda: ray.kill(app.router(), no_restart=False), lambda snap: snap["num_queued"] >= 4))
    ok, errors = check_accounted(results)
    # Waiting requests were enqueued again at the restarted router; running ones finished.
    assert len(ok) == N, errors
    after = wait(lambda: (s := app.snapshot()) and len(s["replicas"]) == 2 and s, timeout=30,
                 what="replicas to re-register with the restarted router")
    assert after["started_at"] > before["started_at"]  # a new router instance
    assert after["num_queued"] == 0
