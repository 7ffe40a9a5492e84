"""The replay engine: EMULATED generation for benchmarks at cluster scale without GPUs.

Each request emits exactly its benchmark-only ``replay_output_tokens`` (capped by max_tokens;
``max_tokens`` when absent), one token per engine iteration. An iteration lasts
``EngineProfile.iteration_time_s(prefill tokens, batch size, context tokens) * time_scale``, so a
replica behaves like the profiled GPU engine (7B on an A100 by default) under the configured
batching mode, ``time_scale`` times faster or slower. Who runs, who joins and leaves at a boundary
and what an iteration costs are ``router.batching``'s rules, the simulator's too, so the two agree
(a conformance test holds them together). No model runs: results from this engine are always
labelled emulated.

Fault drills (``llm.replay_faults``, off by default): a prompt holding ``[[replay:stall:K]]`` stops
getting tokens after K (it keeps its slot, as a request stuck in a hung engine does); one holding
``[[replay:fail:K]]`` fails after K tokens (the engine raises for that request). Tests of the
ingress deadlines and error paths use them.

Preemption (``srpt``): closing a request's ``generate`` stops it at the next iteration boundary, as a
cancel does; the replica then ends its stream with ``Preempted``. A resumed request
(``GenerationRequest.resume_tokens`` = N) goes on from its token N: its words continue the same
sequence, it emits the rest of its length, and it joins prefilling its prompt plus the N tokens
(their KV cache was dropped with the run), which is the resume cost of the cost model, as in the
simulator (``loadgen.simulator``, no ``--resume-keeps-kv``). No separate resume knob.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator

from deployments.config import LLMSettings
from deployments.engines.base import Delta, Engine, FinishReason, GenerationRequest
from router.batching import BatchingMode, Segment, free_slots, keeps_finished, num_slots

logger = logging.getLogger(__name__)

_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do")
_MAX_CATCH_UP_S = 0.05  # after a late wake-up, run this much behind schedule at most (then reset)
_FAULT = re.compile(r"\[\[replay:(stall|fail):(\d+)\]\]")


class InjectedFault(RuntimeError):
    """The failure a ``[[replay:fail:K]]`` prompt asks for (llm.replay_faults)."""


def parse_faults(prompt: str) -> dict[str, int]:
    """The fault markers in ``prompt``: {"stall": K, "fail": K} (the first of each kind)."""
    faults: dict[str, int] = {}
    for kind, k in _FAULT.findall(prompt):
        faults.setdefault(kind, int(k))
    return faults


class _Seq:
    __slots__ = ("req", "target", "emitted", "iterations", "queue", "cancelled", "done", "arrived_at", "reason",
                 "stall_after", "fail_after", "prefill")

    def __init__(self, req: GenerationRequest, arrived_at: float, faults: dict[str, int] | None = None):
        self.req = req
        wanted = req.replay_output_tokens
        if wanted is None or wanted > req.max_tokens:
            self.target, self.reason = req.max_tokens, FinishReason.LENGTH
        else:
            self.target, self.reason = wanted, FinishReason.STOP
        self.emitted = req.resume_tokens  # a resumed request goes on from there
        # What it prefills as it joins: its prompt, and a resumed one's tokens so far too.
        self.prefill = req.num_prompt_tokens + req.resume_tokens
        self.iterations = 0  # iterations it has run in the batch (static: padding included)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.done = False
        self.arrived_at = arrived_at
        faults = faults or {}
        self.stall_after = faults.get("stall")
        self.fail_after = faults.get("fail")


class ReplayEngine(Engine):
    """An iteration loop over the running sequences, timed by an engine profile (emulated)."""

    kind = "replay"
    supports_preemption = True  # (none and continuous batching: srpt refuses static)

    def __init__(self, profile, batching: BatchingMode | str = BatchingMode.CONTINUOUS, max_batch: int = 4,
                 time_scale: float = 1.0, static_batch_wait_s: float = 0.01, clock=time.monotonic, sleep=asyncio.sleep,
                 faults: bool = False):
        self.profile = profile
        self.batching = BatchingMode.parse(batching)
        self.num_slots = num_slots(self.batching, max_batch)
        if time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        self.time_scale = time_scale
        self.static_batch_wait_s = static_batch_wait_s
        self.faults = faults  # honour the fault markers in prompts (llm.replay_faults)
        self._clock = clock
        self._sleep = sleep
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        self._segment = Segment()  # the running batch's cost since its last membership change
        self._k = 0  # iterations run in that segment
        self._task: asyncio.Task | None = None
        self._next_at = 0.0
        self.num_iterations = 0
        self._error: BaseException | None = None

    @classmethod
    def from_settings(cls, settings: LLMSettings) -> ReplayEngine:
        from router.cost_model import EngineProfile

        profile = EngineProfile.load(settings.profile) if settings.profile else EngineProfile.default()
        return cls(profile, settings.batching_mode, settings.max_batch, settings.time_scale, settings.static_batch_wait_s,
                   faults=settings.replay_faults)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        seq = _Seq(request, self._clock(), parse_faults(request.prompt) if self.faults else None)
        self._waiting.append(seq)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        received = request.resume_tokens  # the words go on where the preempted run stopped
        try:
            while True:
                items = [await seq.queue.get()]
                while not seq.queue.empty():
                    items.append(seq.queue.get_nowait())
                n = sum(k for k, _ in items)
                errors = [f for _, f in items if isinstance(f, BaseException)]
                if errors:
                    if isinstance(errors[0], InjectedFault):
                        raise errors[0]
                    raise RuntimeError("replay engine loop failed") from self._error
                finished = any(f for _, f in items)
                text = "".join(" " + _WORDS[(received + i) % len(_WORDS)] for i in range(n))
                received += n
                if finished:
                    yield Delta(text, n, seq.reason)
                    return
                yield Delta(text, n)
        finally:
            if not seq.done:
                seq.cancelled = True
                try:
                    self._waiting.remove(seq)
                except ValueError:
                    pass

    # ---- the iteration loop ------------------------------------------------------------------
    def _leave(self) -> list[_Seq]:
        """The members that leave at this boundary: cancelled ones, and finished ones unless the batch
        keeps them as padding (static, until every member has finished)."""
        running = self._running
        hold = keeps_finished(self.batching) and not all(s.done or s.cancelled for s in running)
        left = [s for s in running if s.cancelled or (s.done and not hold)]
        if left:
            self._running = [s for s in running if not (s.cancelled or (s.done and not hold))]
        return left

    def _admit(self) -> list[_Seq]:
        self._waiting = deque(s for s in self._waiting if not s.cancelled)
        admitted = []
        room = free_slots(self.batching, self.num_slots, len(self._running))
        while room > 0 and self._waiting:
            admitted.append(self._waiting.popleft())
            room -= 1
        self._running.extend(admitted)
        return admitted

    async def _run(self) -> None:
        try:
            while self._waiting or self._running:
                # An iteration boundary: let the calls that come with it (into a slot that just
                # freed, or several dispatched at once) arrive, so that they join it.
                await self._sleep(0)
                left = self._leave()
                if (self.batching is BatchingMode.STATIC and not self._running and self._waiting
                        and self.static_batch_wait_s > 0):
                    # Gather the router's batch: its calls arrive within moments of each other.
                    wait = self._waiting[0].arrived_at + self.static_batch_wait_s - self._clock()
                    if wait > 0:
                        await self._sleep(wait)
                idle = not self._running
                joined = self._admit()
                if left or joined:
                    self._segment = self._segment.next(
                        self._k, left=len(left), left_kv=sum(s.prefill + s.iterations for s in left),
                        joined=len(joined), joined_prompt=sum(s.prefill for s in joined))
                    self._k = 0
                if not self._running:
                    continue
                if idle:
                    self._next_at = self._clock()  # a fresh start, not a late wake-up to catch up on
                await self._iteration()
        except Exception as e:  # never leave a client hanging: fail everyone still here
            logger.exception("replay engine loop failed")
            self._error = e
            for s in [*self._running, *self._waiting]:
                s.queue.put_nowait((0, e))
            self._running.clear()
            self._waiting.clear()
            self._segment, self._k = Segment(), 0

    async def _iteration(self) -> None:
        dt = self._segment.iteration_s(self.profile, self._k) * self.time_scale
        now = self._clock()
        if self._next_at < now - _MAX_CATCH_UP_S:
            self._next_at = now
        self._next_at += dt
        delay = self._next_at - now
        await self._sleep(delay if delay > 0 else 0)
        self._k += 1
        self.num_iterations += 1
        for s in self._running:
            s.iterations += 1
            if s.done or s.cancelled:
                continue  # padding of a static batch, or gone
            if s.fail_after is not None and s.emitted >= s.fail_after:
                s.done = True  # it leaves at the next boundary
                s.queue.put_nowait((0, InjectedFault(f"replay fault drill: failed after {s.emitted} tokens")))
                continue
            if s.stall_after is not None and s.emitted >= s.stall_after:
                continue  # stuck: it holds its slot and produces nothing
            new = 0
            if s.emitted < s.target:
                s.emitted += 1
                new = 1
            s.done = s.emitted >= s.target
            s.queue.put_nowait((new, s.done))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
