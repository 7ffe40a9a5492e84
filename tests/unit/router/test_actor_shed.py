"""The router actor's shed path (``slo`` policy, ``slo_infeasible='shed'``): a request the scheduler
rejects is answered :class:`Shed` wherever its caller waits (a direct ``enqueue``, a batching client's
poll), counted once as ``shed``, and the queue identity holds with it; a caller that asks again for a
shed request hears Shed again instead of queueing it anew."""

import asyncio

from router.actor import BatchedEnqueuer
from router.messages import Dispatched, Shed
from router.request import RequestMeta
from tests.factories import FakeClock, create_service

NOW = 1000.0
# Predicted service = first token 0.1 s + predicted tokens x 0.02 s (the knobs' defaults, stated here).
SLO = dict(policy="slo", slo_infeasible="shed", slo_seconds_per_token=0.02, slo_first_token_s=0.1, slo_guard_s=0.0)


def meta(rid: str, predicted: float = 50.0, arrival: float = NOW, jct: float | None = None,
         ttft: float | None = None) -> RequestMeta:
    return RequestMeta(rid, "m", 10, predicted, 4096, arrival, slo_ttft_s=ttft, slo_jct_s=jct)


async def answer(call):
    """An enqueue's answer, or a failure (not a hung test) if none comes."""
    return await asyncio.wait_for(call, 1.0)


def service(clock: FakeClock, **config):
    svc = create_service(clock, **{**SLO, **config})
    svc.heartbeat("A", 1, [])
    return svc


def balanced(svc) -> None:
    c, snap = svc.counters, svc.snapshot()
    runs = c["completed"] + c["cancelled"] + c["failed"] + c["requeued"] + c["preempted"] + snap["num_running"]
    assert c["dispatched"] + c["adopted"] == runs, c
    assert c["enqueued"] + c["preempted"] == c["dispatched"] + c["withdrawn"] + c["shed"] + snap["num_queued"], c


def test_an_impossible_slo_is_answered_shed_on_arrival():
    async def go():
        clock = FakeClock(NOW)
        svc = service(clock)
        # 50 predicted tokens take 1.1 s: a 0.5 s JCT objective cannot be met even on a free replica.
        assert await answer(svc.enqueue(meta("late", jct=0.5))) == Shed("slo_unattainable")
        ok = await answer(svc.enqueue(meta("fine", jct=30.0)))
        assert isinstance(ok, Dispatched)
        snap = svc.snapshot()
        assert svc.counters["shed"] == 1 and svc.counters["enqueued"] == 2
        assert (snap["num_queued"], snap["num_waiters"]) == (0, 0)
        balanced(svc)
        # The same request asked again (a retry): the same answer, not a new place in the queue.
        assert await answer(svc.enqueue(meta("late", jct=0.5))) == Shed("slo_unattainable")
        assert svc.counters["enqueued"] == 2 and svc.counters["shed"] == 1
        balanced(svc)

    asyncio.run(go())


def test_a_waiting_request_whose_slo_runs_out_is_shed_to_its_waiter():
    async def go():
        clock = FakeClock(NOW)
        svc = service(clock)
        # "long" holds the one slot.
        assert isinstance(await answer(svc.enqueue(meta("long", predicted=1000.0))), Dispatched)
        waiting = asyncio.ensure_future(svc.enqueue(meta("short", predicted=10.0, jct=5.0)))  # 0.3 s of service
        await asyncio.sleep(0)
        assert not waiting.done() and svc.snapshot()["num_queued"] == 1
        balanced(svc)
        clock.advance(4.8)  # past its latest start (5 - 0.3 s after arrival)
        svc.sweep()  # no other decision comes: the sweep sheds it
        assert await asyncio.wait_for(waiting, 1.0) == Shed("slo_unattainable")
        assert svc.counters["shed"] == 1 and svc.snapshot()["num_queued"] == 0
        balanced(svc)
        svc.complete("long", 1000, svc.scheduler.requests["long"].attempt)
        balanced(svc)
        assert svc.snapshot()["num_running"] == 0

    asyncio.run(go())


def test_a_batching_client_polls_the_shed_answer():
    async def go():
        clock = FakeClock(NOW)
        svc = service(clock)
        svc.submit("ing", [meta("late", jct=0.2), meta("fine", jct=60.0)])
        answers = {p.request_id: p.answer for p in await svc.poll("ing", timeout_s=0)}
        assert answers["late"] == Shed("slo_unattainable") and isinstance(answers["fine"], Dispatched)
        # Resubmitted (the client missed a poll): Shed again, nothing queued anew.
        svc.submit("ing", [meta("late", jct=0.2)])
        assert [p.answer for p in await svc.poll("ing", timeout_s=0)] == [Shed("slo_unattainable")]
        assert svc.counters["shed"] == 1 and svc.counters["enqueued"] == 2
        balanced(svc)

    asyncio.run(go())


def test_other_policies_and_defer_mode_never_shed():
    async def go():
        for config in (dict(policy="ssjf"), dict(slo_infeasible="defer")):
            svc = service(FakeClock(NOW), **config)
            assert isinstance(await answer(svc.enqueue(meta("late", jct=0.01))), Dispatched)
            svc.sweep()
            assert svc.counters["shed"] == 0
            balanced(svc)

    asyncio.run(go())


class _Handle:
    """What a BatchedEnqueuer calls: the methods of a router actor, on a RouterService in this loop."""

    def __init__(self, svc):
        self.svc = svc

        class Call:
            def __init__(self, fn):
                self.fn = fn

            def remote(self, *args):
                result = self.fn(*args)
                if asyncio.iscoroutine(result):
                    return asyncio.ensure_future(result)
                fut = asyncio.get_running_loop().create_future()
                fut.set_result(result)
                return fut

        self.enqueue = Call(svc.enqueue)
        self.requeue = Call(svc.requeue)
        self.submit = Call(svc.submit)
        self.poll = Call(svc.poll)
        self.report = Call(svc.report)
        self.ping = Call(lambda: svc.started_at)


class _Client:
    def __init__(self, svc):
        self.handle = _Handle(svc)
        self.name = "router"

    def clock(self):
        return 0.0

    def reset(self):
        pass

    def answered(self):
        pass


def test_the_ingress_enqueuer_hands_shed_to_direct_and_batched_callers():
    """BatchedEnqueuer: alone, a request takes the direct call; with others in flight it is batched and
    its answer comes back through poll. Both deliver Shed to the caller as its answer."""
    async def go():
        clock = FakeClock(NOW)
        svc = service(clock)
        enq = BatchedEnqueuer(_Client(svc), poll_timeout_s=0.05, ping_interval_s=60.0)
        assert await answer(enq.enqueue(meta("direct", jct=0.1))) == Shed("slo_unattainable")
        first = asyncio.ensure_future(enq.enqueue(meta("hold", predicted=1000.0)))  # dispatched: the slot
        assert isinstance(await asyncio.wait_for(first, 1.0), Dispatched)
        queued = asyncio.ensure_future(enq.enqueue(meta("wait", predicted=10.0)))  # no SLO: waits
        await asyncio.sleep(0.01)
        shed = asyncio.ensure_future(enq.enqueue(meta("batched", jct=0.1)))  # batched: another is in flight
        assert await asyncio.wait_for(shed, 2.0) == Shed("slo_unattainable")
        assert not queued.done()
        svc.complete("hold", 1000, svc.scheduler.requests["hold"].attempt)
        assert isinstance(await asyncio.wait_for(queued, 2.0), Dispatched)
        assert svc.counters["shed"] == 2
        balanced(svc)
        for t in enq._tasks + [enq._watchdog]:
            if t is not None:
                t.cancel()

    asyncio.run(go())
