"""The router's boundary messages: they survive pickling (Ray sends them between processes), are
frozen, and a report that names the wrong thing fails where it is built."""

import asyncio
import dataclasses
import pickle

import pytest

from router.actor import RouterService
from router.config import SchedulerConfig
from router.messages import (
    Cancelled,
    Dispatched,
    DispatchRecord,
    NoReplica,
    Polled,
    QueueFull,
    Report,
    ReportKind,
    Running,
)
from router.request import RequestMeta

MESSAGES = [Dispatched("r1", 3), Dispatched("r2"), QueueFull(1.5), NoReplica(2.0), Cancelled(),
            Polled("a", Dispatched("r1")), Report.complete("a", 7), Report.complete("b"), Report.cancel("c"),
            Report.fail("d"), Report.remove_replica("r1"), DispatchRecord("a", "r1", 12.5, 40.0),
            Dispatched("r1", None, 1_700_000_000_000_000), Report.complete("a", 7, attempt=12), Report.cancel("c", 3),
            Running(RequestMeta("a", "m", 10, 5.0, 100, 1.0), 12)]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_messages_survive_pickling(message):
    again = pickle.loads(pickle.dumps(message))
    assert again == message and type(again) is type(message)


def test_messages_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Dispatched("r1").replica_id = "r2"
    with pytest.raises(dataclasses.FrozenInstanceError):
        Report.cancel("a").request_id = "b"


def test_answers_differ_by_type_not_by_field_values():
    assert QueueFull(1.0) != NoReplica(1.0)
    assert Cancelled() == Cancelled()


@pytest.mark.parametrize("build", [
    lambda: Report(ReportKind.COMPLETE),  # names nothing
    lambda: Report(ReportKind.CANCEL, replica_id="r1"),  # a request report naming a replica
    lambda: Report(ReportKind.REMOVE_REPLICA, request_id="a"),  # a replica report naming a request
    lambda: Report(ReportKind.REMOVE_REPLICA, request_id="a", replica_id="r1"),
    lambda: Report(ReportKind.FAIL, request_id="a", num_output_tokens=3),  # tokens on a failure
    lambda: Report(ReportKind.REMOVE_REPLICA, replica_id="r1", attempt=3),  # a replica has no attempt
])
def test_a_report_naming_the_wrong_thing_is_refused(build):
    with pytest.raises(ValueError):
        build()


async def test_one_report_call_applies_every_kind_in_order():
    svc = RouterService(SchedulerConfig(balancer="round-robin", work_stealing=False), clock=lambda: 1000.0)
    svc.heartbeat("r1", 1)
    svc.heartbeat("r2", 1)
    metas = {rid: RequestMeta(rid, "m", 10, 5.0, 100, float(i)) for i, rid in enumerate("abcde")}
    tasks = {rid: asyncio.create_task(svc.enqueue(meta)) for rid, meta in metas.items()}
    for _ in range(5):
        await asyncio.sleep(0)
    running = {rid for rid, t in tasks.items() if t.done()}
    assert len(running) == 2
    a, b = sorted(running)
    waiting = sorted(set(tasks) - running)
    svc.report([Report.cancel(waiting[-1]), Report.complete(a, 4), Report.fail(b)])
    for _ in range(5):
        await asyncio.sleep(0)
    assert await tasks[waiting[-1]] == Cancelled()
    counters = svc.snapshot()["counters"]
    # The waiting one was withdrawn (no run of it began); the two runs ended once each.
    assert (counters["completed"], counters["failed"], counters["cancelled"], counters["withdrawn"]) == (1, 1, 0, 1)
    # The two freed slots went to the two still waiting.
    assert all(tasks[rid].done() and isinstance(tasks[rid].result(), Dispatched) for rid in waiting[:-1])
    svc.report([Report.remove_replica("r1")])
    assert [r["replica_id"] for r in svc.snapshot()["replicas"]] == ["r2"]
    assert svc.snapshot()["counters"]["replicas_removed"] == 1
