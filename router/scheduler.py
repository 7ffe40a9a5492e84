"""The scheduler: per-replica queues, a balancer that picks the queue, slots by batching mode.

Pure logic with an injected clock. Every mutating call returns the decisions it made as a list of
:class:`Assignment` (run request X on replica Y now); a thin layer (the Ray actor, the simulator)
applies them. No call ever waits to fill a batch: a free slot takes work as soon as any exists.

Attempts: every dispatch gets a new attempt id (``next_attempt``, counted up; the router actor
seeds it from wall-clock microseconds, so a restarted router never reuses an id). A run is known by
(request id, attempt): ``complete``/``cancel``/``fail`` given an attempt act only while the request
runs under it, so a late report about an earlier dispatch cannot end a later one. ``adopt`` takes
in a run the scheduler does not know (it restarted, or dropped the replica) with its own attempt.

Preemption (``srpt`` only; docs/preemption.md): a replica reports a running request's progress every
``repredict_every_tokens`` tokens with its re-predicted remaining length (:meth:`progress`). A
running request is *preemptible* while it has been preempted fewer than ``max_preemptions`` times,
more than ``preempt_min_remaining_tokens`` are predicted to come (and fit under its max_tokens), and
it is younger than ``srpt_aging_threshold_s`` (the starvation guard, which also puts an older
waiting request first in its queue). At its progress point, a preemptible request gives its slot
to the waiting request that a queue would hand out next with the shortest remaining length (the
*candidate*) when the candidate is predicted ``preempt_margin`` times shorter: the decisions are a
:class:`Preemption` of the reporting request (it waits again, keyed by its remaining length,
keeping ``tokens_done``) followed by the candidate's :class:`Assignment` to that slot.

Preemption is decided at progress points only, not on arrival: there the engine sits at a known
token boundary of the request, so stopping it is exact and a request never runs in two places
(an arrival waits at most ``K`` tokens of each running request for its turn). Completion may still
race a preemption on a live replica: :meth:`complete` of a request preempted and waiting again
finishes it. The other policies never preempt and ignore :meth:`progress`; their hot path is
unchanged.

SLO (``slo`` only; docs/slo.md): the queues order by SSJF except urgent requests (near their latest
feasible start), by the cluster's :class:`~router.policies.ServiceEstimate` (``self.estimate``),
which :meth:`complete` refines from each finished run (dispatch to finish report, reported tokens).
A free slot takes a feasible request before a deferred one, from any queue (its own, the shared
one, then by stealing). With ``slo_infeasible='shed'`` a request predicted to miss its SLO even if
started now is dropped: on arrival (:meth:`enqueue` answers ``[Rejection]`` and keeps nothing), and
while it waits, at the next decision of any kind (every call that may dispatch first looks for
such requests in every queue). A :class:`Rejection` then comes first in the decision list; the
request is forgotten, like a cancelled one. Other policies never return one.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from router import batching
from router.batching import BatchingMode
from router.config import Balancer, SchedulerConfig
from router.policies import (
    Policy,
    RequestQueue,
    ServiceEstimate,
    SLOInfeasible,
    SLOQueue,
    create_request_queue,
)
from router.request import Assignment, Preemption, Rejection, RequestMeta, RequestState, RequestStatus

Decision = Assignment | Preemption | Rejection


class QueueFullError(RuntimeError):
    """The cluster-wide queue cap is reached; the caller should answer 429 with Retry-After."""


class ReplicaState:
    """One LLM replica as the scheduler sees it: its slots, what runs there, its own queue."""

    __slots__ = ("replica_id", "num_slots", "running", "running_work", "queue")

    def __init__(self, replica_id: str, num_slots: int, queue: RequestQueue):
        self.replica_id = replica_id
        self.num_slots = num_slots
        self.running: dict[str, RequestState] = {}
        self.running_work = 0.0
        self.queue = queue

    def free_slots(self, mode: BatchingMode) -> int:
        return batching.free_slots(mode, self.num_slots, len(self.running))

    @property
    def outstanding_work(self) -> float:
        """Predicted tokens queued here plus predicted tokens of what runs here."""
        return self.queue.queued_work + self.running_work

    def snapshot(self) -> dict:
        return {
            "replica_id": self.replica_id,
            "num_slots": self.num_slots,
            "num_running": len(self.running),
            "num_queued": len(self.queue),
            "outstanding_work": self.outstanding_work,
        }


class Scheduler:
    """SSJF-family scheduling across replicas.

    A new request joins one replica's queue (chosen by the balancer) or, under ``late-binding``
    (or while no replica is registered), a shared queue. A replica with a free slot takes, in
    order: the best request of its own queue, the best of the shared queue, and (work stealing)
    the best of the longest other queue.
    """

    def __init__(
        self,
        config: SchedulerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        truth: Callable[[RequestMeta], float] | None = None,
        first_attempt: int = 0,
    ):
        self.config = config or SchedulerConfig()
        self.clock = clock
        self._truth = truth
        self._rng = random.Random(self.config.seed)
        c = self.config
        self._slo = c.policy is Policy.SLO
        # slo: the one service-time estimate of the cluster, shared by every queue (they key by it).
        self.estimate = ServiceEstimate(c.slo_seconds_per_token, c.slo_first_token_s) if self._slo else None
        self._shed = self._slo and c.slo_infeasible is SLOInfeasible.SHED
        self._adopted: set[str] = set()  # slo: adopted runs, whose dispatch time the router never saw
        self.num_rejected = 0
        self.replicas: dict[str, ReplicaState] = {}
        self._ids: list[str] = []
        # Per replica, in ``_ids`` order: load (outstanding work per slot) and queue length, kept in
        # step with every change (``_sync``) so that least-work and work stealing pick with one C-level
        # min/max instead of a Python call per replica (the simulator runs millions of requests).
        self._pos: dict[str, int] = {}
        self._loads: list[float] = []
        self._qlens: list[int] = []
        self._rr_next = 0
        self._shared = self._new_queue()
        # Replicas with at least one free slot, oldest-free first (dict as an ordered set).
        self._free: dict[str, None] = {}
        self.requests: dict[str, RequestState] = {}
        self.num_queued = 0
        self.num_running = 0
        self._next_batch_id = 0
        self.next_attempt = first_attempt  # the attempt id of the next dispatch
        self._preemptive = self.config.policy is Policy.SRPT and self.config.max_preemptions > 0

    def _new_queue(self) -> RequestQueue:
        c = self.config
        return create_request_queue(
            c.policy, aging_rule=c.aging_rule, aging_rate=c.aging_rate,
            aging_threshold_s=c.aging_threshold_s, truth=self._truth,
            srpt_aging_threshold_s=c.srpt_aging_threshold_s, estimate=self.estimate,
            slo_guard_s=c.slo_guard_s, slo_infeasible=c.slo_infeasible,
        )

    # ---- replicas -------------------------------------------------------------------------
    def add_replica(self, replica_id: str, num_slots: int | None = None, *, dispatch: bool = True) -> list[Assignment]:
        """Register (or re-register) a replica; returns the work it takes at once. ``dispatch=False``:
        take none yet (the caller first :meth:`adopt` s the runs it already has, then :meth:`dispatch` es)."""
        slots = batching.num_slots(self.config.batching, self.config.max_batch if num_slots is None else num_slots)
        if slots < 1:
            raise ValueError(f"replica {replica_id!r}: num_slots must be >= 1, got {slots}")
        replica = self.replicas.get(replica_id)
        if replica is None:
            replica = ReplicaState(replica_id, slots, self._new_queue())
            self.replicas[replica_id] = replica
            self._pos[replica_id] = len(self._ids)
            self._ids.append(replica_id)
            self._loads.append(0.0)
            self._qlens.append(0)
        else:
            replica.num_slots = slots
        self._sync(replica)
        self._update_free(replica)
        return self._dispatch() if dispatch else []

    def adopt(self, replica_id: str, meta: RequestMeta, attempt: int) -> bool:
        """Take in a run that ``replica_id`` reports and the scheduler does not know (it restarted, or
        dropped the replica and saw it again): the request runs there under ``attempt``, holding a slot
        and its predicted work like a dispatched one (the replica may then be over full: it takes no
        more until enough end). False, and nothing changes, when the replica is not registered or the
        request is already known (queued, or running elsewhere or under another attempt)."""
        replica = self.replicas.get(replica_id)
        rid = meta.request_id
        if replica is None or rid in self.requests:
            return False
        now = self.clock()
        state = RequestState(meta, now)
        state.status = RequestStatus.RUNNING
        state.dispatched_at = now
        state.replica_id = replica_id
        state.attempt = attempt
        self.requests[rid] = state
        replica.running[rid] = state
        replica.running_work += state.predicted_remaining
        self.num_running += 1
        if self._slo:
            self._adopted.add(rid)
        if attempt >= self.next_attempt:  # ids stay unique even if a clock went backwards
            self.next_attempt = attempt + 1
        self._sync(replica)
        self._update_free(replica)
        return True

    def remove_replica(self, replica_id: str) -> tuple[list[RequestMeta], list[Decision]]:
        """Forget a dead or drained replica.

        Its queued requests move to other queues. Requests that were running there are returned
        (and forgotten): the caller retries them with :meth:`enqueue` or reports the error.
        """
        replica = self.replicas.pop(replica_id, None)
        if replica is None:
            return [], []
        self._ids.remove(replica_id)
        self._pos = {rid: i for i, rid in enumerate(self._ids)}
        self._loads = [self._load(rid) for rid in self._ids]
        self._qlens = [len(self.replicas[rid].queue) for rid in self._ids]
        self._free.pop(replica_id, None)
        orphans = []
        for state in replica.running.values():
            del self.requests[state.meta.request_id]
            self._adopted.discard(state.meta.request_id)
            self.num_running -= 1
            state.status = RequestStatus.FAILED
            orphans.append(state.meta)
        moved = []
        while (state := replica.queue.pop(self.clock())) is not None:
            moved.append(state)
        for state in moved:
            state.num_requeues += 1
            self._place(state)
        rejections = [self._reject(state) for state in self._drain(replica.queue)] if self._shed else []
        return orphans, rejections + self._dispatch()

    # ---- requests -------------------------------------------------------------------------
    def enqueue(self, meta: RequestMeta) -> list[Decision]:
        if meta.request_id in self.requests:
            raise ValueError(f"request {meta.request_id!r} is already scheduled")
        cap = self.config.max_queued
        if cap is not None and self.num_queued >= cap:
            raise QueueFullError(f"queue is full ({self.num_queued} waiting, max_queued={cap})")
        return self._admit(meta)

    def requeue(self, meta: RequestMeta) -> list[Decision]:
        """A dispatched run never started (its replica died or bounced the call): queue the request
        again with its own arrival time, then dispatch. One step, so the slot it frees does not go
        to the request behind it first: a retried request keeps its turn. It was admitted once, so
        the queue cap does not apply. A request that is already waiting stays where it is."""
        state = self.requests.get(meta.request_id)
        if state is not None and state.status is not RequestStatus.RUNNING:
            return []
        if state is not None:
            self._finish(meta.request_id, RequestStatus.FAILED, None, dispatch=False)
        return self._admit(meta)

    def _admit(self, meta: RequestMeta) -> list[Decision]:
        now = self.clock()
        if self._shed and self.estimate.latest_start(meta) < now:
            # Predicted to miss its SLO even if it started now: refused at once, never queued.
            self.num_rejected += 1
            return [Rejection(meta.request_id)]
        state = RequestState(meta, now)
        self.requests[meta.request_id] = state
        self.num_queued += 1
        self._place(state)
        return self._dispatch()

    def progress(self, request_id: str, tokens_done: int, predicted_remaining: float,
                 attempt: int | None = None) -> list[Assignment | Preemption]:
        """``srpt``: a running request has generated ``tokens_done`` tokens and is re-predicted to need
        ``predicted_remaining`` more (capped by its max_tokens). It may be preempted for a waiting
        request predicted shorter by the margin (see the module docstring). Other policies, an unknown
        request, a stale attempt or a request not running: nothing changes, no decision."""
        if self.config.policy is not Policy.SRPT:
            return []
        state = self.state_for(request_id, attempt)
        if state is None or state.status is not RequestStatus.RUNNING:
            return []
        if tokens_done < 0 or not predicted_remaining >= 0:
            raise ValueError(f"progress of {request_id!r}: tokens_done and predicted_remaining must be >= 0, "
                             f"got {tokens_done} and {predicted_remaining}")
        remaining = min(float(predicted_remaining), float(max(state.meta.max_tokens - tokens_done, 0)))
        replica = self.replicas.get(state.replica_id)
        if replica is not None:
            replica.running_work += remaining - state.predicted_remaining
            self._sync(replica)
        state.predicted_remaining = remaining
        state.tokens_done = tokens_done
        if not self._preemptive or not self.num_queued:
            return []
        return self._preempt_for_candidate(state)

    def complete(self, request_id: str, num_output_tokens: int | None = None,
                 attempt: int | None = None) -> list[Decision]:
        """A running request finished on its replica: free the slot, start what comes next.
        ``attempt`` (see :meth:`state_for`): only if it still runs under that dispatch."""
        return self._finish(request_id, RequestStatus.FINISHED, num_output_tokens, attempt=attempt)

    def cancel(self, request_id: str, attempt: int | None = None) -> list[Decision]:
        """The client went away: drop it from its queue, or free its slot if it was running."""
        return self._finish(request_id, RequestStatus.CANCELLED, None, attempt=attempt)

    def fail(self, request_id: str, attempt: int | None = None) -> list[Decision]:
        return self._finish(request_id, RequestStatus.FAILED, None, attempt=attempt)

    def state_for(self, request_id: str, attempt: int | None = None) -> RequestState | None:
        """The state an end of (``request_id``, ``attempt``) acts on: with an attempt, the request only
        while it runs under that dispatch (a queued one has none); without, the request in any state.
        None: there is nothing to end (unknown, already ended, or the attempt is stale)."""
        state = self.requests.get(request_id)
        if state is None or (attempt is not None and state.attempt != attempt):
            return None
        return state

    def _finish(self, request_id: str, status: RequestStatus, num_output_tokens,
                dispatch: bool = True, attempt: int | None = None) -> list[Decision]:
        state = self.state_for(request_id, attempt)
        if state is None:
            return []  # already finished, cancelled or orphaned, or a stale attempt: idempotent
        del self.requests[request_id]
        state.finished_at = self.clock()
        state.num_output_tokens = num_output_tokens
        if self._slo and state.status is RequestStatus.RUNNING:
            self._learn(state, status)
        if state.status is RequestStatus.RUNNING:
            replica = self.replicas.get(state.replica_id)
            state.status = status
            self.num_running -= 1
            if replica is not None:
                del replica.running[request_id]
                replica.running_work -= state.predicted_remaining
                if not replica.running:
                    replica.running_work = 0.0
                self._sync(replica)
                self._update_free(replica)
            return self._dispatch() if dispatch else []
        # srpt: a completion that raced its preemption (the replica sent the last token before it
        # stopped the run): the request is done; it leaves its queue.
        if status is RequestStatus.FINISHED and not state.num_preemptions:
            self.requests[request_id] = state  # put back: completing a queued request is a bug
            raise ValueError(f"request {request_id!r} is queued, not running: it cannot complete")
        state.status = status
        self.num_queued -= 1
        if state.queue_replica_id is None:
            self._shared.remove(request_id)
        else:
            replica = self.replicas[state.queue_replica_id]
            replica.queue.remove(request_id)
            self._sync(replica)
        return []

    # ---- internals ------------------------------------------------------------------------
    def _sync(self, replica: ReplicaState) -> None:
        """Refresh the cached load and queue length of ``replica`` after its queue or running set changed."""
        pos = self._pos[replica.replica_id]
        self._loads[pos] = (replica.queue.queued_work + replica.running_work) / replica.num_slots
        self._qlens[pos] = len(replica.queue)

    def _update_free(self, replica: ReplicaState) -> None:
        if replica.free_slots(self.config.batching) > 0:
            if replica.replica_id not in self._free:
                self._free[replica.replica_id] = None
        else:
            self._free.pop(replica.replica_id, None)

    def _place(self, state: RequestState) -> None:
        if not self._ids or self.config.balancer is Balancer.LATE_BINDING:
            state.queue_replica_id = None
            self._shared.push(state)
            return
        replica = self.replicas[self._choose_replica()]
        state.queue_replica_id = replica.replica_id
        replica.queue.push(state)
        self._sync(replica)

    def _choose_replica(self) -> str:
        ids = self._ids
        balancer = self.config.balancer
        if len(ids) == 1:
            return ids[0]
        if balancer is Balancer.ROUND_ROBIN:
            rid = ids[self._rr_next % len(ids)]
            self._rr_next += 1
            return rid
        if balancer is Balancer.POWER_OF_TWO:
            a, b = self._rng.sample(ids, 2)
            return a if self._load(a) <= self._load(b) else b
        loads = self._loads  # least-work; ties go to the first registered (list.index finds the first)
        return ids[loads.index(min(loads))]

    def _load(self, replica_id: str) -> float:
        replica = self.replicas[replica_id]
        return replica.outstanding_work / replica.num_slots

    def _take(self, replica: ReplicaState, now: float) -> RequestState | None:
        if self._slo:
            return self._take_slo(replica, now)
        state = replica.queue.pop(now)
        if state is not None:
            self._sync(replica)
            return state
        if len(self._shared):
            return self._shared.pop(now)
        if self.config.work_stealing:
            # The longest queue (the first registered among equals).
            qlens = self._qlens
            longest = max(qlens)
            if longest:
                victim = self.replicas[self._ids[qlens.index(longest)]]
                state = victim.queue.pop(now)
                self._sync(victim)
        return state

    def dispatch(self) -> list[Decision]:
        """Fill free slots from the queues (after ``add_replica(..., dispatch=False)`` and adoptions).
        ``slo`` with shedding: also drops the waiting requests that can no longer meet their SLO
        (a caller may call this now and then just for that, so their clients hear early)."""
        return self._dispatch()

    def _dispatch(self) -> list[Decision]:
        if self._shed and self.num_queued:
            rejections = self._expire(self.clock())
            if rejections:
                return rejections + self._fill()
        return self._fill()

    def _fill(self) -> list[Decision]:
        assignments: list[Decision] = []
        if not self.num_queued or not self._free:
            return assignments
        now = self.clock()
        attempt = self.next_attempt
        static = self.config.batching is BatchingMode.STATIC
        for replica_id in list(self._free):
            if not self.num_queued:
                break
            replica = self.replicas[replica_id]
            batch_id = None
            if static:
                batch_id = self._next_batch_id
                self._next_batch_id += 1
            for _ in range(replica.free_slots(self.config.batching)):
                state = self._take(replica, now)
                if state is None:
                    break
                state.status = RequestStatus.RUNNING
                state.dispatched_at = now
                state.replica_id = replica_id
                state.attempt = attempt
                replica.running[state.meta.request_id] = state
                replica.running_work += state.predicted_remaining
                self.num_queued -= 1
                self.num_running += 1
                assignments.append(Assignment(state.meta.request_id, replica_id, batch_id, attempt))
                attempt += 1
            self._sync(replica)
            self._update_free(replica)
        self.next_attempt = attempt
        return assignments

    # ---- slo: learning, feasibility, shedding -----------------------------------------------
    def _learn(self, state: RequestState, status: RequestStatus) -> None:
        """A run ended: a finished one with reported tokens teaches the service estimate its duration
        from dispatch to the finish report. Not an adopted run: the router never saw its dispatch."""
        rid = state.meta.request_id
        if rid in self._adopted:
            self._adopted.discard(rid)
            return
        if status is RequestStatus.FINISHED and state.num_output_tokens and state.dispatched_at is not None:
            self.estimate.observe(state.finished_at - state.dispatched_at, state.num_output_tokens)

    def _queues(self):
        yield self._shared, None
        for replica in self.replicas.values():
            yield replica.queue, replica

    def _drain(self, queue: SLOQueue) -> list[RequestState]:
        states, queue.shed = queue.shed, []
        return states

    def _expire(self, now: float) -> list[Decision]:
        """Shed mode: drop every waiting request that can no longer meet its SLO (a Rejection each)."""
        rejections: list[Decision] = []
        for queue, replica in self._queues():
            if not len(queue):
                continue
            queue.refresh(now)
            if queue.shed:
                rejections += [self._reject(state) for state in self._drain(queue)]
                if replica is not None:
                    self._sync(replica)
        return rejections

    def _reject(self, state: RequestState) -> Rejection:
        """Forget a queued request that a queue shed (it already left the queue)."""
        rid = state.meta.request_id
        del self.requests[rid]
        self.num_queued -= 1
        self.num_rejected += 1
        state.status = RequestStatus.REJECTED
        state.finished_at = self.clock()
        return Rejection(rid)

    def _take_slo(self, replica: ReplicaState, now: float) -> RequestState | None:
        """``_take`` under ``slo``: a feasible request from the own queue, the shared queue or (work
        stealing) the queue with the most feasible requests; only when none is anywhere, a deferred
        one in the same order (from the longest queue)."""
        for feasible_only in (True, False):
            state = replica.queue.pop(now, feasible_only)
            if state is not None:
                self._sync(replica)
                return state
            state = self._shared.pop(now, feasible_only)
            if state is not None:
                return state
            if self.config.work_stealing and max(self._qlens):
                victim, most = None, 0
                for other in self.replicas.values():
                    count = other.queue.num_feasible(now) if feasible_only else len(other.queue)
                    if count > most:
                        victim, most = other, count
                if victim is not None:
                    state = victim.queue.pop(now, feasible_only)
                    self._sync(victim)
                    return state
        return None

    # ---- srpt: preemption -------------------------------------------------------------------
    def _preemptible(self, state: RequestState, now: float) -> bool:
        c = self.config
        floor = c.preempt_min_remaining_tokens
        return (state.num_preemptions < c.max_preemptions and state.predicted_remaining > floor
                and state.meta.max_tokens - state.tokens_done > floor
                and now - state.meta.arrival_at < c.srpt_aging_threshold_s)

    def _candidate(self, now: float) -> tuple[RequestState, RequestQueue, ReplicaState | None] | None:
        """The request some queue hands out next with the shortest predicted remaining length, its
        queue and that queue's replica (None: the shared queue)."""
        best = None
        shared = self._shared
        for queue, replica in ((shared, None), *((r.queue, r) for r in self.replicas.values())):
            if not len(queue):
                continue
            state = queue.peek(now)
            if best is None or (state.predicted_remaining, state.meta.arrival_at) < (
                    best[0].predicted_remaining, best[0].meta.arrival_at):
                best = (state, queue, replica)
        return best

    def _preempt_for_candidate(self, victim: RequestState) -> list[Assignment | Preemption]:
        """Preempt running ``victim`` for the candidate when it is preemptible and the candidate is
        shorter by the margin."""
        now = self.clock()
        if not self._preemptible(victim, now):
            return []
        found = self._candidate(now)
        if found is None:
            return []
        candidate, queue, home = found
        if victim.predicted_remaining < self.config.preempt_margin * candidate.predicted_remaining:
            return []
        replica = self.replicas[victim.replica_id]
        rid = victim.meta.request_id
        # The victim stops and waits again, keeping its progress (and the attempt it ran under, so
        # a completion that raced the preemption is still accepted: see _finish).
        del replica.running[rid]
        replica.running_work -= victim.predicted_remaining
        victim.status = RequestStatus.QUEUED
        victim.num_preemptions += 1
        decisions: list[Assignment | Preemption] = [Preemption(rid, replica.replica_id, victim.attempt)]
        # The candidate takes its slot at once (the few lines of _dispatch's loop, kept inline there).
        queue.remove(candidate.meta.request_id)
        if home is not None:
            self._sync(home)
        attempt = self.next_attempt
        self.next_attempt += 1
        candidate.status = RequestStatus.RUNNING
        candidate.dispatched_at = now
        candidate.replica_id = replica.replica_id
        candidate.attempt = attempt
        replica.running[candidate.meta.request_id] = candidate
        replica.running_work += candidate.predicted_remaining
        decisions.append(Assignment(candidate.meta.request_id, replica.replica_id, None, attempt))
        self._sync(replica)
        self._place(victim)
        return decisions

    # ---- views ----------------------------------------------------------------------------
    def outstanding_work(self) -> float:
        """Predicted tokens queued or running across the cluster (an autoscaling signal)."""
        return self._shared.queued_work + sum(r.outstanding_work for r in self.replicas.values())

    def snapshot(self) -> dict:
        out = {
            "num_queued": self.num_queued,
            "num_running": self.num_running,
            "num_shared_queued": len(self._shared),
            "replicas": [self.replicas[rid].snapshot() for rid in self._ids],
        }
        if self._slo:  # the slo policy's state: its estimate, what it shed and what waits deferred
            out["slo"] = {"seconds_per_token": self.estimate.seconds_per_token,
                          "num_observed": self.estimate.num_observed, "num_rejected": self.num_rejected,
                          "num_deferred": sum(queue.num_deferred for queue, _ in self._queues())}
        return out
