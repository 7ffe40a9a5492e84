"""The ingress's deadline rule (deployments.deadlines.RunDeadlines) on a fake clock: which deadline
bounds each wait, and the 504 each one gives."""

from types import SimpleNamespace

import pytest

from deployments.config import IngressSettings
from deployments.deadlines import Deadline, RunDeadlines, timeout_error


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self):
        return self.now


def deadlines(clock, request_at=None, first_token_s=10.0, token_s=3.0, first_chunk_s=5.0):
    return RunDeadlines(request_at=request_at, first_token_s=first_token_s, token_s=token_s,
                        first_chunk_s=first_chunk_s, request_s=None if request_at is None else 60.0, clock=clock)


def test_waiting_for_the_router_only_the_request_deadline_applies():
    clock = FakeClock()
    assert deadlines(clock).next_wait(None) == (None, None)
    assert deadlines(clock, request_at=1060.0).next_wait(None) == (1060.0, Deadline.REQUEST)


def test_a_dispatch_waits_for_its_first_chunk_then_its_first_token_then_each_next_one():
    clock = FakeClock()
    d = deadlines(clock)
    d.dispatched()
    assert d.next_wait(False) == (1005.0, Deadline.FIRST_CHUNK)
    clock.now += 1  # Started arrived: no proof of progress, the first-token clock still runs from the dispatch
    assert d.next_wait(True) == (1010.0, Deadline.FIRST_TOKEN)
    clock.now += 6
    d.output()
    assert d.next_wait(True) == (1010.0, Deadline.TOKEN)  # 3 s from now for the next output
    clock.now += 2
    assert d.next_wait(True) == (1012.0, Deadline.TOKEN)


def test_the_first_token_deadline_bounds_a_long_first_chunk_wait():
    clock = FakeClock()
    d = deadlines(clock, first_token_s=2.0, first_chunk_s=30.0)
    d.dispatched()
    assert d.next_wait(False) == (1002.0, Deadline.FIRST_TOKEN)


def test_a_new_dispatch_restarts_the_per_dispatch_clocks_but_not_the_request_clock():
    clock = FakeClock()
    d = deadlines(clock, request_at=1035.0)
    d.dispatched()
    d.output()
    clock.now += 20
    assert d.next_wait(True) == (1023.0, Deadline.TOKEN)
    d.dispatched()  # a retry elsewhere: no output yet from this one
    assert d.next_wait(True) == (1030.0, Deadline.FIRST_TOKEN)
    clock.now += 9
    d.output()
    assert d.next_wait(True) == (1032.0, Deadline.TOKEN)
    clock.now += 4
    d.output()
    assert d.next_wait(True) == (1035.0, Deadline.REQUEST)  # the request ends before 1033 + 3 s


def test_when_two_deadlines_fall_together_the_one_that_ends_the_request_wins():
    clock = FakeClock()
    d = deadlines(clock, request_at=1010.0, first_token_s=10.0)
    d.dispatched()
    assert d.next_wait(True) == (1010.0, Deadline.REQUEST)


def test_none_switches_a_deadline_off():
    clock = FakeClock()
    d = deadlines(clock, first_token_s=None, token_s=None, first_chunk_s=None)
    d.dispatched()
    assert d.next_wait(False) == (None, None)
    d.output()
    assert d.next_wait(True) == (None, None)


def test_from_settings_counts_the_request_deadline_from_its_arrival():
    clock = FakeClock(50.0)
    settings = IngressSettings(request_timeout_s=30.0, first_token_timeout_s=8.0, token_timeout_s=2.0)
    # It arrived 5 s ago (wall clock): 25 s are left on the monotonic clock.
    d = RunDeadlines.from_settings(settings, arrival_at=1_700_000_000.0, now_wall=1_700_000_005.0, clock=clock)
    assert d.next_wait(None) == (75.0, Deadline.REQUEST)
    assert (d.first_token_s, d.token_s, d.first_chunk_s) == (8.0, 2.0, settings.first_chunk_timeout_s)
    off = RunDeadlines.from_settings(IngressSettings(), 0.0, 0.0, clock)
    assert off.request_at is None  # no request deadline by default


@pytest.mark.parametrize("kind, limit", [(Deadline.REQUEST, 60.0), (Deadline.FIRST_TOKEN, 10.0),
                                         (Deadline.TOKEN, 3.0)])
def test_each_deadline_is_a_504_with_an_openai_body_naming_it(kind, limit):
    e = timeout_error(kind, limit, detail="2 tries")
    assert e.status == 504
    body = e.body()["error"]
    assert body["code"] == kind.value and body["type"] == "timeout_error" and body["param"] is None
    assert f"={limit:g} s" in body["message"] and body["message"].endswith("(2 tries)")


@pytest.mark.parametrize("value", [0, -1.0])
@pytest.mark.parametrize("name", ["first_token_timeout_s", "token_timeout_s", "request_timeout_s"])
def test_a_deadline_setting_is_positive_or_none(name, value):
    with pytest.raises(ValueError, match=f"ingress.{name} must be > 0 or None"):
        IngressSettings(**{name: value})
    IngressSettings(**{name: None})


def test_deadline_limits_are_reported_per_kind():
    d = RunDeadlines.from_settings(SimpleNamespace(request_timeout_s=9.0, first_token_timeout_s=8.0, token_timeout_s=7.0,
                                                   first_chunk_timeout_s=6.0), 0.0, 0.0, FakeClock())
    assert [d.limit_s(k) for k in Deadline] == [9.0, 6.0, 8.0, 7.0]
