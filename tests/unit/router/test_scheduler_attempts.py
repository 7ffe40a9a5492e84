"""Attempts and adoption in the pure scheduler: every dispatch has its own id, an end naming an
attempt acts only on that dispatch, and a run the scheduler does not know can be adopted."""

from router.scheduler import Scheduler
from tests.factories import FakeClock, create_meta, create_scheduler


def test_every_dispatch_gets_a_new_increasing_attempt_from_the_seed():
    config = create_scheduler(batching="continuous", max_batch=2).config
    sched = Scheduler(config, clock=FakeClock(), first_attempt=500)
    sched.add_replica("r1", 2)
    first = sched.enqueue(create_meta("a")) + sched.enqueue(create_meta("b"))
    assert [a.attempt for a in first] == [500, 501]
    assert sched.requests["a"].attempt == 500
    again = sched.requeue(create_meta("a"))  # a's run failed: dispatched again, under a new id
    assert [(a.request_id, a.attempt) for a in again] == [("a", 502)]
    assert sched.next_attempt == 503


def test_an_end_naming_a_stale_attempt_changes_nothing():
    sched = create_scheduler(batching="none")
    sched.add_replica("r1")
    (first,) = sched.enqueue(create_meta("a"))
    (second,) = sched.requeue(create_meta("a"))
    assert sched.state_for("a", first.attempt) is None
    for end in (sched.complete, sched.fail):
        assert end("a", attempt=first.attempt) == []
    assert sched.cancel("a", first.attempt) == []
    assert sched.num_running == 1 and sched.requests["a"].attempt == second.attempt
    sched.complete("a", 3, attempt=second.attempt)
    assert sched.num_running == 0 and "a" not in sched.requests


def test_an_end_naming_an_attempt_never_touches_a_queued_request():
    sched = create_scheduler(batching="none")
    sched.add_replica("r1")
    (run,) = sched.enqueue(create_meta("a"))
    sched.enqueue(create_meta("b"))
    assert sched.cancel("b", run.attempt) == []  # b waits: it runs under no attempt
    assert sched.num_queued == 1
    assert sched.cancel("b") == [] and sched.num_queued == 0  # without an attempt: in any state


def test_adopting_a_run_takes_its_slot_and_its_work():
    clock = FakeClock(5.0)
    sched = create_scheduler(clock, batching="continuous", max_batch=2)
    sched.add_replica("r1", 2)
    assert sched.adopt("r1", create_meta("x", predicted=40), attempt=77)
    state = sched.requests["x"]
    assert (state.replica_id, state.attempt, state.dispatched_at) == ("r1", 77, 5.0)
    assert sched.replicas["r1"].running_work == 40 and sched.num_running == 1
    assert sched.next_attempt == 78  # ids stay above every adopted one
    # One slot is left: of two new requests, one runs and one waits.
    assert [a.request_id for a in sched.enqueue(create_meta("y")) + sched.enqueue(create_meta("z"))] == ["y"]
    # The adopted run ends by a report naming its attempt, like any other.
    assert [a.request_id for a in sched.complete("x", 12, attempt=77)] == ["z"]


def test_adoption_before_dispatch_keeps_a_returning_replica_from_being_over_filled():
    sched = create_scheduler(batching="none")
    sched.enqueue(create_meta("q"))  # waits for a replica
    assert sched.add_replica("r1", dispatch=False) == []
    assert sched.adopt("r1", create_meta("x"), attempt=3)
    assert sched.dispatch() == []  # the single slot is x's
    assert sched.num_queued == 1
    assert [a.request_id for a in sched.complete("x", attempt=3)] == ["q"]


def test_an_over_full_replica_takes_nothing_until_enough_runs_end():
    sched = create_scheduler(batching="continuous", max_batch=1)
    sched.add_replica("r1", 1)
    (a,) = sched.enqueue(create_meta("a"))
    assert sched.adopt("r1", create_meta("x"), attempt=a.attempt + 10)  # the replica runs both
    sched.enqueue(create_meta("q"))
    assert sched.complete("a", attempt=a.attempt) == []  # still one running on one slot
    assert [x.request_id for x in sched.complete("x", attempt=a.attempt + 10)] == ["q"]


def test_adoption_refuses_a_known_request_or_an_unknown_replica():
    sched = create_scheduler(batching="none")
    sched.add_replica("r1")
    sched.add_replica("r2")
    sched.enqueue(create_meta("a"))
    assert not sched.adopt("r2", create_meta("a"), attempt=99)  # runs on r1 (another attempt)
    assert not sched.adopt("gone", create_meta("b"), attempt=1)
    assert sched.num_running == 1 and "b" not in sched.requests
