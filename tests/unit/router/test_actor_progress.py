"""RouterService.progress (srpt on the live path): a replica reports a run's progress with its
re-predicted remaining length; the answer says whether the run is preempted. The preempted request
waits again (its ingress asks again and joins that place), the candidate is dispatched into the slot,
and the counters keep their identities with ``preempted`` on the run-end side."""

import asyncio
import math

from router.messages import Dispatched, Report, Running
from router.request import RequestStatus
from tests.factories import FakeClock, create_meta, create_service

SRPT = dict(policy="srpt", batching="none", preempt_margin=2.0, max_preemptions=1,
            preempt_min_remaining_tokens=16, srpt_aging_threshold_s=math.inf)


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


def balanced(svc) -> bool:
    c, snap = svc.counters, svc.snapshot()
    runs = c["completed"] + c["cancelled"] + c["failed"] + c["requeued"] + c["preempted"] + snap["num_running"]
    queue = c["dispatched"] + c["withdrawn"] + snap["num_queued"]
    return c["dispatched"] + c["adopted"] == runs and c["enqueued"] + c["preempted"] == queue


async def long_running_and_short_waiting(clock=None):
    svc = create_service(clock or FakeClock(1000.0), **SRPT)
    svc.heartbeat("r1", 1)
    long = await svc.enqueue(create_meta("long", 1000, 999.0))
    short = asyncio.create_task(svc.enqueue(create_meta("short", 20, 999.5)))
    await settle()
    assert not short.done()
    return svc, long, short


async def test_a_preempted_run_answers_true_and_its_slot_goes_to_the_shorter_waiting_request():
    svc, long, short = await long_running_and_short_waiting()
    assert svc.progress("long", long.attempt, 32, 900.0) is True
    got = await short
    assert isinstance(got, Dispatched) and got.replica_id == "r1" and got.attempt != long.attempt
    state = svc.scheduler.requests["long"]
    assert state.status is RequestStatus.QUEUED and state.tokens_done == 32 and state.num_preemptions == 1
    c = svc.counters
    assert (c["preempted"], c["dispatched"], c["progress_reports"]) == (1, 2, 1)
    assert balanced(svc)
    # The ingress asks again for the preempted request: it waits in its new place, and resumes on the
    # slot the short one frees, under a new attempt.
    again = asyncio.create_task(svc.enqueue(create_meta("long", 1000, 999.0)))
    await settle()
    assert not again.done()
    svc.complete("short", 20, attempt=got.attempt)
    resumed = await again
    assert resumed.replica_id == "r1" and resumed.attempt not in (long.attempt, got.attempt)
    svc.complete("long", 1000, attempt=resumed.attempt)
    snap = svc.snapshot()
    assert (snap["num_queued"], snap["num_running"], snap["num_waiters"]) == (0, 0, 0)
    assert svc.counters["completed"] == 2 and balanced(svc)


async def test_a_dispatch_before_the_ingress_asks_again_waits_for_it():
    """The slot frees before the ingress's new enqueue arrives: the resumed dispatch is kept for it
    (a direct call joins the running state; a batching client gets it in its outbox)."""
    svc, long, short = await long_running_and_short_waiting()
    assert svc.progress("long", long.attempt, 32, 900.0)
    got = await short
    svc.complete("short", 20, attempt=got.attempt)  # the long one is dispatched again at once
    assert svc.scheduler.requests["long"].status is RequestStatus.RUNNING
    resumed = await svc.enqueue(create_meta("long", 1000, 999.0))
    assert resumed == Dispatched("r1", None, svc.scheduler.requests["long"].attempt)
    svc.submit("client", [create_meta("long", 1000, 999.0)])  # the same through a batching client
    assert [p.answer for p in await svc.poll("client", 0)] == [resumed]
    svc.complete("long", 1000, attempt=resumed.attempt)
    snap = svc.snapshot()
    assert (snap["num_queued"], snap["num_running"], snap["num_waiters"]) == (0, 0, 0) and balanced(svc)


async def test_no_preemption_answers_false_and_changes_nothing_but_the_prediction():
    svc, long, short = await long_running_and_short_waiting()
    assert svc.progress("long", long.attempt, 32, 30.0) is False  # 30 < 2 x 20: not shorter by the margin
    assert svc.scheduler.requests["long"].predicted_remaining == 30.0
    assert svc.progress("long", long.attempt + 99, 64, 900.0) is False  # a stale attempt
    assert svc.progress("nobody", 1, 64, 900.0) is False
    assert not short.done() and svc.counters["preempted"] == 0 and balanced(svc)


async def test_other_policies_never_preempt():
    svc = create_service(FakeClock(1000.0), policy="ssjf", batching="none")
    svc.heartbeat("r1", 1)
    long = await svc.enqueue(create_meta("long", 1000, 999.0))
    short = asyncio.create_task(svc.enqueue(create_meta("short", 1, 999.5)))
    await settle()
    assert svc.progress("long", long.attempt, 32, 900.0) is False
    assert not short.done()
    svc.complete("long", attempt=long.attempt)
    await short


async def test_a_completion_that_raced_its_preemption_finishes_the_request():
    """The replica never got the answer (its call timed out) and completed the run: the request
    leaves the queue it waits in again, counted once (withdrawn, preempt_races)."""
    svc, long, short = await long_running_and_short_waiting()
    assert svc.progress("long", long.attempt, 32, 900.0)
    got = await short
    svc.report([Report.complete("long", 1000, attempt=long.attempt)])
    assert "long" not in svc.scheduler.requests
    c = svc.counters
    assert (c["preempt_races"], c["withdrawn"], c["stale_reports"]) == (1, 1, 0)
    svc.complete("short", 20, attempt=got.attempt)
    snap = svc.snapshot()
    assert (snap["num_queued"], snap["num_running"], snap["num_waiters"]) == (0, 0, 0) and balanced(svc)


async def test_a_heartbeat_still_listing_the_preempted_run_does_not_adopt_it():
    svc, long, short = await long_running_and_short_waiting()
    meta = create_meta("long", 1000, 999.0)
    assert svc.progress("long", long.attempt, 32, 900.0)
    got = await short
    svc.heartbeat("r1", 1, [Running(meta, long.attempt), Running(create_meta("short", 20, 999.5), got.attempt)])
    assert svc.counters["adopted"] == 0
    assert svc.scheduler.requests["long"].status is RequestStatus.QUEUED


async def test_the_ingress_leaving_while_preempted_withdraws_the_request():
    svc, long, short = await long_running_and_short_waiting()
    assert svc.progress("long", long.attempt, 32, 900.0)
    got = await short
    svc.report([Report.cancel("long")])  # the client went away while it waited again
    svc.complete("short", 20, attempt=got.attempt)
    snap = svc.snapshot()
    assert (snap["num_queued"], snap["num_running"], snap["num_waiters"]) == (0, 0, 0)
    assert svc.counters["withdrawn"] == 1 and balanced(svc)
