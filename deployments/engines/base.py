"""The engine interface every LLM replica talks to, the pieces engines share, and the messages
between the ingress and a replica (both ends are processes of their own):

- :class:`GenerationRequest` goes from the ingress to the replica (the call's argument) and on to
  its engine;
- the replica's stream answers :class:`Misrouted` (the call was meant for another replica), or
  :class:`Started` then :class:`Delta` s, the last with a :class:`FinishReason`, or (``srpt``, the
  router preempted the run) ending with :class:`Preempted` instead.
"""

from __future__ import annotations

import asyncio
import enum
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

from router.messages import message
from router.request import RequestMeta


@dataclass(frozen=True)
class GenerationRequest:
    """One request to generate, built by the ingress and run by the replica's engine.
    ``replay_output_tokens`` is read by the replay engine only. ``meta`` and ``attempt`` are what the
    router dispatched (the replica names the attempt in its reports and heartbeats).

    Resuming after a preemption (``srpt``): ``resume_tokens`` output tokens were already generated
    and streamed as ``resume_text``; ``resume_token_ids`` are their ids where the engine re-prefills
    them (hf; None for the replay engine, which needs the count only). The engine continues the reply
    from there: it generates at most ``max_tokens - resume_tokens`` more, counts and decodes them
    after the ones before (the text continues ``resume_text``, never repeating it), and reports the
    new tokens only. ``replay_remaining_predictions`` (benchmark-only, replay engine): the EMULATED
    re-predicted remaining length at the progress points ``K, 2K, ...`` (``router.repredict_every_tokens``),
    computed by the load generator with the simulator's calibrated noise (deployments/repredict.py).
    ``proxy_text``: the proxy model's text of the request, sent only where the replicas run a trained
    remaining-length predictor (``llm.remaining_predictor``)."""

    request_id: str
    prompt: str
    max_tokens: int
    num_prompt_tokens: int = 0
    prompt_token_ids: tuple[int, ...] | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    replay_output_tokens: int | None = None
    batch_id: int | None = None
    attempt: int = 0
    meta: RequestMeta | None = None
    resume_tokens: int = 0
    resume_text: str = ""
    resume_token_ids: tuple[int, ...] | None = None
    replay_remaining_predictions: tuple[float, ...] | None = None
    proxy_text: str | None = None

    def __post_init__(self):
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be > 0, got {self.max_tokens}")
        if not 0 <= self.resume_tokens < self.max_tokens:
            raise ValueError(f"resume_tokens must be >= 0 and below max_tokens ({self.max_tokens}), "
                             f"got {self.resume_tokens}")
        if self.resume_token_ids is not None and len(self.resume_token_ids) != self.resume_tokens:
            raise ValueError(f"resume_token_ids holds {len(self.resume_token_ids)} ids for "
                             f"resume_tokens={self.resume_tokens}")


class FinishReason(enum.Enum):
    """Why a request's output ended; the value is OpenAI's ``finish_reason``."""

    STOP = "stop"  # end of sequence (or, at the ingress, a stop string)
    LENGTH = "length"  # max_tokens reached


@message
class Delta:
    """New output of one request: ``num_tokens`` tokens decoded as ``text``; the last has a finish reason."""

    text: str
    num_tokens: int
    finish_reason: FinishReason | None = None


@message
class Started:
    """The replica ``replica_id`` took the call: deltas follow."""

    replica_id: str


@message
class Preempted:
    """The replica stopped the run at the router's word (``srpt``): ``tokens_done`` output tokens of
    the request were streamed, all of them before this message; nothing else comes for this attempt
    and the replica reports nothing for it (the router counted it preempted). The ingress waits for
    the request's next dispatch and resumes it there (:class:`GenerationRequest`'s ``resume_*``) with
    ``resume_token_ids`` (the generated ids, for an engine that re-prefills them; None: the count
    is enough)."""

    tokens_done: int
    resume_token_ids: tuple[int, ...] | None = None


@message
class Misrouted:
    """The call reached ``replica_id``, not the replica it was pinned to: it was not run."""

    replica_id: str


class Engine(ABC):
    """Generates tokens for requests. ``generate`` is an async generator; closing it cancels the request."""

    kind: str = "?"
    num_slots: int = 1
    # srpt: the engine can stop a running sequence at the replica's word (closing its generate) and
    # resume it later from GenerationRequest.resume_* (deployments.config.supports_preemption says
    # the same per engine and batching mode, for config checks without importing the engine).
    supports_preemption: bool = False

    async def start(self) -> None:
        """Load weights and start background work. Called once before ``generate``."""
        return None

    @abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Yield deltas until the request finishes; the last delta carries ``finish_reason``."""

    def resume_token_ids(self, request: GenerationRequest) -> tuple[int, ...] | None:
        """The output token ids of ``request`` streamed so far, to resume it after a preemption (call it
        before closing its ``generate``); None: the engine resumes from the count alone."""
        return None

    async def stop(self) -> None:
        """Release resources (threads, caches)."""
        return None

    def check_health(self) -> None:
        """Raise if the engine can no longer serve (Serve then replaces the replica)."""
        return None


class EngineStalled(RuntimeError):
    """The engine has had work and produced no output for ``llm.stall_timeout_s``."""


class StallWatchdog:
    """Tells a hung engine from a busy one: progress is any output of any request.

    The replica calls :meth:`begin`/:meth:`end` around each request it runs and :meth:`progress`
    for every delta. The engine is stalled while it has work and nothing came out for
    ``stall_timeout_s``: a GPU kernel that never returns, a dead generation thread that raised
    nothing. A request that joins a busy engine does not restart the clock (arrivals must not hide
    a stall); the first one after an idle spell does, since an idle engine owes nothing.
    """

    def __init__(self, stall_timeout_s: float, clock=time.monotonic):
        if not stall_timeout_s > 0:
            raise ValueError(f"stall_timeout_s must be > 0, got {stall_timeout_s}")
        self.stall_timeout_s = stall_timeout_s
        self._clock = clock
        self.active = 0
        self.last_progress_at = clock()

    def begin(self) -> None:
        if self.active == 0:
            self.last_progress_at = self._clock()
        self.active += 1

    def end(self) -> None:
        self.active = max(0, self.active - 1)

    def progress(self) -> None:
        self.last_progress_at = self._clock()

    def stalled_for(self) -> float | None:
        """Seconds without output while work runs, once past ``stall_timeout_s``; None when healthy."""
        if self.active == 0:
            return None
        quiet = self._clock() - self.last_progress_at
        return quiet if quiet > self.stall_timeout_s else None

    def check(self) -> None:
        """Raise :class:`EngineStalled` when stalled (for ``check_health``)."""
        quiet = self.stalled_for()
        if quiet is not None:
            raise EngineStalled(f"the engine has run {self.active} request(s) and produced no output for "
                                f"{quiet:.1f} s (llm.stall_timeout_s={self.stall_timeout_s})")


class DeltaStream:
    """Thread-safe hand-off of token ids from a generation thread to one request's async consumer.

    ``push`` may run on any thread; ``deltas`` coalesces whatever has arrived since it last woke
    up into one :class:`Delta`, so a slow consumer costs fewer messages, not more.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, decode, max_tokens: int,
                 resume_ids: tuple[int, ...] = (), resume_text: str = ""):
        """``resume_ids``/``resume_text``: a resumed request's output so far (its ids, and the text the
        client got from them): new tokens count and decode after them, so the text goes on where it
        stopped (a character split between runs comes out whole once its last byte arrives)."""
        self._loop = loop
        self._decode = decode  # list[int] -> str
        self._max_tokens = max_tokens
        self._queue: asyncio.Queue = asyncio.Queue()
        self.token_ids: list[int] = list(resume_ids)
        self._emitted = resume_text
        self._sent_tokens = len(self.token_ids)

    # -- producer side (any thread) --
    def push(self, token_ids: list[int], finished: bool = False, error: str | None = None) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (list(token_ids), finished, error))

    def sent_ids(self) -> tuple[int, ...]:
        """The token ids handed out in deltas so far (a resumed request's earlier ones included)."""
        return tuple(self.token_ids[:self._sent_tokens])

    # -- consumer side (event loop) --
    async def deltas(self, eos_ids: set[int]) -> AsyncIterator[Delta]:
        while True:
            items = [await self._queue.get()]
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            finished = False
            for ids, done, error in items:
                if error is not None:
                    raise RuntimeError(f"generation failed: {error}")
                for t in ids:
                    if len(self.token_ids) >= self._max_tokens or finished:
                        break
                    self.token_ids.append(t)
                    if t in eos_ids:
                        finished = True
                finished = finished or done
            finished = finished or len(self.token_ids) >= self._max_tokens
            if finished:
                last = self.token_ids[-1] if self.token_ids else None
                stopped = last in eos_ids or len(self.token_ids) < self._max_tokens
                yield self._take(final=True, reason=FinishReason.STOP if stopped else FinishReason.LENGTH)
                return
            delta = self._take(final=False)
            if delta.num_tokens or delta.text:
                yield delta

    def _take(self, final: bool, reason: FinishReason | None = None) -> Delta:
        text = self._decode(self.token_ids)
        # An incomplete UTF-8 sequence decodes to U+FFFD: hold it back until the next token.
        # Byte-level BPE decodes prefix-stably otherwise, so the new text is the tail past what was sent.
        if not final and text.endswith("\ufffd"):
            new_text = ""
        else:
            new_text = text[len(self._emitted):]
            self._emitted = text
        n = len(self.token_ids) - self._sent_tokens
        self._sent_tokens = len(self.token_ids)
        return Delta(new_text, n, reason)
