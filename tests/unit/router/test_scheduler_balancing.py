"""Batching modes, balancers, work stealing and replica removal of the scheduling core."""

import random

import pytest

from router import Scheduler, SchedulerConfig
from tests.factories import FakeClock, create_meta, create_scheduler


def ids(assignments) -> list[str]:
    return [a.request_id for a in assignments]


def where(assignments) -> dict[str, str]:
    return {a.request_id: a.replica_id for a in assignments}


def queued_on(sched: Scheduler) -> dict[str, int]:
    return {r["replica_id"]: r["num_queued"] for r in sched.snapshot()["replicas"]}


# ---- batching modes ----------------------------------------------------------------------------

def test_none_runs_one_at_a_time_whatever_max_batch_says():
    sched = create_scheduler(FakeClock(), policy="ssjf", batching="none", max_batch=8)
    sched.add_replica("r0")
    assert ids(sched.enqueue(create_meta("a", 1))) == ["a"]
    assert sched.enqueue(create_meta("b", 1)) == []
    assert ids(sched.complete("a")) == ["b"]


def test_static_starts_a_batch_on_an_idle_replica_without_waiting_to_fill_it():
    sched = create_scheduler(FakeClock(), policy="ssjf", batching="static", max_batch=4)
    sched.add_replica("r0")
    first = sched.enqueue(create_meta("alone", 9))
    assert ids(first) == ["alone"]  # a batch of one: no waiting for company
    assert first[0].batch_id is not None


def test_static_batch_runs_until_its_longest_member_ends_then_the_next_batch_starts_together():
    sched = create_scheduler(FakeClock(), policy="ssjf", batching="static", max_batch=3)
    sched.add_replica("r0")
    sched.enqueue(create_meta("first", 1))  # batch 1 = [first]
    for rid, p in [("a", 50), ("b", 5), ("c", 20), ("d", 40), ("e", 1)]:
        assert sched.enqueue(create_meta(rid, p)) == []  # the replica is busy: no slot until its batch ends
    batch2 = sched.complete("first")
    assert ids(batch2) == ["e", "b", "c"]  # the 3 shortest predicted, together
    assert len({a.batch_id for a in batch2}) == 1
    assert sched.complete("e") == [] and sched.complete("b") == []  # members done, batch still running
    batch3 = sched.complete("c")
    assert ids(batch3) == ["d", "a"]
    assert batch3[0].batch_id != batch2[0].batch_id


def test_continuous_refills_each_slot_as_soon_as_it_frees():
    sched = create_scheduler(FakeClock(), policy="ssjf", batching="continuous", max_batch=2)
    sched.add_replica("r0")
    assert ids(sched.enqueue(create_meta("x", 9))) == ["x"]
    assert ids(sched.enqueue(create_meta("y", 9))) == ["y"]
    for rid, p in [("a", 50), ("b", 5), ("c", 20)]:
        assert sched.enqueue(create_meta(rid, p)) == []
    assert ids(sched.complete("x")) == ["b"]
    assert ids(sched.complete("b")) == ["c"]
    assert ids(sched.complete("y")) == ["a"]
    assert all(a.batch_id is None for a in sched.complete("c"))


def test_replica_slot_count_can_differ_per_replica():
    sched = create_scheduler(FakeClock(), policy="fcfs", batching="continuous", max_batch=4,
                                      balancer="late-binding")
    sched.add_replica("big", num_slots=3)
    got = []
    for i in range(4):
        got += sched.enqueue(create_meta(f"q{i}", 1))
    assert ids(got) == ["q0", "q1", "q2"]
    with pytest.raises(ValueError, match="num_slots must be >= 1"):
        sched.add_replica("bad", num_slots=0)


# ---- balancers ---------------------------------------------------------------------------------

def busy_cluster(balancer: str, n: int = 3, *, check: bool = True, **kw) -> Scheduler:
    """``n`` one-slot replicas, each running a 1000-token blocker, no work stealing: new requests stay queued."""
    sched = create_scheduler(FakeClock(), policy="ssjf", batching="none", balancer=balancer,
                                      work_stealing=False, **kw)
    for r in range(n):
        sched.add_replica(f"r{r}")
    for r in range(n):
        sched.enqueue(create_meta(f"blocker{r}", 1000))
    if check:
        assert sched.snapshot()["num_running"] == n
    return sched


def test_round_robin_places_requests_in_turn():
    sched = busy_cluster("round-robin")
    for i in range(4):
        sched.enqueue(create_meta(f"q{i}", 100))
    assert queued_on(sched) == {"r0": 2, "r1": 1, "r2": 1}


def test_least_work_joins_the_replica_with_the_least_predicted_tokens_per_slot():
    sched = busy_cluster("least-work")
    sched.enqueue(create_meta("big", 900))  # all equal (1000 running): first registered, r0
    sched.enqueue(create_meta("mid", 300))  # r1
    sched.enqueue(create_meta("small", 100))  # r2
    sched.enqueue(create_meta("next", 50))  # least work is r2 (1100)
    assert queued_on(sched) == {"r0": 1, "r1": 1, "r2": 2}
    assert sched.replicas["r2"].outstanding_work == 1150


def test_least_work_counts_running_work_too():
    sched = create_scheduler(FakeClock(), policy="ssjf", batching="none", balancer="least-work",
                                      work_stealing=False)
    sched.add_replica("r0")
    sched.add_replica("r1")
    sched.enqueue(create_meta("long_running", 1000))  # runs on r0
    sched.enqueue(create_meta("short_running", 10))  # r1 (r0 has 1000 running)
    sched.enqueue(create_meta("queued", 5))
    assert queued_on(sched) == {"r0": 0, "r1": 1}


def test_power_of_two_picks_the_less_loaded_of_two_and_is_seeded():
    sched = busy_cluster("power-of-two", n=2, seed=7)
    sched.enqueue(create_meta("heavy", 1000))
    for i in range(5):
        sched.enqueue(create_meta(f"light{i}", 10))
    assert queued_on(sched) == {"r0": 1, "r1": 5} or queued_on(sched) == {"r0": 5, "r1": 1}
    placements = []
    for seed in (1, 1, 2):
        s = busy_cluster("power-of-two", n=8, seed=seed, check=False)
        for i in range(20):
            s.enqueue(create_meta(f"q{i}", 10 + i))
        placements.append(queued_on(s))
    assert placements[0] == placements[1]  # same seed, same draws


def test_late_binding_keeps_one_shared_queue_and_a_free_slot_takes_its_best_request():
    sched = Scheduler(SchedulerConfig(policy="ssjf", batching="none", balancer="late-binding"),
                      clock=FakeClock())
    sched.add_replica("r0")
    sched.add_replica("r1")
    sched.enqueue(create_meta("x", 1))
    sched.enqueue(create_meta("y", 1))
    for rid, p in [("a", 50), ("b", 5), ("c", 20)]:
        sched.enqueue(create_meta(rid, p))
    assert sched.snapshot()["num_shared_queued"] == 3
    assert queued_on(sched) == {"r0": 0, "r1": 0}
    assert where(sched.complete("y")) == {"b": "r1"}
    assert where(sched.complete("x")) == {"c": "r0"}


def test_work_stealing_a_free_replica_takes_the_best_of_the_longest_queue():
    sched = create_scheduler(FakeClock(), policy="ssjf", batching="none", balancer="round-robin")
    sched.add_replica("r0")
    sched.add_replica("r1")
    sched.enqueue(create_meta("x0", 1))  # round robin: r0 runs x0
    sched.enqueue(create_meta("x1", 1))  # r1 runs x1
    for rid, p in [("a", 50), ("b", 5), ("c", 20), ("d", 30)]:
        sched.enqueue(create_meta(rid, p))  # a, c -> r0 queue; b, d -> r1 queue
    assert queued_on(sched) == {"r0": 2, "r1": 2}
    assert where(sched.complete("x0")) == {"c": "r0"}  # own queue first
    assert where(sched.complete("c")) == {"a": "r0"}
    assert where(sched.complete("a")) == {"b": "r0"}  # own queue empty: steal r1's best


def test_without_work_stealing_a_free_replica_idles_next_to_a_queue():
    sched = create_scheduler(FakeClock(), policy="ssjf", batching="none", balancer="round-robin",
                                      work_stealing=False)
    sched.add_replica("r0")
    sched.add_replica("r1")
    sched.enqueue(create_meta("x0", 1))
    sched.enqueue(create_meta("x1", 1))
    sched.enqueue(create_meta("a", 50))  # r0's queue
    sched.enqueue(create_meta("b", 5))  # r1's queue
    sched.enqueue(create_meta("c", 20))  # r0's queue
    assert where(sched.complete("x1")) == {"b": "r1"}
    assert sched.complete("b") == []  # r1 is free, r0 still has a queue, but no stealing


def test_removing_a_replica_returns_its_running_requests_and_moves_its_queue():
    sched = create_scheduler(FakeClock(), policy="ssjf", batching="none", balancer="round-robin",
                                      work_stealing=False)
    sched.add_replica("r0")
    sched.add_replica("r1")
    sched.enqueue(create_meta("run0", 1))
    sched.enqueue(create_meta("run1", 1))
    sched.enqueue(create_meta("q0", 7))  # r0's queue
    sched.enqueue(create_meta("q1", 3))  # r1's queue
    orphans, assignments = sched.remove_replica("r0")
    assert [m.request_id for m in orphans] == ["run0"]
    assert assignments == []  # r1 is still busy
    assert queued_on(sched) == {"r1": 2}
    assert ids(sched.complete("run1")) == ["q1"]
    assert ids(sched.complete("q1")) == ["q0"]
    assert sched.complete("run0") == []  # the orphan is forgotten
    assert sched.remove_replica("nope") == ([], [])


def test_removing_the_last_replica_parks_its_queue_until_a_replica_registers():
    sched = create_scheduler(FakeClock(), policy="ssjf", batching="none")
    sched.add_replica("r0")
    sched.enqueue(create_meta("run", 1))
    sched.enqueue(create_meta("waiting", 2))
    orphans, assignments = sched.remove_replica("r0")
    assert [m.request_id for m in orphans] == ["run"] and assignments == []
    assert ids(sched.add_replica("r1")) == ["waiting"]


@pytest.mark.parametrize("policy", ["fcfs", "ssjf"])
def test_a_requeued_run_keeps_its_turn_instead_of_handing_its_slot_to_the_next(policy):
    # Its replica bounced the call (it never ran): the request goes back by its own arrival time,
    # and only then does the freed slot take the best waiting request, which is the requeued one.
    sched = create_scheduler(FakeClock(), policy=policy, batching="none")
    sched.add_replica("r0")
    sched.enqueue(create_meta("first", 5, arrival=1))
    sched.enqueue(create_meta("second", 50, arrival=2))
    assert ids(sched.requeue(create_meta("first", 5, arrival=1))) == ["first"]
    assert sched.snapshot()["num_queued"] == 1 and sched.snapshot()["num_running"] == 1
    assert ids(sched.complete("first")) == ["second"]


def test_requeue_ignores_the_queue_cap_and_leaves_a_waiting_request_in_place():
    sched = create_scheduler(FakeClock(), policy="fcfs", batching="none", max_queued=1)
    sched.add_replica("r0")
    sched.enqueue(create_meta("run", 5, arrival=1))
    sched.enqueue(create_meta("waiting", 5, arrival=2))  # the queue is full now
    orphans, _ = sched.remove_replica("r0")  # its run is orphaned; the caller requeues it
    assert sched.requeue(orphans[0]) == []  # admitted once: no QueueFullError
    assert sched.requeue(create_meta("waiting", 5, arrival=2)) == []  # already waiting: nothing changes
    assert sched.snapshot()["num_queued"] == 2
    assert ids(sched.add_replica("r1")) == ["run"]


@pytest.mark.parametrize("balancer", ["round-robin", "least-work", "power-of-two", "late-binding"])
@pytest.mark.parametrize("batching", ["none", "static", "continuous"])
def test_cached_loads_always_equal_a_fresh_computation(balancer, batching):
    # The scheduler caches per-replica load and queue length for speed; after any sequence of
    # operations they must equal what it would compute from scratch.
    rng = random.Random(f"{balancer}-{batching}")
    clock = FakeClock()
    sched = Scheduler(SchedulerConfig(policy="ssjf", batching=batching, max_batch=3, balancer=balancer),
                      clock=clock)
    for r in range(4):
        sched.add_replica(f"r{r}")
    running: set[str] = set()
    queued: set[str] = set()
    for step in range(400):
        clock.now = float(step)
        op = rng.random()
        if op < 0.5:
            rid = f"q{step}"
            got = sched.enqueue(create_meta(rid, rng.randint(1, 500), clock.now))
            queued.add(rid)
        elif op < 0.8 and running:
            got = sched.complete(rng.choice(sorted(running)))
        elif op < 0.9 and queued:
            got = sched.cancel(rng.choice(sorted(queued)))
        elif op < 0.95 and len(sched.replicas) > 1:
            orphans, got = sched.remove_replica(rng.choice(sorted(sched.replicas)))
            running -= {m.request_id for m in orphans}
        else:
            got = sched.add_replica(f"n{step}")
        for a in got:
            queued.discard(a.request_id)
            running.add(a.request_id)
        queued = {q for q in queued if q in sched.requests}
        running = {q for q in running if q in sched.requests}
        assert sched._loads == [sched._load(rid) for rid in sched._ids]
        assert sched._qlens == [len(sched.replicas[rid].queue) for rid in sched._ids]
        assert list(sched.replicas) == sched._ids
