"""A router actor that hangs without dying (SIGSTOP) hangs no caller, and comes back: callers get
RouterUnresponsive (and retry), a client kills the actor after ``hung_kill_s``, Ray restarts it,
and the replica's next heartbeat hands the new router the run that went on meanwhile. Ray only
(no Serve): the actor, a RouterClient and a fake replica that heartbeats like deployments/llm.py."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _pid_of(name: str) -> int:
    # Ray's own state table (the public state API needs the dashboard, which the tests do not start).
    from ray._private import state

    for actor in state.actors().values():
        if actor["Name"] == name and actor["State"] == "ALIVE":
            return actor["Pid"]
    raise LookupError(f"no live actor named {name!r}")


def test_a_stopped_router_fails_callers_fast_then_is_restarted_and_adopts_the_runs(ray_session):
    import ray

    from router.actor import BatchedEnqueuer, RouterClient, RouterUnresponsive
    from router.messages import Dispatched, Running
    from router.request import RequestMeta

    name = f"router-hang-{uuid.uuid4().hex[:8]}"
    client = RouterClient(name, "ssjf-tests", {"batching": "continuous", "max_batch": 2}, hung_kill_s=6.0)
    replica = RouterClient(name, "ssjf-tests", {"batching": "continuous", "max_batch": 2})
    runs: list[Running] = []

    def meta(rid: str) -> RequestMeta:
        return RequestMeta(rid, "m", 10, 5.0, 100, time.time())

    async def heartbeats():  # the replica, as deployments/llm.py: every beat lists its runs
        while True:
            try:
                await asyncio.wait_for(replica.handle.heartbeat.remote("r1", 2, list(runs)), 2.0)
            except Exception:
                replica.reset()
            await asyncio.sleep(0.3)

    async def main():
        started_at = await client.handle.ping.remote()
        beating = asyncio.create_task(heartbeats())
        enq = BatchedEnqueuer(client, call_timeout_s=2.0, ping_interval_s=0.5)
        first = await asyncio.wait_for(enq.enqueue(meta("a")), 30)
        assert isinstance(first, Dispatched)
        runs.append(Running(meta("a"), first.attempt))  # "a" runs on r1 all along
        pid = _pid_of(name)
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(RouterUnresponsive):
                await asyncio.wait_for(enq.enqueue(meta("b")), 60)  # not a hang: an error to retry
            # The ingress's retry loop: enqueue again until the router answers (its restart).
            answer, deadline = None, time.monotonic() + 150
            while answer is None:
                try:
                    answer = await asyncio.wait_for(enq.enqueue(meta("b")), 60)
                except Exception as e:
                    assert RouterClient.is_router_failure(e), e
                    assert time.monotonic() < deadline, "the router never came back"
                    client.reset()
                    await asyncio.sleep(0.2)
        finally:
            if _alive(pid):  # not killed after all: let it go on
                os.kill(pid, signal.SIGCONT)
        assert isinstance(answer, Dispatched) and answer.attempt > first.attempt
        snap = await client.handle.snapshot.remote()
        beating.cancel()
        return started_at, snap

    try:
        started_at, snap = asyncio.run(main())
    finally:
        ray.kill(client.handle, no_restart=True)
    assert snap["started_at"] != started_at  # a new incarnation
    counters = snap["counters"]
    # It adopted "a" from the heartbeat (so r1 holds both runs) and dispatched "b".
    assert (counters["adopted"], counters["dispatched"], snap["num_running"]) == (1, 1, 2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
