"""The ingress's dispatch loop (``deployments.ingress._Run``) against a scripted router and replicas:
a bounced (misrouted) call tells the router to stop choosing that replica, so the retry lands on a
live one instead of spending every try on a replica that a lost node took with it."""

import asyncio
import dataclasses
from types import SimpleNamespace

import pytest

from deployments.engines.base import Delta, FinishReason, GenerationRequest, Misrouted, Started
from deployments.ingress import Restart, _Run
from deployments.protocol import APIError
from router.messages import Dispatched, Report, ReportKind
from tests.factories import create_meta


class ScriptedRouter:
    """Dispatches to the first replica it still believes in; ``remove_replica`` reports drop one."""

    def __init__(self, replicas, batch_id=None):
        self.replicas = list(replicas)
        self.batch_id = batch_id
        self.events = []
        self.enqueued = 0

    async def enqueue(self, meta, requeue):
        self.enqueued += 1
        return Dispatched(self.replicas[0], self.batch_id)

    def report(self, report: Report):
        self.events.append(report)
        if (report.kind is ReportKind.REMOVE_REPLICA and report.replica_id in self.replicas
                and len(self.replicas) > 1):
            self.replicas.remove(report.replica_id)


class ScriptedReplicas:
    """``llm.generate.remote(request, target_replica_id=...)``: the replicas in ``gone`` bounce the
    call as Serve's request router does when it cannot find them; the others start and answer two deltas."""

    def __init__(self, gone, cut_first: bool = False):
        self.gone = set(gone)
        self.cut_first = cut_first  # the first call's stream ends after one delta (its replica died)
        self.calls = []
        self.requests = []

    def remote(self, request, target_replica_id):
        self.calls.append(target_replica_id)
        self.requests.append(request)
        cut = self.cut_first and len(self.calls) == 1
        return _Call(target_replica_id, target_replica_id in self.gone, cut)


class _Call:
    def __init__(self, replica_id: str, bounce: bool, cut: bool = False):
        chunks = [Misrouted("elsewhere")] if bounce else [
            Started(replica_id), Delta("hi", 2), Delta("!", 1, FinishReason.STOP)]
        self._it = iter(chunks[:2] if cut else chunks)

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


REQUEST = GenerationRequest("r1", "x", 16, num_prompt_tokens=3)


async def _collect(run: _Run) -> list:
    return [event async for event in run.events()]


def test_a_misrouted_call_drops_that_replica_and_the_retry_lands_elsewhere():
    router = ScriptedRouter(["lost", "alive"])
    replicas = ScriptedReplicas(gone={"lost"})
    run = _Run(_ingress(router, replicas), create_meta("r1", 10.0, 0.0, max_tokens=16, prompt_tokens=3), REQUEST, restart_after_output=False)
    events = asyncio.run(_collect(run))
    assert replicas.calls == ["lost", "alive"]
    assert replicas.requests == [REQUEST, REQUEST]  # the request itself travels, unchanged
    assert Report.remove_replica("lost") in router.events
    assert events == [Started("alive"), Delta("hi", 2), Delta("!", 1, FinishReason.STOP)]
    assert run.num_retries == 1 and run.finished


def test_when_every_try_bounces_the_caller_gets_a_503_not_a_hang():
    router = ScriptedRouter(["lost"])  # the only replica the router knows (it keeps it: last one)
    run = _Run(_ingress(router, ScriptedReplicas(gone={"lost"}), max_retries=2), create_meta("r1", 10.0, 0.0, max_tokens=16, prompt_tokens=3), REQUEST,
               restart_after_output=False)
    with pytest.raises(APIError) as exc:
        asyncio.run(_collect(run))
    assert exc.value.status == 503 and "misrouted" in str(exc.value) and "3 tries" in str(exc.value)
    assert router.enqueued == 3 and Report.cancel("r1") in router.events


def test_a_static_batch_id_travels_on_the_request():
    replicas = ScriptedReplicas(gone=())
    asyncio.run(_collect(_Run(_ingress(ScriptedRouter(["a"], batch_id=7), replicas), create_meta("r1", 10.0, 0.0, max_tokens=16, prompt_tokens=3), REQUEST,
                              restart_after_output=False)))
    assert replicas.requests == [dataclasses.replace(REQUEST, batch_id=7)]


def test_a_non_streaming_request_cut_after_output_restarts_from_scratch():
    replicas = ScriptedReplicas(gone=(), cut_first=True)
    run = _Run(_ingress(ScriptedRouter(["a"]), replicas), create_meta("r1", 10.0, 0.0, max_tokens=16, prompt_tokens=3), REQUEST, restart_after_output=True)
    events = asyncio.run(_collect(run))
    assert events == [Started("a"), Delta("hi", 2), Restart(), Delta("hi", 2), Delta("!", 1, FinishReason.STOP)]
    assert run.num_retries == 1


def test_a_stream_cut_after_output_is_a_502_not_a_restart():
    run = _Run(_ingress(ScriptedRouter(["a"]), ScriptedReplicas(gone=(), cut_first=True)), create_meta("r1", 10.0, 0.0, max_tokens=16, prompt_tokens=3), REQUEST,
               restart_after_output=False)
    with pytest.raises(APIError) as exc:
        asyncio.run(_collect(run))
    assert exc.value.status == 502
