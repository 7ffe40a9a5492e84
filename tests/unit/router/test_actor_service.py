"""RouterService: the actor's logic without Ray. enqueue answers when the policy dispatches."""

import asyncio
from unittest.mock import ANY

import pytest

from router.actor import BatchedEnqueuer, Reporter, RouterClient, RouterUnresponsive
from router.messages import Cancelled, Dispatched, DispatchRecord, Polled, QueueFull, Report, Running
from router.request import RequestStatus
from tests.factories import FakeClock, create_meta, create_service


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


def by_id(polled: list[Polled]) -> dict:
    return {p.request_id: p.answer for p in polled}


def on(replica_id: str) -> Dispatched:
    """A dispatch to ``replica_id`` under any attempt (attempt ids are checked where they matter)."""
    return Dispatched(replica_id, None, ANY)


async def test_enqueue_waits_for_dispatch_and_ssjf_orders_the_queue():
    svc = create_service(policy="ssjf")
    svc.heartbeat("r1", 1)
    first = asyncio.create_task(svc.enqueue(create_meta("a", 50, 1)))
    assert await first == on("r1")  # a free slot: dispatched at once
    waiting = {rid: asyncio.create_task(svc.enqueue(create_meta(rid, p, t)))
               for rid, p, t in [("b", 50, 2), ("c", 5, 3), ("d", 20, 4)]}
    await settle()
    assert not any(t.done() for t in waiting.values())
    order = []
    running = "a"
    for _ in range(3):
        svc.complete(running, 10)
        await settle()
        done = [rid for rid, t in waiting.items() if t.done() and rid not in order]
        assert len(done) == 1
        order.append(done[0])
        running = done[0]
    assert order == ["c", "d", "b"]
    assert svc.snapshot()["counters"]["dispatched"] == 4


async def test_fcfs_keeps_arrival_order():
    svc = create_service(policy="fcfs")
    svc.heartbeat("r1", 1)
    await svc.enqueue(create_meta("a", 1, 1))
    tasks = {rid: asyncio.create_task(svc.enqueue(create_meta(rid, p, t))) for rid, p, t in [("b", 50, 2), ("c", 5, 3)]}
    await settle()
    svc.complete("a")
    await settle()
    assert tasks["b"].done() and not tasks["c"].done()
    svc.complete("b")
    assert await tasks["c"] == on("r1")


async def test_requests_wait_for_a_replica_to_register():
    svc = create_service()
    task = asyncio.create_task(svc.enqueue(create_meta("a", 5, 1)))
    await settle()
    assert not task.done() and svc.snapshot()["num_shared_queued"] == 1
    svc.heartbeat("r9", 2)
    assert await task == on("r9")


async def test_queue_cap_answers_full_with_retry_after():
    svc = create_service(max_queued=1, retry_after_s=2.5)
    svc.heartbeat("r1", 1)
    await svc.enqueue(create_meta("a", 5, 1))
    queued = asyncio.create_task(svc.enqueue(create_meta("b", 5, 2)))
    await settle()
    assert await svc.enqueue(create_meta("c", 5, 3)) == QueueFull(2.5)
    assert svc.snapshot()["counters"]["rejected"] == 1
    svc.complete("a")
    assert isinstance(await queued, Dispatched)


async def test_cancel_while_waiting_resolves_and_while_running_frees_the_slot():
    svc = create_service()
    svc.heartbeat("r1", 1)
    await svc.enqueue(create_meta("a", 5, 1))
    b = asyncio.create_task(svc.enqueue(create_meta("b", 5, 2)))
    c = asyncio.create_task(svc.enqueue(create_meta("c", 5, 3)))
    await settle()
    svc.cancel("b")
    assert await b == Cancelled()
    svc.cancel("a")  # the client of a running request left: its slot goes to c
    assert await c == on("r1")


async def test_a_caller_that_goes_away_gives_its_slot_back():
    svc = create_service()
    svc.heartbeat("r1", 1)
    await svc.enqueue(create_meta("a", 5, 1))
    b = asyncio.create_task(svc.enqueue(create_meta("b", 5, 2)))
    c = asyncio.create_task(svc.enqueue(create_meta("c", 9, 3)))
    await settle()
    b.cancel()  # e.g. Ray cancelled the actor call
    await settle()
    assert svc.snapshot()["num_queued"] == 1 and svc.snapshot()["num_waiters"] == 1  # b left at once
    svc.complete("a")
    assert await c == on("r1")
    assert svc.snapshot()["num_running"] == 1


async def test_requeue_after_a_dead_replica_runs_elsewhere_keeping_its_place():
    svc = create_service()
    svc.heartbeat("r1", 1)
    svc.heartbeat("r2", 1)
    a = await svc.enqueue(create_meta("a", 5, 1))
    b = await svc.enqueue(create_meta("b", 5, 2))
    assert {a.replica_id, b.replica_id} == {"r1", "r2"}
    later = asyncio.create_task(svc.enqueue(create_meta("c", 50, 3)))
    await settle()
    dead = a.replica_id
    svc.remove_replica(dead)
    again = asyncio.create_task(svc.requeue(create_meta("a", 5, 1)))
    await settle()
    live = b.replica_id
    svc.complete("b")
    await settle()
    # "a" (5 tokens) goes before "c" (50 tokens) on the surviving replica.
    assert again.done() and await again == on(live)
    assert not later.done()
    # a's first run ended when its replica was removed (failed); the requeue admitted it again.
    counters = svc.snapshot()["counters"]
    assert (counters["failed"], counters["requeued"], counters["enqueued"]) == (1, 0, 4)


async def test_silent_replica_is_dropped_and_its_queue_moves():
    clock = FakeClock(1000.0)
    svc = create_service(clock, replica_timeout_s=5.0, balancer="round-robin", work_stealing=False)
    svc.heartbeat("r1", 1)
    svc.heartbeat("r2", 1)
    await svc.enqueue(create_meta("a", 5, 1))
    await svc.enqueue(create_meta("b", 5, 2))
    waiting = [asyncio.create_task(svc.enqueue(create_meta(f"q{i}", 5, 3 + i))) for i in range(2)]
    await settle()
    clock.now += 3
    svc.heartbeat("r2", 1)
    clock.now += 3
    svc.sweep()  # r1 silent for 6 s > 5 s
    assert [r["replica_id"] for r in svc.snapshot()["replicas"]] == ["r2"]
    assert svc.snapshot()["num_queued"] == 2
    svc.complete("b")
    await settle()
    assert sum(t.done() for t in waiting) == 1


async def test_lease_expiry_frees_a_slot_nobody_uses():
    clock = FakeClock(1000.0)
    svc = create_service(clock, lease_s=10.0)
    svc.heartbeat("r1", 1)
    await svc.enqueue(create_meta("a", 5, 1))  # dispatched, but its caller never reaches the replica
    b = asyncio.create_task(svc.enqueue(create_meta("b", 5, 2)))
    await settle()
    clock.now += 5
    svc.heartbeat("r1", 1, running=[])
    await settle()
    assert not b.done()  # still within the lease
    clock.now += 6
    svc.heartbeat("r1", 1, running=[])
    assert await b == on("r1")
    assert svc.snapshot()["counters"]["leases_expired"] == 1


async def test_enqueue_is_idempotent_for_a_retried_call():
    svc = create_service()
    svc.heartbeat("r1", 1)
    assert await svc.enqueue(create_meta("a", 5, 1)) == on("r1")
    assert await svc.enqueue(create_meta("a", 5, 1)) == on("r1")
    assert svc.snapshot()["num_running"] == 1


@pytest.mark.parametrize("balancer", ["least-work", "round-robin", "late-binding"])
async def test_no_replica_idles_while_another_has_a_queue(balancer):
    svc = create_service(balancer=balancer)
    for r in ("r1", "r2", "r3"):
        svc.heartbeat(r, 1)
    tasks = [asyncio.create_task(svc.enqueue(create_meta(f"q{i}", 10 * (i % 4) + 1, i))) for i in range(12)]
    await settle()
    for step in range(12):
        snap = svc.snapshot()
        idle = [r for r in snap["replicas"] if r["num_running"] < r["num_slots"]]
        queued = sum(r["num_queued"] for r in snap["replicas"]) + snap["num_shared_queued"]
        assert not (idle and queued), snap
        running = sorted(k for k, s in svc.scheduler.requests.items() if s.status is RequestStatus.RUNNING)
        svc.complete(running[step % len(running)])
        await settle()
    assert all(t.done() for t in tasks)


# ---- batching clients: submit / poll / report ---------------------------------------------
async def test_submit_and_poll_answer_many_requests_in_one_call_each_way():
    svc = create_service(policy="ssjf", batching="continuous", max_batch=2)
    svc.heartbeat("r1", 2)
    svc.submit("ing", [create_meta("a", 30, 1), create_meta("b", 10, 2), create_meta("c", 20, 3), create_meta("d", 5, 4)])
    first = await svc.poll("ing", timeout_s=0.01)
    assert first == [Polled("a", on("r1")), Polled("b", on("r1"))]
    assert await svc.poll("ing", timeout_s=0.01) == []  # nothing new: the poll times out empty
    svc.report([Report.complete("a", 3), Report.complete("b", 4)])
    # Both freed slots go to the shortest waiting: d (5), then c (20).
    assert list(by_id(await svc.poll("ing", timeout_s=0.01))) == ["d", "c"]
    assert svc.snapshot()["counters"]["completed"] == 2


async def test_a_waiting_poll_wakes_on_dispatch():
    svc = create_service()
    svc.heartbeat("r1", 1)
    svc.submit("ing", [create_meta("a", 5, 1), create_meta("b", 5, 2)])
    assert list(by_id(await svc.poll("ing"))) == ["a"]
    waiting = asyncio.create_task(svc.poll("ing", timeout_s=30))
    await settle()
    assert not waiting.done()
    svc.report([Report.complete("a")])
    assert list(by_id(await waiting)) == ["b"]


async def test_submit_answers_queue_full_and_requeues():
    svc = create_service(max_queued=1)
    svc.heartbeat("r1", 1)
    svc.submit("ing", [create_meta("a", 5, 1), create_meta("b", 5, 2), create_meta("c", 5, 3)])
    answers = by_id(await svc.poll("ing", timeout_s=0.01))
    assert answers == {"a": on("r1"), "c": QueueFull(1.0)}
    svc.submit("ing", [create_meta("a", 5, 1)], requeue_ids=["a"])  # its replica bounced it: run again
    assert svc.snapshot()["counters"]["requeued"] == 1
    # "a" arrived first and keeps its turn (the full queue does not refuse it: it was admitted).
    assert by_id(await svc.poll("ing", timeout_s=0.01)) == {"a": on("r1")}
    svc.complete("a")
    assert by_id(await svc.poll("ing", timeout_s=0.01)) == {"b": on("r1")}


async def test_a_bounced_request_is_dispatched_again_before_the_one_behind_it():
    svc = create_service(policy="fcfs")
    svc.heartbeat("r1", 1)
    assert await svc.enqueue(create_meta("a", 50, 1)) == on("r1")
    behind = asyncio.create_task(svc.enqueue(create_meta("b", 5, 2)))
    await settle()
    # The call to r1 bounced before it ran: the ingress asks again. "b" must not take a's slot.
    assert await svc.requeue(create_meta("a", 50, 1)) == on("r1")
    assert not behind.done()
    svc.complete("a")
    assert await behind == on("r1")


async def test_a_client_that_stops_polling_frees_what_it_held():
    clock = FakeClock(1000.0)
    svc = create_service(clock, lease_s=10.0)
    svc.heartbeat("r1", 1)
    svc.submit("gone", [create_meta("a", 5, 1), create_meta("b", 5, 2)])
    other = asyncio.create_task(svc.enqueue(create_meta("c", 50, 3)))
    await settle()
    clock.now += 11
    svc.heartbeat("r1", 1)
    svc.sweep()
    assert await other == on("r1")
    assert svc.snapshot()["num_clients"] == 0


class FakeMethod:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        result = self.fn(*args)
        if asyncio.iscoroutine(result) or asyncio.isfuture(result):
            return asyncio.ensure_future(result)
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(result)
        return fut


class FakeHandle:
    """Stands in for the actor handle: each method's ``.remote`` runs the service in-process.
    ``hung``: every call is taken and never answered (a stopped router); ``echo_polls``: each poll
    answers its batch twice (a duplicate answer reaching the client)."""

    def __init__(self, svc):
        self.svc = svc
        self.calls = []
        self.hung = False
        self.echo_polls = False

    def __getattr__(self, name):
        def call(*args):
            self.calls.append(name)
            if self.hung:
                return asyncio.get_running_loop().create_future()
            if name == "ping":
                return self.svc.started_at
            if name == "poll" and self.echo_polls:
                return self._echo(*args)
            return getattr(self.svc, name)(*args)
        return FakeMethod(call)

    async def _echo(self, *args):
        answers = await self.svc.poll(*args)
        return answers + answers


class FakeClient(RouterClient):
    def __init__(self, svc, **kw):
        super().__init__("fake", "ns", {}, **kw)
        self.fake = FakeHandle(svc)
        self.kills = 0

    def get_or_create(self):
        return self.fake

    def _kill(self, handle) -> None:
        self.kills += 1


async def test_batched_enqueuer_goes_direct_alone_and_batches_under_load():
    svc = create_service(policy="ssjf")
    svc.heartbeat("r1", 1)
    client = FakeClient(svc)
    enq = BatchedEnqueuer(client, poll_timeout_s=0.05)
    reporter = Reporter(client)
    assert await enq.enqueue(create_meta("a", 5, 1)) == on("r1")
    assert client.handle.calls == ["enqueue"]  # alone: one direct call
    waiting = [asyncio.create_task(enq.enqueue(create_meta(f"q{i}", 40 - i, 2 + i))) for i in range(4)]
    await settle()
    for _ in range(4):
        running = [k for k, s in svc.scheduler.requests.items() if s.status is RequestStatus.RUNNING]
        reporter.report(Report.complete(running[0], 1))
        for _ in range(20):
            await asyncio.sleep(0)
    results = await asyncio.gather(*waiting)
    assert all(r == on("r1") for r in results)
    assert [log.request_id for log in svc.dispatch_log][1:] == ["q3", "q2", "q1", "q0"]  # SSJF
    assert all(isinstance(log, DispatchRecord) for log in svc.dispatch_log)
    # The queued four went in one submit (the first was direct), not one call each.
    assert client.handle.calls.count("submit") <= 2 and client.handle.calls.count("enqueue") == 2


# ---- attempts: a report names the dispatch it is about --------------------------------------
async def test_a_late_report_of_an_earlier_attempt_does_not_free_the_later_run():
    svc = create_service()
    svc.heartbeat("A", 1)
    svc.heartbeat("B", 1)
    first = await svc.enqueue(create_meta("x", 5, 1))
    assert first.replica_id == "A"
    # The call to A timed out before its first chunk: the ingress requeues, and x runs on B.
    again = await svc.requeue(create_meta("x", 5, 1))
    assert again.replica_id == "B" and again.attempt != first.attempt
    # A's run of x is cancelled at last and A reports it, naming its own attempt.
    svc.report([Report.cancel("x", attempt=first.attempt)])
    assert {r["replica_id"]: r["num_running"] for r in svc.snapshot()["replicas"]} == {"A": 0, "B": 1}
    assert svc.scheduler.requests["x"].replica_id == "B"
    assert svc.snapshot()["counters"]["stale_reports"] == 1


async def test_a_stale_or_duplicate_report_counts_no_second_end():
    svc = create_service()
    svc.heartbeat("r1", 1)
    run = await svc.enqueue(create_meta("x", 5, 1))
    svc.report([Report.complete("x", 4, attempt=run.attempt), Report.complete("x", 4, attempt=run.attempt),
                Report.cancel("x", attempt=run.attempt), Report.cancel("x")])
    counters = svc.snapshot()["counters"]
    assert (counters["completed"], counters["cancelled"], counters["stale_reports"]) == (1, 0, 2)


async def test_a_caller_joining_a_running_request_gets_its_attempt():
    svc = create_service()
    svc.heartbeat("r1", 1)
    first = await svc.enqueue(create_meta("x", 5, 1))
    assert await svc.enqueue(create_meta("x", 5, 1)) == Dispatched("r1", None, first.attempt)
    svc.submit("ing", [create_meta("x", 5, 1)])
    assert by_id(await svc.poll("ing", timeout_s=0.01)) == {"x": Dispatched("r1", None, first.attempt)}


async def test_attempt_ids_of_a_restarted_router_are_above_its_predecessors():
    clock = FakeClock(1000.0)
    old = create_service(clock)
    old.heartbeat("r1", 1)
    before = await old.enqueue(create_meta("x", 5, 1))
    clock.advance(0.001)
    new = create_service(clock)  # the actor restarted: a new service, empty
    new.heartbeat("r1", 1)
    assert (await new.enqueue(create_meta("y", 5, 1))).attempt > before.attempt


async def test_a_restarted_router_adopts_what_replicas_run():
    svc = create_service(batching="continuous", max_batch=2)  # the successor: it knows nothing
    x, y = create_meta("x", 40, 1), create_meta("y", 30, 2)
    svc.heartbeat("r1", 2, [Running(x, 11), Running(y, 12)])
    snap = svc.snapshot()
    assert snap["replicas"][0]["num_running"] == 2 and snap["replicas"][0]["outstanding_work"] == 70
    assert snap["counters"]["adopted"] == 2
    # Full: a new request waits instead of over-filling r1.
    z = asyncio.create_task(svc.enqueue(create_meta("z", 5, 3)))
    await settle()
    assert not z.done()
    svc.report([Report.complete("x", 40, attempt=11)])
    assert await z == on("r1")
    svc.heartbeat("r1", 2, [Running(y, 12)])  # listed again: adopted once only
    assert svc.snapshot()["counters"]["adopted"] == 2


async def test_a_replica_dropped_by_a_misrouted_report_is_adopted_back_with_its_runs():
    svc = create_service()
    svc.heartbeat("A", 1)
    x = create_meta("x", 5, 1)
    run = await svc.enqueue(x)
    svc.report([Report.remove_replica("A")])  # an ingress could not reach A for a while
    assert svc.snapshot()["num_running"] == 0
    waiting = asyncio.create_task(svc.enqueue(create_meta("q", 5, 2)))
    await settle()
    # A heartbeats again, still running x: x takes the slot back before q is dispatched.
    svc.heartbeat("A", 1, [Running(x, run.attempt)])
    await settle()
    assert not waiting.done() and svc.scheduler.requests["x"].attempt == run.attempt
    svc.report([Report.complete("x", 3, attempt=run.attempt)])
    assert await waiting == on("A")
    counters = svc.snapshot()["counters"]
    assert (counters["dispatched"], counters["adopted"], counters["failed"], counters["completed"]) == (2, 1, 1, 1)


async def test_a_heartbeat_sent_before_a_run_ended_does_not_adopt_it_again():
    svc = create_service()
    svc.heartbeat("r1", 1)
    x = create_meta("x", 5, 1)
    run = await svc.enqueue(x)
    svc.report([Report.complete("x", 3, attempt=run.attempt)])
    svc.heartbeat("r1", 1, [Running(x, run.attempt)])  # overtaken by the complete report
    assert svc.snapshot()["num_running"] == 0 and svc.snapshot()["counters"]["adopted"] == 0


async def test_the_lease_keys_on_the_attempt_not_the_request():
    clock = FakeClock(1000.0)
    svc = create_service(clock, lease_s=10.0)
    svc.heartbeat("r1", 1)
    x = create_meta("x", 5, 1)
    first = await svc.enqueue(x)
    second = await svc.requeue(x)  # the ingress saw no first chunk and asked again; r1 runs x's old try
    behind = asyncio.create_task(svc.enqueue(create_meta("b", 5, 2)))
    clock.advance(11)
    svc.heartbeat("r1", 1, [Running(x, first.attempt)])  # the new attempt never reached r1
    assert await behind == on("r1")
    assert second.attempt != first.attempt and svc.snapshot()["counters"]["leases_expired"] == 1


async def test_resubmitting_a_request_whose_answer_waits_in_the_outbox_answers_once():
    svc = create_service()
    svc.heartbeat("r1", 1)
    svc.submit("ing", [create_meta("x", 5, 1)])
    svc.submit("ing", [create_meta("x", 5, 1)])  # the client's poll failed: it sends x again
    answers = await svc.poll("ing", timeout_s=0.01)
    assert [p.request_id for p in answers] == ["x"]


async def until(predicate, what: str, tries: int = 2000):
    """Yield to the loop (a few ms at a time) until ``predicate()`` holds; fail after ``tries``."""
    for _ in range(tries):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never: {what}")


async def test_a_duplicate_dispatch_answer_is_delivered_once_and_never_cancels_the_run():
    svc = create_service(batching="continuous", max_batch=4)
    svc.heartbeat("r1", 4)
    client = FakeClient(svc)
    enq = BatchedEnqueuer(client, poll_timeout_s=0.01)
    client.fake.echo_polls = True
    blocker = asyncio.create_task(enq.enqueue(create_meta("w", 5, 1)))  # direct: the rest go batched
    answers = await asyncio.gather(*[enq.enqueue(create_meta(f"q{i}", 5, 2 + i)) for i in range(3)])
    await blocker
    assert all(isinstance(a, Dispatched) for a in answers)
    for _ in range(20):
        await asyncio.sleep(0)
    assert "report" not in client.fake.calls  # no cancel for the echoes
    assert svc.snapshot()["num_running"] == 4


async def test_a_duplicate_of_a_run_answered_by_a_direct_enqueue_never_cancels_it():
    """A request answered by a direct ``enqueue`` call, then resubmitted while it runs (the fault
    matrix found it on a live cluster): the outbox's copy of its Dispatched is no unwanted dispatch."""
    svc = create_service()
    svc.heartbeat("r1", 1)
    client = FakeClient(svc)
    enq = BatchedEnqueuer(client, poll_timeout_s=0.01)
    first = await enq.enqueue(create_meta("a", 5, 1))  # alone: a direct call
    waiting = [asyncio.create_task(enq.enqueue(create_meta("b", 5, 2)))]  # direct too; waits for the slot
    await settle()
    waiting.append(asyncio.create_task(enq.enqueue(create_meta("c", 5, 3))))  # batched: the client polls
    await until(lambda: "poll" in client.fake.calls, "a poll")
    svc.submit(enq.client_id, [create_meta("a", 5, 1)])  # "a" again while it runs: its answer again
    await until(lambda: not svc._outboxes.get(enq.client_id), "the copy polled")
    for _ in range(20):
        await asyncio.sleep(0)
    assert "report" not in client.fake.calls  # not taken for a dispatch nobody wanted
    assert svc.scheduler.requests["a"].attempt == first.attempt
    assert svc.snapshot()["counters"]["cancelled"] == 0
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


async def test_a_client_paused_past_the_lease_submits_what_waits_again():
    """The router dropped a client that did not poll for its lease (the ingress was stopped) and told it
    nothing: after the gap the client submits its waiting requests again, and they are answered."""
    clock = FakeClock(100.0)
    svc = create_service()
    svc.heartbeat("r1", 1)
    client = FakeClient(svc, clock=clock)
    enq = BatchedEnqueuer(client, poll_timeout_s=0.01, resubmit_after_s=5.0)
    first = await enq.enqueue(create_meta("a", 5, 1))  # direct; holds the only slot
    blocker = asyncio.create_task(enq.enqueue(create_meta("b", 5, 2)))  # direct; waits
    await settle()
    waiting = asyncio.create_task(enq.enqueue(create_meta("c", 5, 3)))  # batched
    await until(lambda: "c" in svc.scheduler.requests, "c submitted")
    svc._drop_client(enq.client_id)  # what the sweep does to a client silent for router.lease_s
    assert "c" not in svc.scheduler.requests and not waiting.done()
    clock.now += 30  # the pause, as this client's clock saw it between two answered polls
    await until(lambda: "c" in svc.scheduler.requests, "c submitted again")
    svc.complete("a", attempt=first.attempt)
    second = await blocker
    svc.complete("b", attempt=second.attempt)
    assert await asyncio.wait_for(waiting, 30) == on("r1")
    counters = svc.snapshot()["counters"]
    assert (counters["enqueued"], counters["withdrawn"], counters["dispatched"]) == (4, 1, 3)


async def test_a_dispatch_nobody_waits_for_is_cancelled_by_its_attempt():
    svc = create_service()
    svc.heartbeat("r1", 1)
    run = await svc.enqueue(create_meta("a", 5, 1))
    client = FakeClient(svc)
    enq = BatchedEnqueuer(client, poll_timeout_s=0.01)
    direct = asyncio.create_task(enq.enqueue(create_meta("d", 5, 2)))  # waits behind a
    await settle()
    gone = asyncio.create_task(enq.enqueue(create_meta("x", 1, 3)))  # batched; its caller leaves
    await until(lambda: "x" in svc.scheduler.requests, "x submitted")
    gone.cancel()
    svc.complete("a", attempt=run.attempt)  # d and x get the slot in turn (x's by nobody's choice)
    await direct
    svc.complete("d", attempt=svc.scheduler.requests["d"].attempt)
    await until(lambda: svc.snapshot()["counters"]["cancelled"] == 1, "x's run cancelled")
    assert svc.snapshot()["num_running"] == 0 and svc.snapshot()["counters"]["stale_reports"] == 0


async def test_a_hung_router_fails_outstanding_enqueues_so_callers_retry():
    svc = create_service()
    svc.heartbeat("r1", 1)
    client = FakeClient(svc, hung_kill_s=3600.0)
    enq = BatchedEnqueuer(client, poll_timeout_s=0.01, call_timeout_s=0.01, ping_interval_s=0.001)
    client.fake.hung = True  # e.g. SIGSTOP: calls are taken, nothing answers, nothing dies
    direct = asyncio.create_task(enq.enqueue(create_meta("a", 5, 1)))
    await settle()
    batched = asyncio.create_task(enq.enqueue(create_meta("b", 5, 2)))
    results = await asyncio.wait_for(asyncio.gather(direct, batched, return_exceptions=True), 30)
    assert all(isinstance(r, RouterUnresponsive) for r in results), results
    assert RouterClient.is_router_failure(results[0]) and RouterClient.is_actor_failure(results[0])
    assert client.kills == 0  # not hung for hung_kill_s yet
    client.fake.hung = False  # the router answers again (SIGCONT, or its restart): the retry works
    assert await asyncio.wait_for(enq.enqueue(create_meta("a", 5, 1)), 30) == on("r1")


async def test_a_router_hung_for_hung_kill_s_is_killed_once():
    clock = FakeClock(0.0)
    client = FakeClient(create_service(), hung_kill_s=10.0, clock=clock)
    client.unanswered(sent_at=0.0)
    clock.advance(9.0)
    assert not client.kill_if_hung()
    client.unanswered(sent_at=5.0)  # a later miss does not move the start of the silence
    clock.advance(1.0)
    assert client.kill_if_hung() and client.kills == 1
    assert not client.kill_if_hung()  # the restarted actor gets its own hung_kill_s
    client.unanswered(sent_at=11.0)
    clock.advance(11.0)  # silent since the kill: restarting, slowly
    assert not client.kill_if_hung()
    clock.advance(10.0)  # twice hung_kill_s since the kill: hung again
    assert client.kill_if_hung() and client.kills == 2
    client.unanswered(sent_at=clock.now)
    client.answered()  # any answer: not hung
    clock.advance(60.0)
    assert not client.kill_if_hung() and client.kills == 2


async def test_the_watchdog_kills_a_router_that_stays_hung():
    client = FakeClient(create_service(), hung_kill_s=0.0)
    enq = BatchedEnqueuer(client, call_timeout_s=0.01, ping_interval_s=0.001)
    client.fake.hung = True
    with pytest.raises(RouterUnresponsive):
        await asyncio.wait_for(enq.enqueue(create_meta("a", 5, 1)), 30)
    assert client.kills == 1


async def test_reports_to_a_hung_router_are_dropped_not_piled_up():
    svc = create_service()
    svc.heartbeat("r1", 1)
    run = await svc.enqueue(create_meta("a", 5, 1))
    client = FakeClient(svc, hung_kill_s=3600.0)
    reporter = Reporter(client, call_timeout_s=0.01)
    client.fake.hung = True
    reporter.report(Report.cancel("b"))
    await until(lambda: client._unanswered_since is not None, "the report call timed out")
    client.fake.hung = False
    reporter.report(Report.complete("a", 3, attempt=run.attempt))
    await until(lambda: svc.snapshot()["counters"]["completed"] == 1, "the next report arrives")
    assert client._unanswered_since is None


async def test_a_paused_router_forgives_the_silence_of_its_pause():
    clock = FakeClock(1000.0)
    svc = create_service(clock, replica_timeout_s=15.0, lease_s=30.0)
    svc.heartbeat("r1", 1)
    await svc.enqueue(create_meta("a", 5, 1))
    svc.submit("ing", [create_meta("b", 5, 2)])  # waits behind a
    clock.advance(40.0)  # SIGSTOP for 40 s, then SIGCONT: the heartbeats and polls were not heard
    svc.forgive()
    svc.sweep()
    snap = svc.snapshot()
    assert [r["replica_id"] for r in snap["replicas"]] == ["r1"] and snap["num_clients"] == 1
    assert snap["num_queued"] == 1 and snap["num_running"] == 1
    clock.advance(16.0)  # still silent one timeout later: really gone
    svc.sweep()
    assert svc.snapshot()["replicas"] == []


async def test_the_client_loops_call_the_router_as_no_request():
    """Ray makes a ``.remote()`` call a child of the actor task whose context it is made in (the
    ``async_task_id`` context variable), and cancelling a request cancels its children. The loops
    started while serving one request serve every request: their calls must belong to none, or one
    client closing its stream cancels the poll every other request waits on."""
    ray_raylet = pytest.importorskip("ray._raylet")
    task_id = ray_raylet.async_task_id
    svc = create_service()
    svc.heartbeat("r1", 1)
    client = FakeClient(svc)
    seen = []

    class Recording(FakeHandle):
        def __getattr__(self, name):
            method = super().__getattr__(name)
            inner = method.fn

            def call(*args):
                seen.append((name, task_id.get()))
                return inner(*args)
            method.fn = call
            return method

    client.fake = Recording(svc)
    enq = BatchedEnqueuer(client, poll_timeout_s=0.01, ping_interval_s=0.001)
    reporter = Reporter(client)

    async def as_request(coro):  # what Ray sets while it runs the ingress's (or replica's) request
        task_id.set("request-1")
        return await coro

    first = await asyncio.create_task(as_request(enq.enqueue(create_meta("a", 5, 1))))  # alone: direct
    waiting = [asyncio.create_task(as_request(enq.enqueue(create_meta("b", 5, 2))))]  # direct, waits for the slot
    await settle()
    waiting.append(asyncio.create_task(as_request(enq.enqueue(create_meta("c", 5, 3)))))  # batched: the loops start
    await until(lambda: any(name == "poll" for name, _ in seen), "a poll")
    await asyncio.create_task(as_request(_report(reporter, Report.complete("a", 1, attempt=first.attempt))))
    second = await waiting[0]
    await asyncio.create_task(as_request(_report(reporter, Report.complete("b", 1, attempt=second.attempt))))
    assert isinstance(await waiting[1], Dispatched)
    by = {}
    for name, parent in seen:
        by.setdefault(name, set()).add(parent)
    assert by["enqueue"] == {"request-1"}  # a direct call is the request's own
    assert by["submit"] == by["poll"] == by["report"] == {None}
    if "ping" in by:
        assert by["ping"] == {None}


async def _report(reporter, report):
    reporter.report(report)
