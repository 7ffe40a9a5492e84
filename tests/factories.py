"""Shared test factories (as vLLM's ``tests/v1/core/utils.py``): one way to make a request, a clock,
a scheduler or a router service, so a change of their signatures is made once.

    sched = create_scheduler(clock, policy="ssjf", batching="none")
    sched.enqueue(create_meta("a", predicted=50, arrival=clock.now))
"""

from __future__ import annotations

from router.actor import RouterService
from router.config import SchedulerConfig
from router.request import RequestMeta
from router.scheduler import Scheduler


class FakeClock:
    """A settable clock: tests move time by assigning ``now`` (or with :meth:`advance`)."""

    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def create_meta(request_id: str, predicted: float = 10.0, arrival: float = 0.0, *, max_tokens: int = 4096,
                prompt_tokens: int = 10, model: str = "m") -> RequestMeta:
    """The metadata the ingress sends the router for one request (never the true length)."""
    return RequestMeta(request_id, model, prompt_tokens, predicted, max_tokens, arrival)


def create_scheduler(clock: FakeClock | None = None, **config) -> Scheduler:
    """A :class:`Scheduler` over ``SchedulerConfig(**config)`` on ``clock`` (a new one if None)."""
    return Scheduler(SchedulerConfig(**config), clock=clock or FakeClock())


def create_service(clock: FakeClock | None = None, **kw) -> RouterService:
    """A :class:`RouterService`; the service's own knobs (retry_after_s, replica_timeout_s, lease_s)
    are taken from ``kw``, the rest build its ``SchedulerConfig``."""
    opts = {k: kw.pop(k) for k in ("retry_after_s", "replica_timeout_s", "lease_s") if k in kw}
    return RouterService(SchedulerConfig(**kw), clock=clock or FakeClock(1000.0), **opts)
