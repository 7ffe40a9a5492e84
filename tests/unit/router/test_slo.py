"""slo: SSJF that serves first a request whose SLO deadline is near, and defers or sheds one that
cannot meet it, in the pure scheduling core (docs/slo.md).

A request's latest feasible start is ``min(arrival + slo_jct_s - service, arrival + slo_ttft_s -
first_token_s)`` with ``service = first_token_s + predicted tokens x seconds_per_token``. Within
``slo_guard_s`` of it the request is urgent (urgent ones first, earliest latest start first; the rest
shortest predicted first); past it, it is infeasible: deferred behind every feasible request, or shed
with a Rejection. The seconds-per-token estimate learns from completions.
"""

import random
from dataclasses import replace

import pytest

from router import Assignment, Rejection, RequestStatus, SchedulerConfig
from router.policies import ServiceEstimate
from tests.factories import FakeClock, create_meta, create_scheduler


def meta(rid, predicted, arrival=0.0, *, jct=None, ttft=None):
    return replace(create_meta(rid, predicted, arrival), slo_jct_s=jct, slo_ttft_s=ttft)


def slo(clock, replicas=1, **kw):
    """One slot per replica; 10 ms per predicted token and no first-token time, so a request predicted
    to need N tokens is predicted to run N / 100 seconds."""
    config = dict(policy="slo", batching="none", slo_seconds_per_token=0.01, slo_first_token_s=0.0,
                  slo_guard_s=1.0, slo_infeasible="defer")
    config.update(kw)
    sched = create_scheduler(clock, **config)
    for r in range(replicas):
        sched.add_replica(f"r{r}")
    return sched


def ran(decisions) -> list[str]:
    return [d.request_id for d in decisions if type(d) is Assignment]


def rejected(decisions) -> list[str]:
    return [d.request_id for d in decisions if type(d) is Rejection]


def blocked(clock, **kw):
    """A scheduler whose one slot is busy with 'blocker'; completing it without a token count teaches nothing."""
    sched = slo(clock, **kw)
    assert ran(sched.enqueue(meta("blocker", 100))) == ["blocker"]
    return sched


@pytest.mark.parametrize("now, first", [(3.5, "short"), (4.5, "long")])
def test_an_urgent_request_jumps_ahead_of_a_shorter_one(now, first):
    # 'long' (500 tokens: 5 s) must finish by 10 s, so it must start by 5 s; urgent from 4 s (guard 1 s).
    clock = FakeClock()
    sched = blocked(clock)
    sched.enqueue(meta("short", 10))
    sched.enqueue(meta("long", 500, jct=10.0))
    clock.now = now
    assert ran(sched.complete("blocker")) == [first]


def test_urgent_requests_go_earliest_latest_start_first_whatever_their_length():
    clock = FakeClock()
    sched = blocked(clock, slo_guard_s=100.0)  # everything with an SLO is urgent
    sched.enqueue(meta("late start", 10, jct=30.0))  # latest start 29.9
    sched.enqueue(meta("early start", 900, jct=20.0))  # latest start 11
    sched.enqueue(meta("no slo", 1))
    clock.now = 1.0
    order = ran(sched.complete("blocker"))
    clock.now = 2.0
    order += ran(sched.complete(order[-1]))
    order += ran(sched.complete(order[-1]))
    assert order == ["early start", "late start", "no slo"]


def test_a_ttft_objective_makes_a_request_urgent_whatever_its_length():
    clock = FakeClock()
    sched = blocked(clock, slo_first_token_s=0.5)
    sched.enqueue(meta("short", 10))
    sched.enqueue(meta("long, first token by 3 s", 4000, ttft=3.0))  # latest start 2.5; urgent from 1.5
    clock.now = 2.0
    assert ran(sched.complete("blocker")) == ["long, first token by 3 s"]


def test_shed_mode_drops_a_request_that_would_miss_even_if_started_now_with_a_rejection():
    clock = FakeClock()
    sched = blocked(clock, slo_infeasible="shed")
    sched.enqueue(meta("doomed", 500, jct=6.0))  # 5 s of work, so it must start by 1 s
    sched.enqueue(meta("fine", 300))
    clock.now = 2.0
    decisions = sched.complete("blocker")
    assert decisions == [Rejection("doomed", "slo_unattainable"), *decisions[1:]]
    assert ran(decisions) == ["fine"]
    assert "doomed" not in sched.requests and sched.num_queued == 0 and sched.num_rejected == 1
    assert sched.cancel("doomed") == []  # forgotten, like a cancelled request


def test_shed_mode_refuses_on_arrival_a_request_that_cannot_make_it():
    clock = FakeClock(5.0)
    sched = slo(clock, slo_infeasible="shed")
    assert sched.enqueue(meta("too long for its SLO", 1000, 5.0, jct=2.0)) == [Rejection("too long for its SLO")]
    assert sched.num_queued == 0 and not sched.requests
    # it even had a free slot: the policy does not start work it predicts is wasted
    assert ran(sched.enqueue(meta("ok", 100, 5.0, jct=2.0))) == ["ok"]


def test_shed_mode_drops_a_waiting_request_at_the_next_decision_even_without_a_free_slot():
    clock = FakeClock()
    sched = blocked(clock, slo_infeasible="shed")
    sched.enqueue(meta("doomed", 500, jct=6.0))
    clock.now = 1.5
    assert sched.enqueue(meta("newcomer", 10)) == [Rejection("doomed")]
    assert sched.num_queued == 1 and sched.num_running == 1


def test_defer_mode_serves_an_infeasible_request_only_after_every_feasible_one():
    clock = FakeClock()
    sched = blocked(clock)
    sched.enqueue(meta("doomed but shortest", 5, jct=0.01))
    sched.enqueue(meta("a", 100))
    sched.enqueue(meta("b", 200, jct=100.0))
    order = []
    last = "blocker"
    for t in (1.0, 2.0, 3.0):
        clock.now = t
        order += ran(sched.complete(last))
        last = order[-1]
    assert order == ["a", "b", "doomed but shortest"]
    assert sched.num_rejected == 0


def test_the_snapshot_shows_deferred_and_shed_requests():
    clock = FakeClock()
    sched = blocked(clock)
    sched.enqueue(meta("doomed", 5, jct=0.01))
    sched.enqueue(meta("fine", 5))
    clock.now = 1.0
    assert ran(sched.complete("blocker")) == ["fine"]
    assert sched.snapshot()["slo"] == {"seconds_per_token": 0.01, "num_observed": 0, "num_rejected": 0,
                                       "num_deferred": 1}
    assert "slo" not in create_scheduler(policy="ssjf").snapshot()


def test_defer_mode_takes_a_feasible_request_from_another_queue_before_its_own_deferred_one():
    clock = FakeClock()
    sched = slo(clock, replicas=2, balancer="round-robin")
    assert sorted(ran(sched.enqueue(meta("x", 100))) + ran(sched.enqueue(meta("y", 100)))) == ["x", "y"]
    sched.enqueue(meta("deferred", 5, jct=0.01))  # r0's queue (round robin)
    sched.enqueue(meta("feasible", 50))  # r1's queue
    assert sched.requests["deferred"].queue_replica_id != sched.requests["feasible"].queue_replica_id
    runner = next(rid for rid in ("x", "y") if sched.requests[rid].replica_id
                  == sched.requests["deferred"].queue_replica_id)
    clock.now = 1.0
    assert ran(sched.complete(runner)) == ["feasible"]


def test_without_slos_the_policy_is_ssjf():
    rng = random.Random(7)
    orders = {}
    for policy in ("ssjf", "slo"):
        clock = FakeClock()
        sched = create_scheduler(clock, policy=policy, batching="continuous", max_batch=2)
        sched.add_replica("r0")
        sched.add_replica("r1")
        rng.seed(7)
        order, running = [], []
        for i in range(200):
            clock.now = i * 0.1
            if running and rng.random() < 0.45:
                decisions = sched.complete(running.pop(rng.randrange(len(running))), 50)
            else:
                decisions = sched.enqueue(create_meta(f"q{i}", rng.randint(1, 500), clock.now))
            assert all(type(d) is Assignment for d in decisions)
            order += ran(decisions)
            running += ran(decisions)
        orders[policy] = order
    assert orders["slo"] == orders["ssjf"] and len(orders["ssjf"]) > 50


def test_the_seconds_per_token_estimate_learns_from_completions():
    clock = FakeClock()
    sched = slo(clock, slo_seconds_per_token=0.1, slo_first_token_s=0.2, slo_infeasible="shed")
    est = sched.estimate
    assert est.service_s(meta("m", 100)) == pytest.approx(0.2 + 10.0)
    # A 9 s SLO for 100 predicted tokens is hopeless at the starting 0.1 s/token: refused on arrival.
    assert sched.enqueue(meta("early", 100, clock.now, jct=9.0)) == [Rejection("early")]
    # Runs of 100 tokens that take 1.2 s from dispatch to finish report: 0.01 s per token after the
    # first-token time.
    for i in range(200):
        assert ran(sched.enqueue(meta(f"r{i}", 100, clock.now))) == [f"r{i}"]
        clock.advance(1.2)
        sched.complete(f"r{i}", 100)
    assert est.learned_seconds_per_token == pytest.approx(0.01, rel=1e-3)
    assert est.seconds_per_token == pytest.approx(0.01, rel=ServiceEstimate.REKEY_TOLERANCE)
    assert est.num_observed == 200 and est.version > 0
    assert ran(sched.enqueue(meta("late", 100, clock.now, jct=9.0))) == ["late"]  # now it fits


def test_the_estimate_learns_only_from_what_the_router_saw():
    clock = FakeClock()
    sched = slo(clock, slo_seconds_per_token=0.05)
    before = sched.estimate.learned_seconds_per_token
    sched.enqueue(meta("no count", 100))
    clock.advance(100.0)
    sched.complete("no count")  # no reported tokens: nothing to learn
    sched.enqueue(meta("cancelled", 100))
    clock.advance(100.0)
    sched.cancel("cancelled")
    assert sched.adopt("r0", meta("adopted", 100), attempt=99)  # its dispatch happened before the router knew
    clock.advance(100.0)
    sched.complete("adopted", 1, attempt=99)
    assert sched.estimate.learned_seconds_per_token == before and sched.estimate.num_observed == 0


@pytest.mark.parametrize("learned, first", [(False, "long"), (True, "short")])
def test_an_estimate_that_moves_re_keys_the_waiting_requests(learned, first):
    clock = FakeClock()
    sched = blocked(clock, slo_seconds_per_token=1.0, slo_guard_s=1.0)
    # At 1 s/token 'long' (20 tokens, due at 100) must start by 80: urgent at 79.5, before 'short'.
    sched.enqueue(meta("long", 20, jct=100.0))
    sched.enqueue(meta("short", 1, jct=100.0))
    if learned:  # the cluster turns out far faster: 'long' may start as late as ~100, not urgent yet
        sched.estimate.observe(duration_s=0.0, num_tokens=10 ** 9)
        assert sched.estimate.seconds_per_token < 0.01
    clock.now = 79.5
    assert ran(sched.complete("blocker")) == [first]


def test_other_policies_never_reject():
    clock = FakeClock()
    sched = create_scheduler(clock, policy="ssjf")
    sched.add_replica("r0")
    sched.enqueue(meta("blocker", 10))
    sched.enqueue(meta("hopeless", 1000, jct=0.001))
    clock.now = 50.0
    assert ran(sched.complete("blocker")) == ["hopeless"]
    assert sched.estimate is None


@pytest.mark.parametrize("kwargs, words", [
    ({"slo_infeasible": "drop"}, ["slo_infeasible", "'drop'", "defer", "shed"]),
    ({"slo_guard_s": -1.0}, ["slo_guard_s", "-1"]),
    ({"slo_seconds_per_token": float("nan")}, ["slo_seconds_per_token", "nan"]),
    ({"slo_first_token_s": float("inf")}, ["slo_first_token_s", "inf"]),
])
def test_bad_slo_knobs_name_the_knob_and_the_value(kwargs, words):
    with pytest.raises(ValueError) as e:
        SchedulerConfig(policy="slo", **kwargs)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_a_rejected_request_is_marked_rejected():
    clock = FakeClock()
    sched = blocked(clock, slo_infeasible="shed")
    sched.enqueue(meta("doomed", 500, jct=6.0))
    state = sched.requests["doomed"]
    clock.now = 2.0
    sched.complete("blocker")
    assert state.status is RequestStatus.REJECTED and state.finished_at == 2.0
