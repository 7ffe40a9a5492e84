"""The ingress's deadlines for one request, as a pure rule (no Ray, no I/O; unit-tested on a fake clock).

A request's run waits on three things, each with its own deadline (``IngressSettings``):

- the whole request, from its arrival, queueing included (``request_timeout_s``): a 504, never a retry;
- the first token of each dispatch, from that dispatch (``first_token_timeout_s``): the call is
  abandoned and the request dispatched again elsewhere, up to ``max_retries``; then a 504.
  ``first_chunk_timeout_s`` (the call has not even reached its replica) is the same kind of retry,
  on its own, usually shorter clock;
- each next output once some came (``token_timeout_s``): a 504 (a started stream ends with an
  error event).

:class:`RunDeadlines` answers "how long may the next wait last, and which deadline ends it".
A replica's ``Started`` is no proof of progress: the first-token clock runs from the dispatch
through it.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from deployments.protocol import APIError


class Deadline(enum.Enum):
    """Which deadline ended a wait; the value is the error ``code`` (or the retry reason)."""

    REQUEST = "request_timeout"
    FIRST_CHUNK = "first_chunk_timeout"
    FIRST_TOKEN = "first_token_timeout"
    TOKEN = "token_timeout"


# Where two deadlines fall at the same instant, the one that ends the request outright wins.
_RANK = {Deadline.REQUEST: 0, Deadline.TOKEN: 1, Deadline.FIRST_TOKEN: 2, Deadline.FIRST_CHUNK: 3}

_WHAT = {
    Deadline.REQUEST: "the request did not finish within ingress.request_timeout_s={:g} s",
    Deadline.FIRST_TOKEN: "no replica produced a first token within ingress.first_token_timeout_s={:g} s",
    Deadline.TOKEN: "the replica produced no further output within ingress.token_timeout_s={:g} s",
    Deadline.FIRST_CHUNK: "the call did not start on its replica within ingress.first_chunk_timeout_s={:g} s",
}


class RunDeadlines:
    """The deadlines of one request's run on one monotonic clock (``clock``: seconds, e.g. ``loop.time``).

    ``request_at``: the absolute end of the whole request (None: no limit). Call :meth:`dispatched`
    when a call starts (the per-dispatch clocks restart), :meth:`output` for every delta, then
    :meth:`next_wait` before each wait.
    """

    def __init__(self, *, request_at: float | None, first_token_s: float | None, token_s: float | None,
                 first_chunk_s: float | None, request_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.request_at = request_at
        self.request_s = request_s  # the limit request_at came from (for messages)
        self.first_token_s = first_token_s
        self.token_s = token_s
        self.first_chunk_s = first_chunk_s
        self._clock = clock
        self.first_token_at: float | None = None
        self.first_chunk_at: float | None = None
        self.produced = False  # this dispatch has produced output

    @classmethod
    def from_settings(cls, settings, arrival_at: float, now_wall: float, clock: Callable[[], float]) -> RunDeadlines:
        """For ``IngressSettings``; the request arrived at wall time ``arrival_at`` (now ``now_wall``)."""
        request_at = None
        if settings.request_timeout_s is not None:
            request_at = clock() + (arrival_at + settings.request_timeout_s - now_wall)
        return cls(request_at=request_at, first_token_s=settings.first_token_timeout_s,
                   token_s=settings.token_timeout_s, first_chunk_s=settings.first_chunk_timeout_s,
                   request_s=settings.request_timeout_s, clock=clock)

    def now(self) -> float:
        return self._clock()

    def dispatched(self) -> None:
        now = self._clock()
        self.produced = False
        self.first_token_at = None if self.first_token_s is None else now + self.first_token_s
        self.first_chunk_at = None if self.first_chunk_s is None else now + self.first_chunk_s

    def output(self) -> None:
        self.produced = True

    def next_wait(self, started: bool | None) -> tuple[float | None, Deadline | None]:
        """The absolute deadline of the next wait and which one it is; (None, None): wait forever.

        ``started``: None while waiting for the router (only the request deadline applies), False
        while waiting for the call's first chunk, True once it started on its replica."""
        candidates = [(self.request_at, Deadline.REQUEST)]
        if started is not None:
            if not started:
                candidates.append((self.first_chunk_at, Deadline.FIRST_CHUNK))
            if not self.produced:
                candidates.append((self.first_token_at, Deadline.FIRST_TOKEN))
            elif self.token_s is not None:
                candidates.append((self._clock() + self.token_s, Deadline.TOKEN))
        candidates = [(at, kind) for at, kind in candidates if at is not None]
        if not candidates:
            return None, None
        return min(candidates, key=lambda c: (c[0], _RANK[c[1]]))

    def limit_s(self, kind: Deadline) -> float | None:
        return {Deadline.REQUEST: self.request_s, Deadline.FIRST_TOKEN: self.first_token_s, Deadline.TOKEN: self.token_s,
                Deadline.FIRST_CHUNK: self.first_chunk_s}[kind]


def timeout_error(kind: Deadline, limit_s: float | None, detail: str | None = None) -> APIError:
    """The 504 a client gets when ``kind`` ends its request (an OpenAI-style body, code = the deadline)."""
    what = _WHAT[kind].format(limit_s) if limit_s is not None else f"the request hit its {kind.value}"
    if detail:
        what += f" ({detail})"
    return APIError(504, what, type="timeout_error", code=kind.value)
