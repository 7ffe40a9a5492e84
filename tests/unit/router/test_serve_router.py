"""PinnedRequestRouter.choose_replicas as data: the target alone, back off while it is unknown,
anyone (who will bounce the call) after the grace period. No Ray started."""

import time
from types import SimpleNamespace

import pytest

from router.serve_router import TARGET_KWARG, PinnedRequestRouter


def replica(unique_id):
    return SimpleNamespace(replica_id=SimpleNamespace(unique_id=unique_id))


def pending(target, age_s=0.0):
    return SimpleNamespace(kwargs={TARGET_KWARG: target} if target else {}, created_at=time.time() - age_s,
                           routing_context=SimpleNamespace(should_backoff=False))


@pytest.fixture
def router():
    r = object.__new__(PinnedRequestRouter)  # the base __init__ needs a live Serve deployment
    r.initialize_state(pin_grace_s=3.0)
    return r


async def test_pins_to_the_target(router):
    a, b, c = replica("a"), replica("b"), replica("c")
    req = pending("b")
    assert await router.choose_replicas([a, b, c], req) == [[b]]
    assert req.routing_context.should_backoff  # never spin on the base router's retry loop


async def test_unknown_target_backs_off_then_goes_anywhere_to_be_bounced(router):
    a, b = replica("a"), replica("b")
    assert await router.choose_replicas([a, b], pending("new", age_s=0.5)) == []
    assert await router.choose_replicas([a, b], pending("dead", age_s=5.0)) == [[a, b]]


async def test_unpinned_calls_go_anywhere(router):
    a, b = replica("a"), replica("b")
    assert await router.choose_replicas([a, b], pending(None)) == [[a, b]]
    assert await router.choose_replicas([a, b], None) == [[a, b]]
