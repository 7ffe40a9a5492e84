"""The engine interface every LLM replica talks to, and the pieces engines share."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationRequest:
    """What a replica hands its engine. ``replay_output_tokens`` is read by the replay engine only."""

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

    def __post_init__(self):
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be > 0, got {self.max_tokens}")


@dataclass
class Delta:
    """New output of one request: ``num_tokens`` tokens decoded as ``text``; the last has a finish reason."""

    text: str
    num_tokens: int
    finish_reason: str | None = None  # "stop" (end of sequence) or "length" (max_tokens)


class Engine(ABC):
    """Generates tokens for requests. ``generate`` is an async generator; closing it cancels the request."""

    kind: str = "?"
    num_slots: int = 1

    async def start(self) -> None:
        """Load weights and start background work. Called once before ``generate``."""
        return None

    @abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Yield deltas until the request finishes; the last delta carries ``finish_reason``."""

    async def stop(self) -> None:
        """Release resources (threads, caches)."""
        return None

    def check_health(self) -> None:
        """Raise if the engine can no longer serve (Serve then replaces the replica)."""
        return None


class DeltaStream:
    """Thread-safe hand-off of token ids from a generation thread to one request's async consumer.

    ``push`` may run on any thread; ``deltas`` coalesces whatever has arrived since it last woke
    up into one :class:`Delta`, so a slow consumer costs fewer messages, not more.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, decode, max_tokens: int):
        self._loop = loop
        self._decode = decode  # list[int] -> str
        self._max_tokens = max_tokens
        self._queue: asyncio.Queue = asyncio.Queue()
        self.token_ids: list[int] = []
        self._emitted = ""
        self._sent_tokens = 0

    # -- producer side (any thread) --
    def push(self, token_ids: list[int], finished: bool = False, error: str | None = None) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (list(token_ids), finished, error))

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
            delta = self._take(final=finished)
            if finished:
                last = self.token_ids[-1] if self.token_ids else None
                reason = "stop" if (last in eos_ids or len(self.token_ids) < self._max_tokens) else "length"
                delta.finish_reason = reason
                yield delta
                return
            if delta.num_tokens or delta.text:
                yield delta

    def _take(self, final: bool) -> Delta:
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
        return Delta(new_text, n)
