"""The ingress's dispatch loop (``deployments.ingress._Run``) against a scripted router and replicas:
a bounced (misrouted) call tells the router to stop choosing that replica, so the retry lands on a
live one instead of spending every try on a replica that a lost node took with it. And its
deadlines and failures: a replica that produces no first token is left for another (then a 504), a
stream that stops mid-way is a 504, an engine error a 500; every abandoned call is cancelled."""

import asyncio
import dataclasses
import time
from types import SimpleNamespace

import pytest

from deployments.engines.base import Delta, FinishReason, GenerationRequest, Misrouted, Started
from deployments.ingress import Restart, _Run
from deployments.protocol import APIError
from router.messages import Dispatched, Report, ReportKind
from tests.factories import create_meta


class ScriptedRouter:
    """Dispatches to the first replica it still believes in; ``remove_replica`` reports drop one."""

    def __init__(self, replicas, batch_id=None, hang: bool = False):
        self.replicas = list(replicas)
        self.batch_id = batch_id
        self.hang = hang  # never dispatch (a long queue)
        self.events = []
        self.enqueued = 0

    async def enqueue(self, meta, requeue):
        self.enqueued += 1
        if self.hang:
            await asyncio.Event().wait()
        return Dispatched(self.replicas[0], self.batch_id, attempt=10 + self.enqueued)

    def report(self, report: Report):
        self.events.append(report)
        if (report.kind is ReportKind.REMOVE_REPLICA and report.replica_id in self.replicas
                and len(self.replicas) > 1):
            self.replicas.remove(report.replica_id)


class ScriptedReplicas:
    """``llm.generate.remote(request, target_replica_id=...)``: the replicas in ``gone`` bounce the
    call as Serve's request router does when it cannot find them; the others start and answer two deltas."""

    def __init__(self, gone, cut_first: bool = False, faults=None):
        self.gone = set(gone)
        self.cut_first = cut_first  # the first call's stream ends after one delta (its replica died)
        # replica id -> (chunks it sends, then what: "hang" (nothing more, ever) or an exception to raise)
        self.faults = faults or {}
        self.calls = []
        self.requests = []
        self.cancelled = []  # replica ids of the calls the ingress cancelled

    def remote(self, request, target_replica_id):
        self.calls.append(target_replica_id)
        self.requests.append(request)
        cut = self.cut_first and len(self.calls) == 1
        return _Call(self, target_replica_id, target_replica_id in self.gone, cut, self.faults.get(target_replica_id))


class _Call:
    def __init__(self, replicas: ScriptedReplicas, replica_id: str, bounce: bool, cut: bool = False, fault=None):
        self.replicas = replicas
        self.replica_id = replica_id
        chunks = [Misrouted("elsewhere")] if bounce else [
            Started(replica_id), Delta("hi", 2), Delta("!", 1, FinishReason.STOP)]
        self.end = None
        if cut:
            chunks = chunks[:2]
        if fault is not None:
            num_chunks, self.end = fault
            chunks = chunks[:num_chunks]
        self._it = iter(chunks)

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return next(self._it)
        except StopIteration:
            if self.end == "hang":
                await asyncio.Event().wait()
            if isinstance(self.end, BaseException):
                raise self.end from None
            raise StopAsyncIteration from None

    def cancel(self):
        self.replicas.cancelled.append(self.replica_id)


def _ingress(router: ScriptedRouter, replicas: ScriptedReplicas, max_retries: int = 2, first_token_timeout_s=5.0,
             token_timeout_s=5.0, request_timeout_s=None):
    metrics = SimpleNamespace(retries=SimpleNamespace(labels=lambda reason: SimpleNamespace(inc=lambda: None)))
    return SimpleNamespace(
        cfg=SimpleNamespace(ingress=SimpleNamespace(router_timeout_s=5.0, first_chunk_timeout_s=5.0,
                                                    max_retries=max_retries, first_token_timeout_s=first_token_timeout_s,
                                                    token_timeout_s=token_timeout_s,
                                                    request_timeout_s=request_timeout_s)),
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
    # The request travels unchanged but for the attempt of its dispatch (the replica's reports name it).
    assert replicas.requests == [dataclasses.replace(REQUEST, attempt=11), dataclasses.replace(REQUEST, attempt=12)]
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
    assert replicas.requests == [dataclasses.replace(REQUEST, batch_id=7, attempt=11)]


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


# ---- deadlines and failures ----------------------------------------------------------------------
META = create_meta("r1", 10.0, 0.0, max_tokens=16, prompt_tokens=3)


def test_a_replica_with_no_first_token_is_dropped_and_the_retry_lands_elsewhere():
    router = ScriptedRouter(["stuck", "alive"])
    replicas = ScriptedReplicas(gone=(), faults={"stuck": (1, "hang")})  # Started, then nothing
    run = _Run(_ingress(router, replicas, first_token_timeout_s=0.05), META, REQUEST, restart_after_output=False)
    events = asyncio.run(_collect(run))
    assert replicas.calls == ["stuck", "alive"] and replicas.cancelled == ["stuck"]
    assert Report.remove_replica("stuck") in router.events
    assert events == [Started("stuck"), Delta("hi", 2), Delta("!", 1, FinishReason.STOP)]
    assert run.num_retries == 1 and run.finished


def test_no_first_token_on_any_try_is_a_504_and_every_call_is_cancelled():
    router = ScriptedRouter(["stuck"])
    replicas = ScriptedReplicas(gone=(), faults={"stuck": (1, "hang")})
    run = _Run(_ingress(router, replicas, max_retries=1, first_token_timeout_s=0.05), META, REQUEST,
               restart_after_output=False)
    with pytest.raises(APIError) as exc:
        asyncio.run(_collect(run))
    body = exc.value.body()["error"]
    assert exc.value.status == 504 and body["code"] == "first_token_timeout" and body["type"] == "timeout_error"
    assert "2 tries" in body["message"]
    assert replicas.cancelled == ["stuck", "stuck"] and router.enqueued == 2
    assert Report.cancel("r1") in router.events  # the owner's cancel: no attempt, applies in any state


@pytest.mark.parametrize("restart_after_output", [False, True], ids=["stream", "non-streaming"])
def test_a_stream_that_stops_mid_way_is_a_504_not_a_hang(restart_after_output):
    replicas = ScriptedReplicas(gone=(), faults={"a": (2, "hang")})  # Started, one delta, then nothing
    router = ScriptedRouter(["a", "b"])
    run = _Run(_ingress(router, replicas, token_timeout_s=0.05), META, REQUEST, restart_after_output=restart_after_output)
    seen = []

    async def consume():
        async for event in run.events():
            seen.append(event)

    with pytest.raises(APIError) as exc:
        asyncio.run(consume())
    assert exc.value.status == 504 and exc.value.code == "token_timeout"
    assert seen == [Started("a"), Delta("hi", 2)]  # no retry once output came
    assert replicas.calls == ["a"] and replicas.cancelled == ["a"]
    assert Report.cancel("r1") in router.events


def test_an_engine_error_mid_stream_is_a_500_with_an_openai_body():
    replicas = ScriptedReplicas(gone=(), faults={"a": (2, RuntimeError("CUDA error: an illegal memory access"))})
    router = ScriptedRouter(["a", "b"])
    run = _Run(_ingress(router, replicas), META, REQUEST, restart_after_output=True)
    with pytest.raises(APIError) as exc:
        asyncio.run(_collect(run))
    body = exc.value.body()["error"]
    assert exc.value.status == 500 and body["code"] == "engine_error" and body["type"] == "server_error"
    assert "RuntimeError" in body["message"] and "CUDA" not in body["message"]  # no internals in the answer
    assert replicas.calls == ["a"] and replicas.cancelled == ["a"]  # an engine failure is not retried


def test_a_request_queued_past_its_deadline_is_a_504_and_its_place_is_cancelled():
    router = ScriptedRouter(["a"], hang=True)
    meta = create_meta("r1", 10.0, time.time(), max_tokens=16, prompt_tokens=3)  # arrived now: 0.05 s to go
    run = _Run(_ingress(router, ScriptedReplicas(gone=()), request_timeout_s=0.05), meta, REQUEST,
               restart_after_output=False)
    with pytest.raises(APIError) as exc:
        asyncio.run(_collect(run))
    assert exc.value.status == 504 and exc.value.code == "request_timeout"
    assert router.events == [Report.cancel("r1")]


# ---- router.mode serve-default: no router, Serve's own request router ------------------------------
class ServeQueue:
    """``llm.generate.remote(request)`` with no target, as the ingress calls it in serve-default: Serve's
    default request router picks the replica. Each call in turn: ``"died"`` (the replica died before
    the call ran), or a replica id that starts it once ``admit`` is set (until then it waits in Serve's queue)."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        self.cancelled = 0
        self.admit = asyncio.Event()

    def remote(self, request, **kwargs):
        assert not kwargs, kwargs  # nothing pins the call
        self.requests.append(request)
        return _ServeCall(self, self.script[len(self.requests) - 1])


class _ServeCall:
    def __init__(self, queue: ServeQueue, outcome: str):
        self.queue = queue
        self.outcome = outcome
        self.chunks = None

    def __aiter__(self):
        return self

    async def __anext__(self):
        import ray.exceptions

        if self.chunks is None:
            if self.outcome == "died":
                raise ray.exceptions.RayActorError()
            await self.queue.admit.wait()
            self.chunks = iter([Started(self.outcome), Delta("hi", 2), Delta("!", 1, FinishReason.STOP)])
        try:
            return next(self.chunks)
        except StopIteration:
            raise StopAsyncIteration from None

    def cancel(self):
        self.queue.cancelled += 1


def _serve_ingress(queue: ServeQueue, first_chunk_timeout_s=5.0, first_token_timeout_s=5.0):
    ingress = _ingress(ScriptedRouter(["unused"]), ScriptedReplicas(gone=()), first_token_timeout_s=first_token_timeout_s)
    ingress.cfg.ingress.first_chunk_timeout_s = first_chunk_timeout_s
    ingress.enqueuer = ingress.reporter = ingress.router = None  # serve-default: none of them exist
    ingress.llm = SimpleNamespace(generate=queue)
    return ingress


def test_serve_default_retries_a_dead_replica_through_serve_and_tells_no_router():
    queue = ServeQueue(["died", "b"])
    queue.admit.set()
    run = _Run(_serve_ingress(queue), META, REQUEST, restart_after_output=False)
    events = asyncio.run(_collect(run))
    assert events == [Started("b"), Delta("hi", 2), Delta("!", 1, FinishReason.STOP)]
    assert [r.attempt for r in queue.requests] == [0, 1] and run.replica_id == "b"
    assert run.num_retries == 1 and run.router_s == 0.0


def test_serve_default_waits_in_serves_queue_past_the_first_chunk_deadline():
    """In serve-default the wait for Started is the queue (Serve holds the call until a replica has a
    free place): a long queue is no lost call, so the first-chunk and first-token deadlines do not
    end it; the first-token clock starts at Started."""
    queue = ServeQueue(["a"])
    run = _Run(_serve_ingress(queue, first_chunk_timeout_s=0.02, first_token_timeout_s=0.02), META, REQUEST,
               restart_after_output=False)

    async def main():
        task = asyncio.ensure_future(_collect(run))
        await asyncio.sleep(0.2)  # ten times both deadlines
        assert not task.done()
        queue.admit.set()
        return await task

    events = asyncio.run(main())
    assert events[0] == Started("a") and events[-1].finish_reason is FinishReason.STOP
    assert len(queue.requests) == 1 and queue.cancelled == 0 and run.num_retries == 0
    assert run.dispatched_at - run.called_at > 0.15  # the queue wait (0.2 s) ends at Started
