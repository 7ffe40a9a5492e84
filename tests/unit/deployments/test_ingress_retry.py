"""The ingress's dispatch loop (``deployments.ingress._Run``) against a scripted router and replicas:
a bounced (misrouted) call tells the router to stop choosing that replica, so the retry lands on a
live one instead of spending every try on a replica that a lost node took with it."""

import asyncio
from types import SimpleNamespace

import pytest

from deployments.ingress import _Run
from deployments.protocol import APIError
from router.actor import DISPATCHED
from router.request import RequestMeta


class ScriptedRouter:
    """Dispatches to the first replica it still believes in; ``remove_replica`` reports drop one."""

    def __init__(self, replicas):
        self.replicas = list(replicas)
        self.events = []
        self.enqueued = 0

    async def enqueue(self, meta, requeue):
        self.enqueued += 1
        return (DISPATCHED, self.replicas[0], None)

    def report(self, *event):
        self.events.append(event)
        if event[0] == "remove_replica" and event[1] in self.replicas and len(self.replicas) > 1:
            self.replicas.remove(event[1])


class ScriptedReplicas:
    """``llm.generate.remote(payload, target_replica_id=...)``: the replicas in ``gone`` bounce the
    call as Serve's request router does when it cannot find them; the others answer two chunks."""

    def __init__(self, gone):
        self.gone = set(gone)
        self.calls = []

    def remote(self, payload, target_replica_id):
        self.calls.append(target_replica_id)
        return _Call(target_replica_id in self.gone)


class _Call:
    def __init__(self, bounce: bool):
        chunks = [{"event": "misrouted"}] if bounce else [
            {"num_tokens": 2, "finish_reason": None, "text": "hi"},
            {"num_tokens": 1, "finish_reason": "stop", "text": "!"}]
        self._it = iter(chunks)

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return next(self._it)
        except StopIteration:
            raise StopAsyncIteration from None

    def cancel(self):
        pass


def _ingress(router: ScriptedRouter, replicas: ScriptedReplicas, max_retries: int = 2):
    metrics = SimpleNamespace(retries=SimpleNamespace(labels=lambda reason: SimpleNamespace(inc=lambda: None)))
    return SimpleNamespace(
        cfg=SimpleNamespace(ingress=SimpleNamespace(router_timeout_s=5.0, first_chunk_timeout_s=5.0,
                                                    max_retries=max_retries)),
        enqueuer=router, reporter=router, router=SimpleNamespace(reset=lambda: None),
        llm=SimpleNamespace(generate=replicas), metrics=metrics)


def _meta():
    return RequestMeta(request_id="r1", model="m", num_prompt_tokens=3, predicted_tokens=10.0, max_tokens=16,
                       arrival_at=0.0)


async def _collect(run: _Run) -> list:
    return [event async for event in run.events()]


def test_a_misrouted_call_drops_that_replica_and_the_retry_lands_elsewhere():
    router = ScriptedRouter(["lost", "alive"])
    replicas = ScriptedReplicas(gone={"lost"})
    run = _Run(_ingress(router, replicas), _meta(), {"prompt": "x"}, restart_after_output=False)
    events = asyncio.run(_collect(run))
    assert replicas.calls == ["lost", "alive"]
    assert ("remove_replica", "lost") in router.events
    assert events[0] == ("started", "alive") and events[-1][1]["finish_reason"] == "stop"
    assert run.num_retries == 1 and run.finished


def test_when_every_try_bounces_the_caller_gets_a_503_not_a_hang():
    router = ScriptedRouter(["lost"])  # the only replica the router knows (it keeps it: last one)
    run = _Run(_ingress(router, ScriptedReplicas(gone={"lost"}), max_retries=2), _meta(), {"prompt": "x"},
               restart_after_output=False)
    with pytest.raises(APIError) as exc:
        asyncio.run(_collect(run))
    assert exc.value.status == 503 and "misrouted" in str(exc.value) and "3 tries" in str(exc.value)
    assert router.enqueued == 3 and ("cancel", "r1") in router.events
