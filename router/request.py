"""One record for a request's life, and the frozen metadata that crosses process boundaries.

Only metadata reaches the router: id, model, token counts, the *predicted* output length and
the arrival time. The true output length never does (the README's honesty rules). The messages
exchanged with the router actor are in :mod:`router.messages`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class RequestStatus(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"  # slo, shed mode: dropped unrun, predicted to miss its SLO (a Rejection)


@dataclass(frozen=True, slots=True)
class RequestMeta:
    """What the router knows about a request. Frozen: it is sent between actors."""

    request_id: str
    model: str
    num_prompt_tokens: int
    predicted_tokens: float
    max_tokens: int
    arrival_at: float
    # Latency objectives the client asked for (``x-slo-ttft-ms`` / ``x-slo-jct-ms`` headers or the
    # body's ``slo`` field), in seconds from ``arrival_at``; None: none. Only the ``slo`` policy reads
    # them; every policy carries them so reports can score attainment.
    slo_ttft_s: float | None = None
    slo_jct_s: float | None = None

    def __post_init__(self):
        if not self.request_id:
            raise ValueError("request_id must be a non-empty string")
        if self.num_prompt_tokens < 0:
            raise ValueError(f"num_prompt_tokens must be >= 0, got {self.num_prompt_tokens}")
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be > 0, got {self.max_tokens}")
        if not self.predicted_tokens >= 0:  # also rejects NaN
            raise ValueError(f"predicted_tokens must be >= 0, got {self.predicted_tokens}")
        for name in ("slo_ttft_s", "slo_jct_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:  # also rejects NaN
                raise ValueError(f"{name} must be > 0 seconds or None, got {value}")

    @property
    def expected_tokens(self) -> float:
        """The prediction capped by max_tokens: a reply can never run past its cap."""
        return min(self.predicted_tokens, float(self.max_tokens))


@dataclass(frozen=True, slots=True)
class Assignment:
    """A scheduling decision: run ``request_id`` on ``replica_id`` now.

    ``batch_id`` groups requests that a static-batching replica starts together (None otherwise).
    ``attempt`` names this dispatch (unique per dispatch: see ``Scheduler.next_attempt``).
    """

    request_id: str
    replica_id: str
    batch_id: int | None = None
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class Preemption:
    """A scheduling decision (``srpt``): stop ``request_id``'s run ``attempt`` on ``replica_id`` now,
    keeping the tokens it generated; the request waits again and resumes on a later dispatch. In a
    decision list it comes before the :class:`Assignment` that takes the slot it frees."""

    request_id: str
    replica_id: str
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class Rejection:
    """A scheduling decision (``slo`` policy with ``slo_infeasible='shed'``): drop the waiting request
    ``request_id`` without running it, because it is predicted to miss its SLO even if started now.
    Its caller is answered with ``reason`` (the ingress: HTTP 503, code ``slo_unattainable``)."""

    request_id: str
    reason: str = "slo_unattainable"


class RequestState:
    """Mutable state of one request inside the scheduler (status and ``*_at`` timestamps).

    ``predicted_remaining``: output tokens still to come as last predicted (the capped prediction
    until ``srpt`` re-predicts it at a progress point); ``tokens_done``: tokens generated so far as
    last reported; ``num_preemptions``: how often ``srpt`` stopped it."""

    __slots__ = ("meta", "status", "enqueued_at", "dispatched_at", "finished_at", "replica_id",
                 "queue_replica_id", "num_output_tokens", "num_requeues", "attempt", "predicted_remaining",
                 "tokens_done", "num_preemptions")

    def __init__(self, meta: RequestMeta, enqueued_at: float):
        self.meta = meta
        self.status = RequestStatus.QUEUED
        self.enqueued_at = enqueued_at
        self.dispatched_at: float | None = None
        self.finished_at: float | None = None
        self.replica_id: str | None = None  # where it runs (set on dispatch)
        self.queue_replica_id: str | None = None  # whose queue holds it (None: shared queue)
        self.num_output_tokens: int | None = None
        self.num_requeues = 0
        self.attempt: int | None = None  # the dispatch it runs under (None while queued; srpt: the preempted one)
        self.predicted_remaining = meta.expected_tokens
        self.tokens_done = 0
        self.num_preemptions = 0

    def __repr__(self) -> str:
        return (f"RequestState({self.meta.request_id!r}, {self.status.value}, replica={self.replica_id!r}, "
                f"attempt={self.attempt!r})")
