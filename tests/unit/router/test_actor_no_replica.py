"""When every LLM replica is gone (their nodes lost), the router answers NoReplica (the ingress's
503 with Retry-After) instead of queueing requests behind nothing. RouterService, no Ray."""

import asyncio
from unittest.mock import ANY

from router.actor import RouterService
from router.config import SchedulerConfig
from router.messages import Dispatched, NoReplica, Running
from tests.factories import FakeClock, create_meta


def on(replica_id: str) -> Dispatched:
    """A dispatch to ``replica_id`` under any attempt (attempt ids are checked where they matter)."""
    return Dispatched(replica_id, None, ANY)


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


async def test_requests_wait_for_the_first_replica_within_the_grace():
    clock = FakeClock(1000.0)
    svc = RouterService(SchedulerConfig(), clock=clock, replica_timeout_s=5.0)
    task = asyncio.create_task(svc.enqueue(create_meta("a", arrival=1.0, max_tokens=100)))
    clock.now += 4.0
    svc.sweep()
    await settle()
    assert not task.done()  # a replica may still be starting: keep waiting
    svc.heartbeat("r1", 1)
    assert await task == on("r1")


async def test_all_replicas_lost_waiting_requests_and_new_ones_get_no_replica():
    clock = FakeClock(1000.0)
    svc = RouterService(SchedulerConfig(), clock=clock, replica_timeout_s=5.0, retry_after_s=2.0)
    svc.heartbeat("r1", 1)
    assert await svc.enqueue(create_meta("a", arrival=1.0, max_tokens=100)) == on("r1")
    waiting = asyncio.create_task(svc.enqueue(create_meta("b", arrival=1.0, max_tokens=100)))  # queued behind "a"
    await settle()
    clock.now += 6.0  # r1's node is gone: no heartbeat
    svc.sweep()  # drops r1 (silent > 5 s); nothing left for > 5 s
    await settle()
    assert waiting.done() and waiting.result() == NoReplica(2.0)
    assert await svc.enqueue(create_meta("c", arrival=1.0, max_tokens=100)) == NoReplica(2.0)  # at once, not a hang
    assert svc.snapshot()["num_queued"] == 0
    # A replica comes back (Serve restarted it, or the autoscaler added a node): serving resumes.
    svc.heartbeat("r2", 1)
    assert await svc.enqueue(create_meta("d", arrival=1.0, max_tokens=100)) == on("r2")


async def test_a_live_replica_keeps_requests_queued_however_long():
    clock = FakeClock(1000.0)
    svc = RouterService(SchedulerConfig(), clock=clock, replica_timeout_s=5.0)
    svc.heartbeat("r1", 1)
    meta = create_meta("a", arrival=1.0, max_tokens=100)
    run = await svc.enqueue(meta)
    waiting = asyncio.create_task(svc.enqueue(create_meta("b", arrival=1.0, max_tokens=100)))
    for _ in range(5):
        clock.now += 3.0
        svc.heartbeat("r1", 1, [Running(meta, run.attempt)])
        svc.sweep()
    await settle()
    assert not waiting.done()
    svc.complete("a", 5)
    assert await waiting == on("r1")
