"""Scheduling on a live cluster (replay engine, marker predictions the test controls):
- ordering: 1 replica, 1 slot, a queued burst completes shortest-predicted-first under ``ssjf``
  and in arrival order under ``fcfs``;
- balance: ``least-work`` over 2 replicas spreads predicted work, and no replica idles while
  another has a queue;
- the queue cap answers 429 with Retry-After; a client that disconnects frees its slot."""

import asyncio
import threading

import httpx
import pytest

pytestmark = pytest.mark.integration

MODEL = "replay-model"
BIG = 900_000  # a "blocker" that would run for hours: the test cancels it by disconnecting


def completion(prompt: str, tokens: int, **extra) -> dict:
    return {"model": MODEL, "prompt": prompt, "max_tokens": max(tokens, 1), "replay_output_tokens": tokens, **extra}


async def until(predicate, timeout=60.0, what="condition"):
    """Poll a blocking predicate (Ray calls) off the event loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(predicate):
        if loop.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def hold(response: httpx.Response) -> asyncio.Task:
    """Keep reading a stream in the background; return once its first data line arrived.
    (Breaking out of ``aiter_lines`` would close the response: a disconnect.)"""
    started = asyncio.Event()

    async def drain():
        try:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    started.set()
        except (httpx.HTTPError, httpx.StreamError):
            pass  # the test closed it
        finally:
            started.set()

    task = asyncio.create_task(drain())
    await started.wait()
    assert not task.done(), "the stream ended at once"
    return task


@pytest.mark.parametrize("policy", ["ssjf", "fcfs"])
def test_queued_burst_completes_in_policy_order(deploy, replay_config, policy):
    app = deploy(replay_config(f"order-{policy}", router={"policy": policy},
                               llm={"num_replicas": 1, "batching": "none", "time_scale": 0.5,
                                    "context_length": 1_000_000}))
    predictions = [50, 5, 20, 40, 10, 30]
    finished: list[int] = []

    async def job(client, i, p):
        r = await client.post("/v1/completions", json=completion(f"job {i} [[predict:{p}]]", p))
        finished.append(p)
        return r

    async def main():
        async with httpx.AsyncClient(base_url=app.url, timeout=120) as client:
            async with client.stream("POST", "/v1/completions",
                                     json=completion("blocker [[predict:1]]", BIG, stream=True)) as blocker:
                reader = await hold(blocker)  # the blocker holds the only slot
                jobs = []
                for i, p in enumerate(predictions):  # one by one: arrival order is the send order
                    jobs.append(asyncio.create_task(job(client, i, p)))
                    await until(lambda n=i + 1: app.snapshot()["num_queued"] == n, what=f"{i + 1} queued")
            # Leaving the block disconnects the blocker: its slot frees and the queue drains.
            await reader
            return await asyncio.gather(*jobs)

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * len(predictions)
    assert [r.json()["usage"]["completion_tokens"] for r in responses] == predictions
    expected = sorted(predictions) if policy == "ssjf" else predictions
    assert finished == expected
    snap = app.snapshot(dispatch_log=True)
    dispatched = [predicted for _, _, _, predicted in snap["dispatch_log"]][1:]  # [0] is the blocker
    assert dispatched == expected
    assert snap["counters"]["cancelled"] == 1  # the disconnected blocker


def test_least_work_spreads_work_and_no_replica_idles_while_another_queues(deploy, replay_config):
    app = deploy(replay_config("balance", router={"policy": "ssjf", "balancer": "least-work"},
                               llm={"num_replicas": 2, "batching": "none", "time_scale": 0.25}))
    predictions = [80, 10, 60, 20, 40, 5, 70, 30, 15, 50, 25, 90, 35, 45, 55, 65]
    snapshots = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            snapshots.append(app.snapshot())

    async def main():
        async with httpx.AsyncClient(base_url=app.url, timeout=120) as client:
            return await asyncio.gather(*[
                client.post("/v1/completions", json=completion(f"job {i} [[predict:{p}]]", p))
                for i, p in enumerate(predictions)])

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        responses = asyncio.run(main())
    finally:
        stop.set()
        sampler.join()
    assert [r.status_code for r in responses] == [200] * len(predictions)
    busy = [s for s in snapshots if s["num_queued"]]
    assert busy, "the burst never queued: nothing to balance"
    for snap in snapshots:
        idle = [r["replica_id"] for r in snap["replicas"] if r["num_running"] < r["num_slots"]]
        assert not (idle and snap["num_queued"]), f"{idle} idle while {snap['num_queued']} wait: {snap}"
    log = app.snapshot(dispatch_log=True)["dispatch_log"]
    # Where each request finally ran: a call that bounced (a replica this ingress did not list yet)
    # is dispatched again, and only its last dispatch did the work.
    ran_on = {request_id: (replica, predicted) for request_id, replica, _, predicted in log}
    assert len(ran_on) == len(predictions)
    work: dict[str, float] = {}
    for replica, predicted in ran_on.values():
        work[replica] = work.get(replica, 0.0) + predicted
    assert len(work) == 2
    total = sum(predictions)
    assert all(0.3 * total <= w <= 0.7 * total for w in work.values()), work
    metrics = httpx.get(f"{app.url}/metrics").text
    assert 'ssjf_retries_total{reason="misrouted"}' not in metrics  # every pinned call landed


def test_queue_cap_answers_429_with_retry_after(deploy, replay_config):
    app = deploy(replay_config("qcap", router={"max_queued": 2, "retry_after_s": 3},
                               llm={"num_replicas": 1, "batching": "none", "time_scale": 0.5,
                                    "context_length": 1_000_000}))

    async def main():
        async with httpx.AsyncClient(base_url=app.url, timeout=120) as client:
            async with client.stream("POST", "/v1/completions",
                                     json=completion("blocker", BIG, stream=True)) as blocker:
                reader = await hold(blocker)
                jobs = [asyncio.create_task(client.post("/v1/completions", json=completion(f"job {i}", 5)))
                        for i in range(5)]
                await until(lambda: app.snapshot()["counters"]["rejected"] == 3, what="3 rejections")
                assert app.snapshot()["num_queued"] == 2
            await reader
            return await asyncio.gather(*jobs)

    responses = asyncio.run(main())
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 200, 429, 429, 429]
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "3"
            assert r.json()["error"]["code"] == "queue_full"
    snap = app.snapshot()
    assert snap["num_queued"] == 0 and snap["num_running"] == 0  # the blocker's disconnect freed its slot
