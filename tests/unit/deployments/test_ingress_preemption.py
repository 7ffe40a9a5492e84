"""The ingress's run (``deployments.ingress._Run``) when the router preempts it (srpt), against a
scripted router and replicas: the replica's stream ends with Preempted; the run asks the router again
(joining its place, no requeue), waits in the queue with no token deadline running, and resumes on
the next dispatch from the output streamed so far; the caller sees one stream."""

import asyncio
import dataclasses
from types import SimpleNamespace

from deployments.engines.base import Delta, FinishReason, GenerationRequest, Preempted, Started
from deployments.ingress import Restart, _Run
from router.messages import Dispatched
from tests.factories import create_meta

META = create_meta("r1", 10.0, 0.0, max_tokens=16, prompt_tokens=3)
REQUEST = GenerationRequest("r1", "x", 16, num_prompt_tokens=3, meta=META)


HANG = object()  # a call that produces nothing more, ever


class Router:
    """Dispatches to ``replicas`` in turn; every enqueue after the first waits ``queue_s`` (the
    preempted request queues behind the shorter one)."""

    def __init__(self, replicas, queue_s=0.0):
        self.replicas = list(replicas)
        self.queue_s = queue_s
        self.calls = []  # (request id, requeue)
        self.events = []

    async def enqueue(self, meta, requeue):
        self.calls.append((meta.request_id, requeue))
        if len(self.calls) > 1:
            await asyncio.sleep(self.queue_s)
        return Dispatched(self.replicas[len(self.calls) - 1], None, attempt=100 + len(self.calls))

    def report(self, report):
        self.events.append(report)


class Replicas:
    """Each call answers the next script: chunks, then the end of its stream."""

    def __init__(self, *scripts):
        self.scripts = list(scripts)
        self.requests = []
        self.cancelled = []

    def remote(self, request, target_replica_id):
        self.requests.append(request)
        return _Call(self, target_replica_id, self.scripts.pop(0))


class _Call:
    def __init__(self, replicas, replica_id, chunks):
        self.replicas, self.replica_id = replicas, replica_id
        self._it = iter([Started(replica_id), *chunks])

    def __aiter__(self):
        return self

    async def __anext__(self):
        await asyncio.sleep(0)
        try:
            item = next(self._it)
        except StopIteration:
            raise StopAsyncIteration from None
        if item is HANG:
            await asyncio.Event().wait()
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self):
        self.replicas.cancelled.append(self.replica_id)


class Metrics:
    def __init__(self):
        self.preempted = 0
        self.retries = SimpleNamespace(labels=lambda reason: SimpleNamespace(inc=lambda: None))
        self.preemptions = SimpleNamespace(inc=self._inc)
        self.tokens = 0
        self.preempted_tokens = SimpleNamespace(inc=self._tokens)

    def _tokens(self, n):
        self.tokens += n

    def _inc(self):
        self.preempted += 1


def ingress(router, replicas, token_timeout_s=5.0, first_token_timeout_s=5.0):
    return SimpleNamespace(
        cfg=SimpleNamespace(ingress=SimpleNamespace(router_timeout_s=5.0, first_chunk_timeout_s=5.0, max_retries=2,
                                                    first_token_timeout_s=first_token_timeout_s,
                                                    token_timeout_s=token_timeout_s, request_timeout_s=None)),
        enqueuer=router, reporter=router, router=SimpleNamespace(reset=lambda: None),
        llm=SimpleNamespace(generate=replicas), metrics=Metrics())


async def collect(run):
    return [e async for e in run.events()]


def test_a_preempted_stream_resumes_on_the_next_dispatch_as_one_stream():
    router = Router(["a", "b"], queue_s=0.2)  # queued longer than the token deadline
    replicas = Replicas([Delta(" one", 1), Delta(" two", 2), Preempted(3, (7, 8, 9))],
                        [Delta(" three", 1), Delta(" four", 1, FinishReason.STOP)])
    ing = ingress(router, replicas, token_timeout_s=0.05)
    run = _Run(ing, META, REQUEST, restart_after_output=False)
    events = asyncio.run(collect(run))
    # One Started, every delta once, in order; Preempted never reaches the caller.
    assert events == [Started("a"), Delta(" one", 1), Delta(" two", 2), Delta(" three", 1),
                      Delta(" four", 1, FinishReason.STOP)]
    # Asked again without a requeue (the router holds the request queued; a requeue would fail a run).
    assert router.calls == [("r1", False), ("r1", False)]
    assert replicas.requests[0] == dataclasses.replace(REQUEST, attempt=101)
    assert replicas.requests[1] == dataclasses.replace(REQUEST, attempt=102, resume_tokens=3,
                                                       resume_text=" one two", resume_token_ids=(7, 8, 9))
    assert run.finished and run.num_preemptions == 1 and run.num_retries == 0
    assert (ing.metrics.preempted, ing.metrics.tokens) == (1, 3)
    assert router.events == [] and replicas.cancelled == []  # nothing to cancel: every run ended by itself


def test_preempted_twice_each_resume_goes_on_from_everything_streamed():
    router = Router(["a", "b", "a"])
    replicas = Replicas([Delta("x", 1), Preempted(1)], [Delta("y", 2), Preempted(3)], [Delta("z", 1, FinishReason.STOP)])
    run = _Run(ingress(router, replicas), META, REQUEST, restart_after_output=False)
    events = asyncio.run(collect(run))
    assert [e.text for e in events[1:]] == ["x", "y", "z"]
    assert [(r.resume_tokens, r.resume_text) for r in replicas.requests] == [(0, ""), (1, "x"), (3, "xy")]


def test_a_resumed_call_that_dies_before_output_is_retried_from_the_same_point():
    """The resumed dispatch's replica dies before its first new token: a retry (requeue), resuming again
    from the same output; the stream goes on (nothing the caller got is repeated)."""
    from ray.exceptions import RayActorError

    router = Router(["a", "b", "c"])
    replicas = Replicas([Delta("x", 1), Preempted(1)], [RayActorError()], [Delta("y", 1, FinishReason.STOP)])
    run = _Run(ingress(router, replicas), META, REQUEST, restart_after_output=False)
    events = asyncio.run(collect(run))
    assert [e.text for e in events[1:]] == ["x", "y"]
    assert router.calls == [("r1", False), ("r1", False), ("r1", True)]
    assert [(r.resume_tokens, r.resume_text) for r in replicas.requests] == [(0, ""), (1, "x"), (1, "x")]


def test_a_non_streaming_restart_after_a_resume_starts_from_nothing():
    from ray.exceptions import RayActorError

    router = Router(["a", "b", "c"])
    replicas = Replicas([Delta("x", 1), Preempted(1)], [Delta("y", 1), RayActorError()],
                        [Delta("xy", 2, FinishReason.STOP)])
    run = _Run(ingress(router, replicas), META, REQUEST, restart_after_output=True)
    events = asyncio.run(collect(run))
    assert Restart() in events
    assert replicas.requests[2].resume_tokens == 0 and replicas.requests[2].resume_text == ""


def test_the_resumed_dispatch_runs_on_a_first_token_deadline_not_the_token_gap():
    """After a resume, the wait for the new replica's first token is bounded by the first-token
    deadline (a retry elsewhere), not by the gap since the last token (a 504 mid-stream)."""
    router = Router(["a", "b", "c"])
    replicas = Replicas([Delta("x", 1), Preempted(1)], [HANG], [Delta("y", 1, FinishReason.STOP)])
    run = _Run(ingress(router, replicas, token_timeout_s=0.01, first_token_timeout_s=0.2), META, REQUEST,
               restart_after_output=False)
    events = asyncio.run(collect(run))
    assert [e.text for e in events[1:]] == ["x", "y"]
    assert replicas.cancelled == ["b"] and run.num_retries == 1
