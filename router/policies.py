"""Queue-ordering policies: small queue classes behind one interface (after vLLM's request_queue).

The scheduler only pushes, peeks and pops; the ordering lives here. Every key ends with
``(arrival_at, request_id)`` so the order is total and runs are reproducible.

- ``fcfs``: arrival order.
- ``ssjf``: shortest *predicted* output first (prediction capped at max_tokens).
- ``ssjf-aging``: SSJF whose priority improves with waiting, so no request starves. Rules:
  ``linear``: effective length = predicted - rate * wait_s. Because every waiting request
  ages at the same rate, this equals a static key ``predicted + rate * arrival_at``: a request that
  has waited ``L / rate`` seconds longer than another beats it even if it is ``L`` tokens longer.
  ``threshold`` (default, see SchedulerConfig): a request that has waited at least ``threshold_s`` jumps ahead (in arrival order)
  of all SSJF-ordered requests. ``response-ratio`` (HRRN): highest ``1 + rate * wait_s / predicted``
  first; time dependent, so a pop scans the queue (O(n)).
- ``oracle``: shortest *true* output first. Benchmarks only: the truth comes from a lookup the
  simulator supplies; the serving cluster refuses this policy.
- ``srpt``: shortest *predicted remaining* output first, with the threshold rule as its starvation
  guard. A request's remaining length is its prediction until it runs, then its latest
  re-prediction (``Scheduler.progress``); a preempted request waits here keyed by it. The preemption
  rule itself (margin, limits) is the scheduler's (see ``router.scheduler``).
- ``slo``: SSJF, except requests whose SLO deadline is near (docs/slo.md). A request's *latest
  feasible start* is the last moment it can start and still meet its objectives, by the predicted
  service time of :class:`ServiceEstimate`: ``min(arrival + slo_jct_s - service, arrival + slo_ttft_s
  - first_token_s)`` (``inf`` without an SLO). A request within ``guard_s`` of it is *urgent*: the
  urgent ones go first, earliest latest start first (least slack); the rest in SSJF order. One past
  it is *infeasible* (it misses even if started now): deferred to a best-effort tail (SSJF order,
  served only when no feasible request waits) or shed (:attr:`SLOQueue.shed`, which the scheduler
  turns into ``Rejection`` decisions).
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator

from router.request import RequestMeta, RequestState


class Policy(enum.Enum):
    FCFS = "fcfs"
    SSJF = "ssjf"
    SSJF_AGING = "ssjf-aging"
    ORACLE = "oracle"
    SRPT = "srpt"
    SLO = "slo"

    @classmethod
    def parse(cls, name: str | Policy) -> Policy:
        return parse_enum(cls, name, "policy")


class AgingRule(enum.Enum):
    LINEAR = "linear"
    THRESHOLD = "threshold"
    RESPONSE_RATIO = "response-ratio"

    @classmethod
    def parse(cls, name: str | AgingRule) -> AgingRule:
        return parse_enum(cls, name, "aging rule")


class SLOInfeasible(enum.Enum):
    """What the ``slo`` policy does with a request predicted to miss its SLO even if started now."""

    DEFER = "defer"
    SHED = "shed"

    @classmethod
    def parse(cls, name: str | SLOInfeasible) -> SLOInfeasible:
        return parse_enum(cls, name, "slo_infeasible")


def parse_enum(cls, name, what: str):
    if isinstance(name, cls):
        return name
    for member in cls:
        if member.value == name:
            return member
    choices = ", ".join(m.value for m in cls)
    raise ValueError(f"unknown {what} {name!r}; choose one of: {choices}")


class RequestQueue(ABC):
    """A set of waiting requests that yields the best one under its policy."""

    @abstractmethod
    def push(self, state: RequestState) -> None: ...

    @abstractmethod
    def peek(self, now: float) -> RequestState | None:
        """The request :meth:`pop` would return at ``now``, without removing it."""

    @abstractmethod
    def pop(self, now: float) -> RequestState | None:
        """Remove and return the best request at time ``now`` (None when empty)."""

    @abstractmethod
    def remove(self, request_id: str) -> RequestState | None: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __iter__(self) -> Iterator[RequestState]: ...

    @property
    def queued_work(self) -> float:
        """Predicted output tokens waiting here (what ``least-work`` balances)."""
        return self._work

    _work: float = 0.0


class HeapQueue(RequestQueue):
    """A heap on a static key, with lazy deletion so ``remove`` (cancel, steal) is O(1).

    A request removed and queued again (a client that resubmits after the router dropped it) meets
    its own dead entry, with the same key and id: a push count after the key keeps the two apart, so
    the heap never compares a request with the None of a dead entry."""

    def __init__(self, key: Callable[[RequestMeta], tuple]):
        self._key = key
        self._heap: list[list] = []
        self._entries: dict[str, list] = {}
        self._work = 0.0
        self._pushes = itertools.count()

    def push(self, state: RequestState) -> None:
        rid = state.meta.request_id
        if rid in self._entries:
            raise ValueError(f"request {rid!r} is already queued")
        entry = [(self._key(state.meta), next(self._pushes)), rid, state]
        self._entries[rid] = entry
        heapq.heappush(self._heap, entry)
        self._work += state.meta.expected_tokens

    def _drop_dead(self) -> None:
        heap = self._heap
        while heap and heap[0][2] is None:
            heapq.heappop(heap)

    def peek(self, now: float) -> RequestState | None:
        self._drop_dead()
        return self._heap[0][2] if self._heap else None

    def pop(self, now: float) -> RequestState | None:
        self._drop_dead()
        if not self._heap:
            return None
        entry = heapq.heappop(self._heap)
        state = entry[2]
        del self._entries[entry[1]]
        self._work -= state.meta.expected_tokens
        if not self._entries:
            self._work = 0.0  # keep float drift from accumulating
        return state

    def remove(self, request_id: str) -> RequestState | None:
        entry = self._entries.pop(request_id, None)
        if entry is None:
            return None
        state, entry[2] = entry[2], None
        self._work -= state.meta.expected_tokens
        if not self._entries:
            self._work = 0.0
            self._heap.clear()
        return state

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[RequestState]:
        return (entry[2] for entry in self._entries.values())


def fcfs_key(meta: RequestMeta) -> tuple:
    return (meta.arrival_at, meta.request_id)


def ssjf_key(meta: RequestMeta) -> tuple:
    return (meta.expected_tokens, meta.arrival_at, meta.request_id)


class FCFSQueue(HeapQueue):
    """Arrival order."""

    def __init__(self):
        super().__init__(fcfs_key)


class SSJFQueue(HeapQueue):
    """Shortest predicted job first; ties by arrival, then id."""

    def __init__(self):
        super().__init__(ssjf_key)


class LinearAgingQueue(HeapQueue):
    """SSJF on ``predicted - rate * wait``, kept as the equivalent static key ``predicted + rate * arrival``."""

    def __init__(self, rate: float):
        if rate < 0:
            raise ValueError(f"aging rate must be >= 0 tokens/s, got {rate}")
        self.rate = rate
        super().__init__(lambda m: (m.expected_tokens + rate * m.arrival_at, m.arrival_at, m.request_id))


class ThresholdAgingQueue(RequestQueue):
    """SSJF, except requests that have waited ``threshold_s`` or more go first, oldest first.

    Two heaps over the same requests (SSJF and FCFS); an entry removed from one is marked dead in both.
    """

    def __init__(self, threshold_s: float):
        if threshold_s < 0:
            raise ValueError(f"aging threshold must be >= 0 s, got {threshold_s}")
        self.threshold_s = threshold_s
        self._by_len = HeapQueue(ssjf_key)
        self._by_age = HeapQueue(fcfs_key)

    def push(self, state: RequestState) -> None:
        self._by_len.push(state)
        self._by_age.push(state)

    def _choose(self, now: float) -> RequestState | None:
        oldest = self._by_age.peek(now)
        if oldest is None:
            return None
        if now - oldest.meta.arrival_at >= self.threshold_s:
            return oldest
        return self._by_len.peek(now)

    def peek(self, now: float) -> RequestState | None:
        return self._choose(now)

    def pop(self, now: float) -> RequestState | None:
        state = self._choose(now)
        if state is not None:
            self.remove(state.meta.request_id)
        return state

    def remove(self, request_id: str) -> RequestState | None:
        self._by_age.remove(request_id)
        return self._by_len.remove(request_id)

    def __len__(self) -> int:
        return len(self._by_len)

    def __iter__(self) -> Iterator[RequestState]:
        return iter(self._by_len)

    @property
    def queued_work(self) -> float:
        return self._by_len.queued_work


class RemainingQueue(HeapQueue):
    """Shortest predicted *remaining* length first (``RequestState.predicted_remaining``, which only
    changes while the request runs, never while it waits here); ties by arrival, then id. A
    preempted request comes back: the push count keeps its new entry apart from its dead old one."""

    def __init__(self):
        super().__init__(ssjf_key)

    def push(self, state: RequestState) -> None:
        meta = state.meta
        rid = meta.request_id
        if rid in self._entries:
            raise ValueError(f"request {rid!r} is already queued")
        entry = [(state.predicted_remaining, meta.arrival_at, rid, next(self._pushes)), rid, state]
        self._entries[rid] = entry
        heapq.heappush(self._heap, entry)
        self._work += state.predicted_remaining

    def pop(self, now: float) -> RequestState | None:
        self._drop_dead()
        if not self._heap:
            return None
        entry = heapq.heappop(self._heap)
        state = entry[2]
        del self._entries[entry[1]]
        self._work = self._work - state.predicted_remaining if self._entries else 0.0
        return state

    def remove(self, request_id: str) -> RequestState | None:
        entry = self._entries.pop(request_id, None)
        if entry is None:
            return None
        state, entry[2] = entry[2], None
        self._work -= state.predicted_remaining
        if not self._entries:
            self._work = 0.0
            self._heap.clear()
        return state


class SRPTQueue(ThresholdAgingQueue):
    """Shortest predicted remaining first, except requests ``threshold_s`` or more past their arrival
    go first, oldest first (the starvation guard; ``inf``: none)."""

    def __init__(self, threshold_s: float):
        super().__init__(threshold_s)
        self._by_len = RemainingQueue()


class ResponseRatioQueue(RequestQueue):
    """Highest response ratio next: ``1 + rate * wait_s / max(predicted, 1)``. O(n) pop."""

    def __init__(self, rate: float):
        if rate <= 0:
            raise ValueError(f"response-ratio rate must be > 0 tokens/s, got {rate}")
        self.rate = rate
        self._items: dict[str, RequestState] = {}
        self._work = 0.0

    def push(self, state: RequestState) -> None:
        rid = state.meta.request_id
        if rid in self._items:
            raise ValueError(f"request {rid!r} is already queued")
        self._items[rid] = state
        self._work += state.meta.expected_tokens

    def _rank(self, state: RequestState, now: float) -> tuple:
        m = state.meta
        ratio = 1.0 + self.rate * max(now - m.arrival_at, 0.0) / max(m.expected_tokens, 1.0)
        return (-ratio, m.expected_tokens, m.arrival_at, m.request_id)

    def peek(self, now: float) -> RequestState | None:
        if not self._items:
            return None
        return min(self._items.values(), key=lambda s: self._rank(s, now))

    def pop(self, now: float) -> RequestState | None:
        state = self.peek(now)
        if state is not None:
            self.remove(state.meta.request_id)
        return state

    def remove(self, request_id: str) -> RequestState | None:
        state = self._items.pop(request_id, None)
        if state is not None:
            self._work = self._work - state.meta.expected_tokens if self._items else 0.0
        return state

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[RequestState]:
        return iter(list(self._items.values()))


class ServiceEstimate:
    """The ``slo`` policy's predicted service time of a request on a replica:
    ``first_token_s + expected_tokens * seconds_per_token``.

    ``seconds_per_token`` starts at the configured value and is refined from completions
    (:meth:`observe`) with what the router legitimately sees of each run: when it dispatched it,
    when the replica reported it finished, and the output tokens it reported; the true length never
    reaches it earlier. The estimate is a ratio of exponentially weighted sums, ``sum(w * (duration -
    first_token_s)) / sum(w * tokens)``, rather than an average of per-request rates: a short reply's
    rate is mostly its prefill and hand-off, so weighting by tokens keeps a few one-token replies from
    swinging it. The prior counts as ``PRIOR_TOKENS`` tokens at the configured rate. It measures what a
    request's run really costs on this cluster (a continuous batch's shared iterations, a static
    batch's wait for its longest member, the engine's real speed), which a configured constant cannot.

    Queues key their requests by the *published* value, which moves only when the learned one has
    drifted more than ``REKEY_TOLERANCE`` from it (``version`` then counts up and the queues re-key
    their requests): every key in a queue comes from one estimate, and the queues are not re-sorted
    at every completion."""

    WEIGHT = 0.05  # per completion: the last ~20 completions dominate
    PRIOR_TOKENS = 256.0
    REKEY_TOLERANCE = 0.05

    __slots__ = ("first_token_s", "seconds_per_token", "version", "_time", "_tokens", "num_observed")

    def __init__(self, seconds_per_token: float, first_token_s: float):
        if not (seconds_per_token >= 0 and first_token_s >= 0):
            raise ValueError(f"seconds_per_token and first_token_s must be >= 0, got {seconds_per_token}, "
                             f"{first_token_s}")
        self.first_token_s = float(first_token_s)
        self.seconds_per_token = float(seconds_per_token)  # the published value
        self.version = 0
        self._time = self.PRIOR_TOKENS * self.seconds_per_token
        self._tokens = self.PRIOR_TOKENS
        self.num_observed = 0

    @property
    def learned_seconds_per_token(self) -> float:
        return self._time / self._tokens

    def observe(self, duration_s: float, num_tokens: int) -> None:
        """A run of ``num_tokens`` output tokens took ``duration_s`` from dispatch to its finish report."""
        if not num_tokens or num_tokens < 0 or not duration_s >= 0:
            return  # nothing reported, or a clock that went backwards: no information
        w = self.WEIGHT
        self._time = (1 - w) * self._time + w * max(duration_s - self.first_token_s, 0.0)
        self._tokens = (1 - w) * self._tokens + w * num_tokens
        self.num_observed += 1
        learned = self._time / self._tokens
        if abs(learned - self.seconds_per_token) > self.REKEY_TOLERANCE * self.seconds_per_token:
            self.seconds_per_token = learned
            self.version += 1

    def service_s(self, meta: RequestMeta) -> float:
        return self.first_token_s + meta.expected_tokens * self.seconds_per_token

    def latest_start(self, meta: RequestMeta) -> float:
        """The last moment ``meta`` can start and still meet its SLOs as predicted (``inf``: it has none)."""
        latest = math.inf
        if meta.slo_jct_s is not None:
            latest = meta.arrival_at + meta.slo_jct_s - self.service_s(meta)
        if meta.slo_ttft_s is not None:
            latest = min(latest, meta.arrival_at + meta.slo_ttft_s - self.first_token_s)
        return latest


def has_slo(meta: RequestMeta) -> bool:
    return meta.slo_jct_s is not None or meta.slo_ttft_s is not None


class SLOQueue(RequestQueue):
    """The ``slo`` policy (see the module docstring). Three heaps: the feasible requests in SSJF order,
    the feasible ones with an SLO by latest start (lazy: re-keyed when the estimate's published value
    moves), and the deferred tail in SSJF order. Time moves requests from feasible to infeasible only,
    and the queue notices at its next look (:meth:`refresh`, which every peek and pop runs): an
    infeasible request leaves the feasible heaps for the tail (``shed=False``) or for :attr:`shed`,
    which the scheduler empties, answering each with a ``Rejection``. A deferred request stays
    deferred, even if a later estimate would find it feasible again: its SLO is given up."""

    def __init__(self, estimate: ServiceEstimate, guard_s: float, shed: bool):
        if not guard_s >= 0:
            raise ValueError(f"slo guard must be >= 0 s, got {guard_s}")
        self.estimate = estimate
        self.guard_s = guard_s
        self.shed_infeasible = shed
        self._by_len = HeapQueue(ssjf_key)
        self._by_start = self._start_heap()
        self._version = estimate.version
        self._tail = HeapQueue(ssjf_key)
        self.shed: list[RequestState] = []  # removed as infeasible, waiting for the scheduler's Rejection

    def _start_heap(self) -> HeapQueue:
        latest = self.estimate.latest_start
        return HeapQueue(lambda m: (latest(m), m.arrival_at, m.request_id))

    def push(self, state: RequestState) -> None:
        self._by_len.push(state)
        if has_slo(state.meta):
            self._by_start.push(state)

    def refresh(self, now: float) -> None:
        """Re-key after the estimate moved, then move every request now infeasible out of the feasible
        heaps (to the tail, or to :attr:`shed`)."""
        est = self.estimate
        if self._version != est.version:
            old = list(self._by_start)
            self._by_start = self._start_heap()
            for state in old:
                self._by_start.push(state)
            self._version = est.version
        by_start = self._by_start
        while (top := by_start.peek(now)) is not None and est.latest_start(top.meta) < now:
            rid = top.meta.request_id
            by_start.remove(rid)
            self._by_len.remove(rid)
            if self.shed_infeasible:
                self.shed.append(top)
            else:
                self._tail.push(top)

    def num_feasible(self, now: float) -> int:
        self.refresh(now)
        return len(self._by_len)

    def _choose(self, now: float, feasible_only: bool = False) -> RequestState | None:
        self.refresh(now)
        top = self._by_start.peek(now)
        if top is not None and now >= self.estimate.latest_start(top.meta) - self.guard_s:
            return top  # urgent: earliest latest start first
        state = self._by_len.peek(now)
        if state is not None or feasible_only:
            return state
        return self._tail.peek(now)

    def peek(self, now: float) -> RequestState | None:
        return self._choose(now)

    def pop(self, now: float, feasible_only: bool = False) -> RequestState | None:
        """The best request at ``now``; ``feasible_only``: None rather than a deferred one."""
        state = self._choose(now, feasible_only)
        if state is not None:
            self.remove(state.meta.request_id)
        return state

    def remove(self, request_id: str) -> RequestState | None:
        self._by_start.remove(request_id)
        state = self._by_len.remove(request_id)
        if state is None:
            state = self._tail.remove(request_id)
        return state

    def __len__(self) -> int:
        return len(self._by_len) + len(self._tail)

    def __iter__(self) -> Iterator[RequestState]:
        return itertools.chain(iter(self._by_len), iter(self._tail))

    @property
    def queued_work(self) -> float:
        return self._by_len.queued_work + self._tail.queued_work

    @property
    def num_deferred(self) -> int:
        return len(self._tail)


class OracleQueue(HeapQueue):
    """Shortest TRUE job first. Benchmark baseline only; the truth comes from ``truth(meta)``."""

    def __init__(self, truth: Callable[[RequestMeta], float]):
        super().__init__(lambda m: (truth(m), m.arrival_at, m.request_id))


def create_request_queue(
    policy: Policy | str,
    *,
    aging_rule: AgingRule | str = AgingRule.LINEAR,
    aging_rate: float = 0.0,
    aging_threshold_s: float = 0.0,
    truth: Callable[[RequestMeta], float] | None = None,
    srpt_aging_threshold_s: float = math.inf,
    estimate: ServiceEstimate | None = None,
    slo_guard_s: float = 0.0,
    slo_infeasible: SLOInfeasible | str = SLOInfeasible.DEFER,
) -> RequestQueue:
    policy = Policy.parse(policy)
    if policy is Policy.FCFS:
        return FCFSQueue()
    if policy is Policy.SLO:
        if estimate is None:
            raise ValueError("policy 'slo' needs a ServiceEstimate (the scheduler owns one per cluster)")
        return SLOQueue(estimate, slo_guard_s, SLOInfeasible.parse(slo_infeasible) is SLOInfeasible.SHED)
    if policy is Policy.SRPT:
        return SRPTQueue(srpt_aging_threshold_s)
    if policy is Policy.SSJF:
        return SSJFQueue()
    if policy is Policy.ORACLE:
        if truth is None:
            raise ValueError("policy 'oracle' needs the true lengths; only benchmarks and the simulator have them")
        return OracleQueue(truth)
    rule = AgingRule.parse(aging_rule)
    if rule is AgingRule.LINEAR:
        return LinearAgingQueue(aging_rate)
    if rule is AgingRule.THRESHOLD:
        return ThresholdAgingQueue(aging_threshold_s)
    return ResponseRatioQueue(aging_rate)


