"""The replay engine and the simulator are twins: the same workload through the same scheduler on
the same engine profile finishes every request at the same time in both.

The replay engine (deployments) steps iterations in (virtual) time, the simulator (loadgen) jumps
between batch changes with closed forms; both take the batching rules from ``router.batching``.
Here a zero-latency cluster is emulated around real replay engines: a :class:`Scheduler` on the
event loop's clock, its decisions sent at once to the chosen replica's engine, each completion
reported the instant the last token streams. The loop's clock jumps to the next timer whenever
nothing is ready to run, so the engines' sleeps take no wall time and are exact.
"""

from __future__ import annotations

import asyncio
import selectors

import numpy as np
import pytest

from deployments.engines.base import GenerationRequest
from deployments.engines.replay import ReplayEngine
from loadgen.simulator import SimWorkload, simulate
from router import RequestMeta, Scheduler, SchedulerConfig
from router.cost_model import EngineProfile


class _JumpSelector(selectors.DefaultSelector):
    """When the loop has nothing ready, first wake whoever waits for the loop to go idle at this
    instant, and otherwise move the clock to the next timer instead of waiting for it."""

    def __init__(self, loop: VirtualTimeLoop):
        super().__init__()
        self._loop = loop

    def select(self, timeout=None):
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        loop = self._loop
        if loop.idle_waiters:
            waiters, loop.idle_waiters = loop.idle_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
            return []
        if timeout is None:
            raise RuntimeError("virtual time: nothing is scheduled and nothing can run (deadlock)")
        loop.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time (see the module docstring)."""

    def __init__(self):
        self.now = 0.0
        self.idle_waiters: list[asyncio.Future] = []
        super().__init__(_JumpSelector(self))

    def time(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        """The engines' sleep: ``sleep(0)`` returns once everything due at this instant has run (so
        calls dispatched at an iteration boundary reach the engine before its next iteration, as
        the simulator assumes), a positive delay advances the virtual clock."""
        if delay > 0:
            await asyncio.sleep(delay)
            return
        fut = self.create_future()
        self.idle_waiters.append(fut)
        await fut


async def _replay_cluster(work: SimWorkload, config: SchedulerConfig, profile: EngineProfile, num_replicas: int):
    """Per request: the time its last token streamed and the replica it ran on."""
    loop = asyncio.get_running_loop()
    sched = Scheduler(config, clock=loop.time)
    engines = {}
    for r in range(num_replicas):
        engine = ReplayEngine(profile, config.batching, config.max_batch, static_batch_wait_s=0.0,
                              clock=loop.time, sleep=loop.sleep)
        engines[f"r{r}"] = engine
        sched.add_replica(f"r{r}", engine.num_slots)
    index = {rid: j for j, rid in enumerate(work.request_id)}
    out, prompt = work.output_tokens.tolist(), work.num_prompt_tokens.tolist()
    last_token = np.full(len(work), np.nan)
    replica = [""] * len(work)
    running: set[asyncio.Task] = set()

    async def serve(request_id: str, replica_id: str) -> None:
        j = index[request_id]
        replica[j] = replica_id
        req = GenerationRequest(request_id, "", int(work.max_tokens[j]), num_prompt_tokens=prompt[j],
                                replay_output_tokens=out[j])
        async for delta in engines[replica_id].generate(req):
            if delta.finish_reason is not None:
                last_token[j] = loop.time()
        dispatch(sched.complete(request_id, out[j]))

    def dispatch(assignments) -> None:
        for a in assignments:
            task = loop.create_task(serve(a.request_id, a.replica_id))
            running.add(task)
            task.add_done_callback(running.discard)

    for j, at in enumerate(work.arrival_s.tolist()):
        await asyncio.sleep(at - loop.time())
        dispatch(sched.enqueue(RequestMeta(work.request_id[j], work.model[j], prompt[j],
                                           float(work.predicted_tokens[j]), int(work.max_tokens[j]), at)))
    while running:
        await asyncio.gather(*running)
    for engine in engines.values():
        await engine.stop()
    return last_token, replica


def run_replay_cluster(work, config, profile, num_replicas):
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(_replay_cluster(work, config, profile, num_replicas))
    finally:
        loop.close()


def workload(n=40, seed=3) -> SimWorkload:
    """Bursty enough that queues form on 2 replicas x 3 slots: arrivals over ~12 s, outputs up to 150
    tokens (~2-3 s each at the 7B cost), predictions noisy, a few simultaneous arrivals."""
    rng = np.random.default_rng(seed)
    out = rng.integers(1, 150, n)
    arrivals = np.sort(rng.uniform(0, 12, n))
    arrivals[5:8] = arrivals[5]
    return SimWorkload.synthetic(arrivals, out, num_prompt_tokens=rng.integers(0, 1500, n),
                                 predicted_tokens=out * rng.lognormal(0, 0.5, n), max_tokens=4096)


@pytest.mark.parametrize("batching", ["none", "static", "continuous"])
def test_replay_engine_and_simulator_finish_every_request_at_the_same_time(batching):
    work = workload()
    config = SchedulerConfig(policy="ssjf", batching=batching, max_batch=3, balancer="power-of-two", seed=5)
    profile = EngineProfile.default()
    sim = simulate(work, config, profile, 2)
    last_token, replica = run_replay_cluster(work, config, profile, 2)

    assert replica == [f"r{r}" for r in sim.replica.tolist()]  # the same decisions...
    assert np.all(sim.last_token_at > sim.started_at)
    # ...and the same times. Both compute the same iterations, so they agree to rounding: far inside
    # the 5% the twins are held to, and any change to one side's rules shows here.
    np.testing.assert_allclose(last_token, sim.last_token_at, rtol=1e-9)
    if batching == "static":
        # A static batch releases its slots when its longest member ends: the simulator returns
        # every member then; the replay engine streams each member's last token at its own time.
        ends = {}
        for j, r in enumerate(replica):
            key = (r, sim.started_at[j])
            ends[key] = max(ends.get(key, 0.0), last_token[j])
        np.testing.assert_allclose([ends[(r, sim.started_at[j])] for j, r in enumerate(replica)], sim.finished_at,
                                   rtol=1e-9)
        assert np.any(sim.finished_at > sim.last_token_at)  # padding happened
    else:
        np.testing.assert_array_equal(sim.finished_at, sim.last_token_at)
