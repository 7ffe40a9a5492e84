"""The LLM replica's run path (``deployments.llm.LLMServer``) around a replay engine, with the router
actor replaced by a recorder: every report names the run's attempt, heartbeats list the runs the
router dispatched, and a stalled engine stops the heartbeats and fails the health check."""

import dataclasses
from types import SimpleNamespace

import pytest

from deployments.engines.base import (
    Delta,
    EngineStalled,
    GenerationRequest,
    Preempted,
    StallWatchdog,
    Started,
)
from deployments.engines.replay import InjectedFault, ReplayEngine
from deployments.llm import LLMServer
from deployments.repredict import Repredictor
from router.messages import Report, Running
from tests.factories import create_meta


class Profile:
    def iteration_time_s(self, num_prefill_tokens, batch_size, num_context_tokens):
        return 0.001


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Recorder:
    """The router as the replica sees it: heartbeats and reports, recorded."""

    def __init__(self):
        self.heartbeats = []
        self.reports = []
        self.handle = SimpleNamespace(heartbeat=SimpleNamespace(remote=self._heartbeat))

    async def _heartbeat(self, replica_id, num_slots, running):
        self.heartbeats.append((replica_id, num_slots, running))

    def report(self, report):
        self.reports.append(report)

    def reset(self):
        pass


class _Server(LLMServer.func_or_class):
    def __del__(self):  # Serve's async shutdown hook: nothing to shut down here
        pass


def replica(clock=None, stall_timeout_s=5.0):
    server = _Server.__new__(_Server)
    server.settings = SimpleNamespace(heartbeat_s=1.0)
    server.engine = ReplayEngine(Profile(), "continuous", 4, faults=True)
    server.replica_id = "rep-1"
    server.router = server.reporter = Recorder()
    server.running = {}
    server.watchdog = StallWatchdog(stall_timeout_s, clock=clock or FakeClock())
    server._stall_logged = False
    return server


def request(rid="r1", attempt=3, prompt="p", tokens=3, meta=True):
    return GenerationRequest(rid, prompt, 16, replay_output_tokens=tokens, attempt=attempt,
                             meta=create_meta(rid, 10.0, 0.0, max_tokens=16) if meta else None)


async def test_every_report_names_the_attempt_of_its_run():
    server = replica()
    chunks = [c async for c in server.generate(request("done", attempt=3))]
    assert chunks[0] == Started("rep-1") and sum(c.num_tokens for c in chunks[1:]) == 3

    cancelled = server.generate(request("left", attempt=4))
    assert await cancelled.__anext__() == Started("rep-1")
    await cancelled.aclose()  # the caller went away (a deadline, a disconnect)

    with pytest.raises(InjectedFault):
        async for _ in server.generate(request("failed", attempt=5, prompt="x [[replay:fail:1]]")):
            pass
    assert server.router.reports == [Report.complete("done", 3, attempt=3), Report.cancel("left", attempt=4),
                                     Report.fail("failed", attempt=5)]
    assert server.running == {} and server.watchdog.active == 0


async def test_heartbeats_list_the_dispatched_runs_by_attempt():
    server = replica()
    first = server.generate(request("r1", attempt=1, prompt="[[replay:stall:0]]"))
    again = server.generate(request("r1", attempt=2, prompt="[[replay:stall:0]]"))  # a retry landing here too
    direct = server.generate(request("bench", attempt=0, prompt="[[replay:stall:0]]", meta=False))
    for gen in (first, again, direct):
        await gen.__anext__()
    await server._register()
    (replica_id, slots, running), = server.router.heartbeats
    assert (replica_id, slots) == ("rep-1", 4)
    assert sorted(running, key=lambda r: r.attempt) == [Running(create_meta("r1", 10.0, 0.0, max_tokens=16), 1),
                                                        Running(create_meta("r1", 10.0, 0.0, max_tokens=16), 2)]
    await first.aclose()
    assert list(server.running) == [("r1", 2), ("bench", 0)]  # closing one attempt leaves the other
    for gen in (again, direct):
        await gen.aclose()


async def test_a_stalled_engine_stops_heartbeating_and_fails_its_health_check_until_output_resumes():
    clock = FakeClock()
    server = replica(clock, stall_timeout_s=5.0)
    stuck = server.generate(request("stuck", prompt="[[replay:stall:0]]"))
    await stuck.__anext__()  # Started: the engine has it, and produces nothing
    clock.now += 4
    await server._register()
    server.check_health()
    assert len(server.router.heartbeats) == 1
    clock.now += 2  # 6 s of silence with work running
    await server._register()
    assert len(server.router.heartbeats) == 1  # silent: the router drops this replica
    with pytest.raises(EngineStalled):
        server.check_health()
    # Another request's output is progress: the engine works after all.
    chunks = [c async for c in server.generate(request("fine", tokens=2))]
    assert isinstance(chunks[-1], Delta) and chunks[-1].finish_reason is not None
    server.check_health()
    await server._register()
    assert len(server.router.heartbeats) == 2
    await stuck.aclose()
    assert server.watchdog.active == 0


async def test_a_replica_idle_for_long_is_healthy():
    clock = FakeClock()
    server = replica(clock, stall_timeout_s=5.0)
    [c async for c in server.generate(request("one"))]
    clock.now += 3600
    server.check_health()
    await server._register()
    assert len(server.router.heartbeats) == 1


class Router(Recorder):
    """A router that answers progress reports from a script (True: preempt)."""

    def __init__(self, answers):
        super().__init__()
        self.answers = list(answers)
        self.progress = []
        self.handle.progress = SimpleNamespace(remote=self._progress)

    async def _progress(self, request_id, attempt, tokens_done, remaining):
        self.progress.append((request_id, attempt, tokens_done, remaining))
        return self.answers.pop(0) if self.answers else False


def srpt_replica(answers, every=2):
    server = replica()
    server.settings = SimpleNamespace(heartbeat_s=1.0, progress_timeout_s=5.0)
    server.router = server.reporter = Router(answers)
    server.every = every
    server.repredictor = Repredictor(every)
    server.progress_counts = {"reports": 0, "preempted": 0, "timeouts": 0, "errors": 0}
    return server


async def test_srpt_a_preempted_run_ends_with_preempted_reports_nothing_and_resumes_elsewhere():
    """Every K tokens the replica reports the emulated re-prediction of that point; told to preempt,
    it stops the run at its next delta: the stream ends with Preempted(tokens streamed), no report
    names that attempt. Resumed (next attempt), the reply goes on to its full length, counted once."""
    server = srpt_replica([False, True])
    meta = create_meta("long", 10.0, 0.0, max_tokens=16)
    long = GenerationRequest("long", "p", 16, replay_output_tokens=10, attempt=7, meta=meta,
                             replay_remaining_predictions=(8.0, 6.0, 4.0, 2.0))
    chunks = [c async for c in server.generate(long)]
    assert chunks[0] == Started("rep-1") and isinstance(chunks[-1], Preempted)
    deltas = chunks[1:-1]
    streamed = sum(d.num_tokens for d in deltas)
    assert chunks[-1] == Preempted(streamed, None) and 4 <= streamed < 10
    # the points K = 2 and 4, each with its emulated value; preempted after the second answer
    assert server.router.progress == [("long", 7, 2, 8.0), ("long", 7, 4, 6.0)]
    assert server.router.reports == [] and server.running == {} and server.watchdog.active == 0

    resumed = dataclasses.replace(long, attempt=8, resume_tokens=streamed, resume_text="".join(d.text for d in deltas))
    rest = [c async for c in server.generate(resumed)]
    assert sum(c.num_tokens for c in rest[1:]) == 10 - streamed and rest[-1].finish_reason is not None
    assert server.router.reports == [Report.complete("long", 10, attempt=8)]  # the whole reply's length
    # progress points count over the whole reply: the resumed run reports from the next one on
    assert [p[2] for p in server.router.progress[2:]] == [2 * (streamed // 2 + 1 + i) for i in range(len(
        server.router.progress) - 2)]
    assert server.progress_counts["preempted"] == 1


async def test_srpt_a_run_never_preempted_reports_its_points_and_completes():
    server = srpt_replica([], every=3)
    r = GenerationRequest("r", "p", 16, replay_output_tokens=7, attempt=1, meta=create_meta("r", 10.0, 0.0, max_tokens=16))
    chunks = [c async for c in server.generate(r)]
    assert sum(c.num_tokens for c in chunks[1:]) == 7
    # no emulated values sent: the prompt-only prediction (10) minus the tokens done
    assert server.router.progress == [("r", 1, 3, 7.0), ("r", 1, 6, 4.0)]
    assert server.router.reports == [Report.complete("r", 7, attempt=1)]
