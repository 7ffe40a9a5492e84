"""Queue policies of the scheduling core, as scenarios: who runs next when a slot frees."""

import pytest

from router import QueueFullError, RequestMeta, Scheduler, SchedulerConfig
from router.policies import create_request_queue
from router.request import RequestState
from tests.factories import FakeClock, create_meta, create_scheduler


def run_order(sched: Scheduler, clock: FakeClock, requests: list[RequestMeta], *, step: float = 1.0) -> list[str]:
    """One replica with one slot: a blocker holds the slot while ``requests`` queue; then complete
    whatever runs, one at a time, and return the order in which the queued requests ran."""
    sched.add_replica("r0")
    first = sched.enqueue(create_meta("blocker", 0, clock.now))
    assert [a.request_id for a in first] == ["blocker"]
    for m in requests:
        assert sched.enqueue(m) == []
    order, running = [], "blocker"
    while True:
        clock.now += step
        nxt = sched.complete(running)
        if not nxt:
            return order
        running = nxt[0].request_id
        order.append(running)


def sched_for(policy: str, clock: FakeClock, **kw) -> Scheduler:
    return create_scheduler(clock, policy=policy, batching="none", **kw)


def test_ssjf_runs_predicted_50_5_20_as_b_c_a():
    clock = FakeClock()
    order = run_order(sched_for("ssjf", clock), clock, [create_meta("a", 50), create_meta("b", 5), create_meta("c", 20)])
    assert order == ["b", "c", "a"]


def test_fcfs_runs_in_arrival_order_whatever_the_prediction():
    clock = FakeClock()
    order = run_order(sched_for("fcfs", clock), clock, [create_meta("a", 50, 1.0), create_meta("b", 5, 2.0), create_meta("c", 20, 3.0)])
    assert order == ["a", "b", "c"]


def test_oracle_orders_by_true_length_not_prediction():
    clock = FakeClock()
    truth = {"blocker": 1, "a": 1, "b": 100, "c": 10}
    sched = Scheduler(SchedulerConfig(policy="oracle", batching="none"), clock=clock,
                      truth=lambda m: truth[m.request_id])
    order = run_order(sched, clock, [create_meta("a", 50), create_meta("b", 5), create_meta("c", 20)])
    assert order == ["a", "c", "b"]


def test_oracle_without_truth_is_refused():
    with pytest.raises(ValueError, match="oracle"):
        Scheduler(SchedulerConfig(policy="oracle"))


def test_ssjf_ties_go_to_the_earlier_arrival_then_the_smaller_id():
    clock = FakeClock()
    order = run_order(sched_for("ssjf", clock), clock,
                      [create_meta("z", 7, arrival=2.0), create_meta("y", 7, arrival=1.0), create_meta("x2", 7, 1.0), create_meta("x1", 7, 1.0)])
    assert order == ["x1", "x2", "y", "z"]


def test_ssjf_caps_the_prediction_at_max_tokens():
    clock = FakeClock()
    order = run_order(sched_for("ssjf", clock), clock, [create_meta("mid", 20), create_meta("capped", 1000, max_tokens=10)])
    assert order == ["capped", "mid"]


def test_linear_aging_lets_an_old_long_request_beat_a_new_short_one():
    # key = predicted + rate * arrival: a (50 tokens, t=0) vs b (5 tokens, t=100).
    clock = FakeClock(100.0)
    reqs = [create_meta("a", 50, arrival=0.0), create_meta("b", 5, arrival=100.0)]
    slow = sched_for("ssjf-aging", clock, aging_rule="linear", aging_rate=0.1)  # b: 5 + 10 = 15 < 50
    assert run_order(slow, clock, reqs) == ["b", "a"]
    clock = FakeClock(100.0)
    fast = sched_for("ssjf-aging", clock, aging_rule="linear", aging_rate=1.0)  # b: 5 + 100 = 105 > 50
    assert run_order(fast, clock, reqs) == ["a", "b"]


def test_linear_aging_rate_zero_is_ssjf():
    clock = FakeClock()
    order = run_order(sched_for("ssjf-aging", clock, aging_rule="linear", aging_rate=0.0), clock,
                      [create_meta("a", 50), create_meta("b", 5), create_meta("c", 20)])
    assert order == ["b", "c", "a"]


def test_threshold_aging_puts_requests_past_the_threshold_first_oldest_first():
    q = create_request_queue("ssjf-aging", aging_rule="threshold", aging_threshold_s=30.0)
    for m in (create_meta("a", 50, arrival=0.0), create_meta("b", 5, arrival=20.0), create_meta("c", 80, arrival=5.0)):
        q.push(RequestState(m, m.arrival_at))
    assert q.peek(25.0).meta.request_id == "b"  # nobody has waited 30 s: shortest first
    assert q.peek(31.0).meta.request_id == "a"  # a waited 31 s
    assert q.pop(40.0).meta.request_id == "a"  # a and c are past it: the older first
    assert q.pop(40.0).meta.request_id == "c"
    assert q.pop(40.0).meta.request_id == "b"
    assert q.pop(40.0) is None


def test_response_ratio_prefers_the_highest_wait_over_length():
    q = create_request_queue("ssjf-aging", aging_rule="response-ratio", aging_rate=1.0)
    for m in (create_meta("long_old", 50, arrival=0.0), create_meta("short_new", 5, arrival=95.0)):
        q.push(RequestState(m, m.arrival_at))
    # at t=100: long_old 1 + 100/50 = 3; short_new 1 + 5/5 = 2
    assert q.peek(100.0).meta.request_id == "long_old"
    # at t=96: long_old 1 + 96/50 = 2.92; short_new 1 + 1/5 = 1.2, still long_old; at t=95.0 + tiny?
    q2 = create_request_queue("ssjf-aging", aging_rule="response-ratio", aging_rate=1.0)
    for m in (create_meta("long_old", 50, arrival=0.0), create_meta("short_mid", 5, arrival=50.0)):
        q2.push(RequestState(m, m.arrival_at))
    # at t=100: long_old 3; short_mid 1 + 50/5 = 11
    assert q2.peek(100.0).meta.request_id == "short_mid"


def test_response_ratio_needs_a_positive_rate():
    with pytest.raises(ValueError, match="rate"):
        create_request_queue("ssjf-aging", aging_rule="response-ratio", aging_rate=0.0)


@pytest.mark.parametrize("policy,rule,expect_served", [
    ("ssjf", "linear", False), ("ssjf-aging", "linear", True),
    ("ssjf-aging", "threshold", True), ("ssjf-aging", "response-ratio", True),
])
def test_aging_stops_a_stream_of_short_jobs_from_starving_a_long_one(policy, rule, expect_served):
    # One slot; "long" (1000 tokens) waits while a short job (10 tokens) arrives every second and
    # each job runs one second. Plain SSJF never picks it; every aging rule does within 60 s.
    clock = FakeClock()
    sched = sched_for(policy, clock, aging_rule=rule, aging_rate=50.0, aging_threshold_s=30.0)
    sched.add_replica("r0")
    running = sched.enqueue(create_meta("blocker", 0, 0.0))[0].request_id
    sched.enqueue(create_meta("long", 1000, 0.0))
    served_at = None
    for t in range(1, 61):
        clock.now = float(t)
        sched.enqueue(create_meta(f"s{t}", 10, float(t)))
        running = sched.complete(running)[0].request_id
        if running == "long":
            served_at = t
            break
    assert (served_at is not None) == expect_served
    if expect_served:
        assert served_at <= 31


def test_empty_queue_pops_nothing_and_a_completion_dispatches_nothing():
    for policy, kw in [("fcfs", {}), ("ssjf", {}), ("ssjf-aging", {"aging_rule": "threshold"}),
                       ("ssjf-aging", {"aging_rule": "response-ratio", "aging_rate": 1.0})]:
        q = create_request_queue(policy, **kw)
        assert len(q) == 0 and q.peek(0.0) is None and q.pop(0.0) is None and q.queued_work == 0
    clock = FakeClock()
    sched = sched_for("ssjf", clock)
    sched.add_replica("r0")
    sched.enqueue(create_meta("only", 3))
    assert sched.complete("only", 3) == []
    assert sched.snapshot()["num_queued"] == 0 and sched.snapshot()["num_running"] == 0


def test_requests_wait_in_the_shared_queue_until_a_replica_registers():
    clock = FakeClock()
    sched = sched_for("ssjf", clock)
    assert sched.enqueue(create_meta("a", 50)) == []
    assert sched.enqueue(create_meta("b", 5)) == []
    assert [a.request_id for a in sched.add_replica("r0")] == ["b"]


def test_queue_cap_refuses_past_max_queued_and_running_requests_do_not_count():
    clock = FakeClock()
    sched = sched_for("ssjf", clock, max_queued=2)
    sched.add_replica("r0")
    sched.enqueue(create_meta("run", 1))  # runs: not queued
    sched.enqueue(create_meta("q1", 1))
    sched.enqueue(create_meta("q2", 1))
    with pytest.raises(QueueFullError, match="max_queued=2"):
        sched.enqueue(create_meta("q3", 1))
    sched.complete("run")  # q1 starts: room for one more
    sched.enqueue(create_meta("q3", 1))


def test_cancel_a_queued_request_it_never_runs():
    clock = FakeClock()
    sched = sched_for("ssjf", clock)
    order_before_cancel = []
    sched.add_replica("r0")
    sched.enqueue(create_meta("blocker", 0))
    sched.enqueue(create_meta("a", 50))
    sched.enqueue(create_meta("b", 5))
    assert sched.cancel("b") == []
    order_before_cancel = [a.request_id for a in sched.complete("blocker")]
    assert order_before_cancel == ["a"]
    assert sched.cancel("b") == []  # idempotent


@pytest.mark.parametrize("policy", ["fcfs", "ssjf"])
def test_a_request_cancelled_and_queued_again_meets_its_dead_entry_without_error(policy):
    """A client the router dropped submits its request again (same id, same arrival): the heap still
    holds the dead entry of its first stay, with the same key; it must never compare the two."""
    sched = create_scheduler(policy=policy)
    sched.enqueue(create_meta("y", 5, 1))
    sched.enqueue(create_meta("x", 5, 2))
    sched.cancel("x")
    sched.enqueue(create_meta("x", 5, 2))
    assert [a.request_id for a in sched.add_replica("r1")] == ["y"]
    assert [a.request_id for a in sched.complete("y")] == ["x"]


def test_cancel_a_running_request_frees_its_slot_for_the_next():
    clock = FakeClock()
    sched = sched_for("ssjf", clock)
    sched.add_replica("r0")
    sched.enqueue(create_meta("running", 0))
    sched.enqueue(create_meta("next", 5))
    assert [a.request_id for a in sched.cancel("running")] == ["next"]


def test_completing_a_queued_request_is_an_error_and_unknown_ids_are_ignored():
    clock = FakeClock()
    sched = sched_for("ssjf", clock)
    sched.add_replica("r0")
    sched.enqueue(create_meta("running", 0))
    sched.enqueue(create_meta("queued", 5))
    with pytest.raises(ValueError, match="queued, not running"):
        sched.complete("queued")
    assert sched.complete("nobody") == []
    assert [a.request_id for a in sched.complete("running")] == ["queued"]


def test_duplicate_request_ids_are_refused():
    sched = sched_for("ssjf", FakeClock())
    sched.add_replica("r0")
    sched.enqueue(create_meta("a", 1))
    with pytest.raises(ValueError, match="already scheduled"):
        sched.enqueue(create_meta("a", 1))


def test_bad_names_list_the_valid_choices():
    with pytest.raises(ValueError, match="choose one of: fcfs, ssjf, ssjf-aging, oracle"):
        SchedulerConfig(policy="sjf")
    with pytest.raises(ValueError, match="round-robin, least-work, power-of-two, late-binding"):
        SchedulerConfig(balancer="random")
    with pytest.raises(ValueError, match="none, static, continuous"):
        SchedulerConfig(batching="dynamic")
    with pytest.raises(ValueError, match="aging_rate must be >= 0, got -1"):
        SchedulerConfig(aging_rate=-1)
