"""srpt: shortest predicted remaining first, with limited preemption, in the pure scheduling core.

At its progress point (every K tokens, with its re-predicted remaining length) a running request is
preempted only for a waiting one predicted ``preempt_margin`` times shorter, at most
``max_preemptions`` times, never in its last ``preempt_min_remaining_tokens`` tokens, and never once
it is ``srpt_aging_threshold_s`` old (the starvation guard, which also puts it first in the queue).
A preempted request waits keyed by its re-predicted remaining length, keeping its progress.
"""

import math

import pytest

from router import Assignment, Policy, RequestStatus, SchedulerConfig
from router.request import Preemption
from tests.factories import FakeClock, create_meta, create_scheduler


def srpt(clock=None, replicas=1, **kw):
    config = dict(policy="srpt", batching="none", preempt_margin=2.0, max_preemptions=1,
                  preempt_min_remaining_tokens=16, srpt_aging_threshold_s=math.inf)
    config.update(kw)
    sched = create_scheduler(clock or FakeClock(), **config)
    for r in range(replicas):
        sched.add_replica(f"r{r}")
    return sched


def decided(decisions) -> list[tuple[str, str]]:
    """Decisions as ("preempt" | "run", request id), in order."""
    return [("preempt" if type(d) is Preemption else "run", d.request_id) for d in decisions]


def test_a_short_arrival_preempts_the_long_running_request_once_and_it_resumes_with_its_progress():
    clock = FakeClock()
    sched = srpt(clock)
    assert decided(sched.enqueue(create_meta("long", 1000))) == [("run", "long")]
    clock.now = 1.0
    assert sched.enqueue(create_meta("short", 20, 1.0)) == []  # decided at the long one's next progress point
    first = sched.progress("long", 64, 900.0)
    assert decided(first) == [("preempt", "long"), ("run", "short")]
    assert first[0] == Preemption("long", "r0", first[0].attempt) and first[1].replica_id == "r0"
    long = sched.requests["long"]
    assert long.status is RequestStatus.QUEUED and long.tokens_done == 64 and long.num_preemptions == 1
    assert long.predicted_remaining == 900.0  # it waits keyed by its latest re-prediction
    # the short one ends: the long one resumes, and (preempted once, M = 1) is not preempted again
    clock.now = 2.0
    resumed = sched.complete("short", 20)
    assert decided(resumed) == [("run", "long")] and resumed[0].attempt != first[0].attempt
    assert sched.enqueue(create_meta("short2", 5, 2.0)) == []
    assert sched.progress("long", 128, 800.0) == []
    assert decided(sched.complete("long", 1000)) == [("run", "short2")]


def test_a_waiting_request_must_be_shorter_by_the_margin():
    sched = srpt(preempt_margin=3.0)
    sched.enqueue(create_meta("running", 200))
    sched.enqueue(create_meta("a bit shorter", 40))
    assert sched.progress("running", 10, 90.0) == []  # 90 < 3 x 40
    sched.enqueue(create_meta("much shorter", 29))
    assert decided(sched.progress("running", 20, 90.0)) == [("preempt", "running"), ("run", "much shorter")]


def test_never_preempted_in_its_last_tokens():
    sched = srpt(preempt_min_remaining_tokens=50)
    sched.enqueue(create_meta("finishing", 400))
    sched.enqueue(create_meta("short", 1))
    assert sched.progress("finishing", 360, 40.0) == []  # predicted to need 40 more: within its last 50
    # nor when its max_tokens leaves it at most that many, whatever the prediction says
    capped = srpt(preempt_min_remaining_tokens=50)
    capped.enqueue(create_meta("capped", 400, max_tokens=420))
    capped.enqueue(create_meta("short", 1))
    assert capped.progress("capped", 380, 300.0) == []
    assert capped.requests["capped"].predicted_remaining == 40  # the cap bounds the prediction too


def test_a_re_prediction_that_grows_preempts_the_request_at_its_progress_point():
    sched = srpt(max_preemptions=2)
    sched.enqueue(create_meta("looked short", 30))
    sched.enqueue(create_meta("waiting", 40))
    assert sched.progress("looked short", 16, 30.0) == []  # 30 < 2 x 40
    assert decided(sched.progress("looked short", 32, 500.0)) == [("preempt", "looked short"), ("run", "waiting")]
    assert sched.requests["looked short"].tokens_done == 32


def test_the_shortest_waiting_request_of_any_queue_takes_the_slot():
    sched = srpt(replicas=2)
    sched.enqueue(create_meta("a", 600))
    sched.enqueue(create_meta("b", 600))
    sched.enqueue(create_meta("c", 100))
    sched.enqueue(create_meta("d", 20))
    queues = {s.meta.request_id: s.queue_replica_id for s in sched.requests.values() if s.queue_replica_id}
    assert queues["c"] != queues["d"]  # least-work spread them over both queues
    got = sched.progress("a", 16, 590.0)
    assert decided(got) == [("preempt", "a"), ("run", "d")]
    assert got[1].replica_id == sched.requests["a"].replica_id == "r0"  # the slot it freed
    assert sched.requests["a"].status is RequestStatus.QUEUED and sched.num_queued == 2 and sched.num_running == 2


def test_starvation_is_bounded_by_the_guard():
    # One slot; "long" runs first and reports progress every second; a short job (10 tokens) arrives
    # every second and each runs one second. Without a guard, "long" is preempted by the first short
    # job and never runs again within 60 s; with a 30 s guard it runs again at 30 s and, that old,
    # is not preempted again (even with preemptions to spare).
    def run(threshold):
        clock = FakeClock()
        sched = srpt(clock, srpt_aging_threshold_s=threshold, max_preemptions=100)
        sched.enqueue(create_meta("long", 1000, 0.0))
        running, served, preempted, tokens = "long", [], 0, 0
        for t in range(1, 61):
            clock.now = float(t)
            decisions = sched.enqueue(create_meta(f"s{t}", 10, float(t)))
            if running == "long":
                tokens += 10
                decisions += sched.progress("long", tokens, 1000.0 - tokens)
            else:
                decisions += sched.complete(running)
            for d in decisions:
                if type(d) is Preemption:
                    preempted += d.request_id == "long"
                else:
                    running = d.request_id
                    served += [t] if running == "long" else []
        return served, preempted, sched.requests["long"].status

    assert run(math.inf) == ([], 1, RequestStatus.QUEUED)
    assert run(30.0) == ([30], 1, RequestStatus.RUNNING)


def test_a_completion_that_raced_its_preemption_finishes_the_request():
    sched = srpt()
    sched.enqueue(create_meta("long", 1000))
    attempt = sched.requests["long"].attempt
    sched.enqueue(create_meta("short", 10))
    assert decided(sched.progress("long", 900, 100.0)) == [("preempt", "long"), ("run", "short")]
    # its replica sent the last token before it could stop the run
    assert sched.complete("long", 1000, attempt=attempt) == []
    assert "long" not in sched.requests and sched.num_queued == 0 and sched.num_running == 1


def test_progress_of_an_unknown_or_stale_run_and_under_other_policies_changes_nothing():
    sched = srpt()
    sched.enqueue(create_meta("a", 100))
    attempt = sched.requests["a"].attempt
    assert sched.progress("a", 10, 50.0, attempt=attempt + 1) == []  # a stale attempt
    assert sched.progress("nobody", 10, 50.0) == []
    assert sched.requests["a"].predicted_remaining == 100.0
    ssjf = create_scheduler(FakeClock(), policy="ssjf")
    ssjf.add_replica("r0")
    ssjf.enqueue(create_meta("a", 100))
    assert ssjf.progress("a", 10, 1.0) == [] and ssjf.requests["a"].predicted_remaining == 100.0
    assert all(type(d) is Assignment for d in ssjf.enqueue(create_meta("b", 1)))  # no preemption in ssjf


def test_max_preemptions_zero_is_srpt_order_without_preemption():
    sched = srpt(max_preemptions=0)
    sched.enqueue(create_meta("long", 1000))
    sched.enqueue(create_meta("mid", 50))
    sched.enqueue(create_meta("short", 1))
    assert sched.progress("long", 16, 984.0) == []
    assert decided(sched.complete("long")) == [("run", "short")]


def test_srpt_knobs_are_validated():
    assert Policy.parse("srpt") is Policy.SRPT
    with pytest.raises(ValueError, match="static batch frees no slot"):
        SchedulerConfig(policy="srpt", batching="static", max_batch=4)
    for knob, value, message in [("preempt_margin", 0.5, "preempt_margin must be >= 1"),
                                 ("max_preemptions", -1, "max_preemptions must be >= 0"),
                                 ("repredict_every_tokens", -1, "repredict_every_tokens must be >= 0"),
                                 ("preempt_min_remaining_tokens", -1, "preempt_min_remaining_tokens must be >= 0"),
                                 ("srpt_aging_threshold_s", -1.0, "srpt_aging_threshold_s must be >= 0")]:
        with pytest.raises(ValueError, match=message):
            SchedulerConfig(policy="srpt", **{knob: value})
