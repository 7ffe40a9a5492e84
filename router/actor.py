"""The central router: the scheduling core behind an async, restartable Ray actor.

:class:`RouterService` applies the core's decisions for callers that wait on them: ``enqueue``
parks an ``asyncio.Future`` per request and resolves it when an :class:`Assignment` for that
request comes out of any call (enqueue, complete, cancel, heartbeat, replica removal), or with
:class:`~router.messages.Shed` when a :class:`Rejection` does (``slo`` policy, ``slo_infeasible='shed'``). It is pure
asyncio (no Ray) and unit-tested with an injected clock. :class:`RouterActor` is the thin actor
around it (a detached named actor with ``max_restarts``), adding the periodic sweep; and
:class:`RouterClient` is how the ingress and the LLM replicas find, create and call it.

Batching: one actor call per request each way costs more than the scheduling itself, so busy
callers batch. :class:`BatchedEnqueuer` (the ingress) sends new requests with ``submit`` and
collects dispatch answers with a long ``poll``; :class:`Reporter` (replicas, ingress) sends
completions and cancellations with ``report``. While a call is in flight the next batch fills,
so an idle cluster pays one call per request and a busy one far fewer. What these calls carry is
typed in :mod:`router.messages`.

Restarts and hangs: a restarted actor starts empty. Replicas re-register on their next heartbeat,
which lists the runs they have in flight (:class:`~router.messages.Running`, with their attempts):
the new router adopts them, so their slots count at once and their reports free them as usual.
Attempt ids start at the wall clock's microseconds, so a successor never reuses one, and a report
naming an attempt acts only on that run (a late report of an earlier dispatch is ignored and
counted as stale). An ingress whose ``enqueue`` failed because the actor died enqueues again (same
id, same arrival time, so the request keeps its place). A router that hangs without dying (stopped,
a blocked event loop) fails no call by itself: :class:`BatchedEnqueuer` pings it while anything is
outstanding and fails the outstanding enqueues with :class:`RouterUnresponsive` after
``call_timeout_s`` (retried like a death); a client that heard nothing for ``hung_kill_s`` kills the
actor so that Ray restarts it. Reports have a deadline too; those lost to a dead or hung router are
harmless (the successor adopts the runs; a router that wakes frees unlisted runs by lease expiry).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Callable

from router.config import SchedulerConfig
from router.messages import (
    Cancelled,
    Dispatched,
    DispatchRecord,
    EnqueueAnswer,
    NoReplica,
    Polled,
    QueueFull,
    Report,
    ReportKind,
    Running,
    Shed,
)
from router.policies import Policy, SLOInfeasible
from router.request import Assignment, Preemption, Rejection, RequestMeta, RequestStatus
from router.scheduler import QueueFullError, Scheduler

logger = logging.getLogger(__name__)


class RouterService:
    """Per-request futures over a :class:`~router.scheduler.Scheduler`; decisions applied as they appear.

    Accounting (``counters``; it holds after every call, so once idle with nothing queued or running):

    - runs: ``dispatched + adopted == completed + cancelled + failed + requeued + preempted +
      num_running``. A run begins when a waiter is answered :class:`Dispatched` or a heartbeat
      reports a run the router does not know (``adopted``); it ends once, as ``completed``,
      ``cancelled`` (its caller left), ``failed`` (the replica said so, its lease expired (also
      ``leases_expired``), its replica was removed under it, or its answer went unpolled),
      ``requeued`` (its caller saw it never run) or ``preempted`` (``srpt``: :meth:`progress`
      stopped it; the request waits again).
    - the queue: ``enqueued + preempted == dispatched + withdrawn + shed + num_queued``; ``withdrawn``
      counts queued requests that left before a run (cancelled, their client gone, answered
      NoReplica, dispatched to nobody: the waiter had gone, or a preempted one whose run completed
      after all: ``preempt_races``); ``shed`` those the policy dropped unrun (a :class:`Rejection`:
      ``slo`` predicts they miss their SLO), answered :class:`~router.messages.Shed` (or nobody, if
      their waiter had gone; a later call for the same request is answered Shed too).
    - ``stale_reports``: reports naming an attempt the request no longer runs under (a late or
      duplicate report): ignored, so they never count an end twice. ``rejected``: QueueFull and
      NoReplica answers.
    """

    def __init__(self, config: SchedulerConfig, *, retry_after_s: float = 1.0, replica_timeout_s: float = 15.0,
                 lease_s: float = 30.0, clock: Callable[[], float] = time.time, history: int = 10_000,
                 first_attempt: int | None = None):
        # Wall-clock time: arrival_at is stamped by the ingress, in another process. Attempt ids start
        # at the clock's microseconds, so a restarted router gives ids above all of its predecessor's.
        if first_attempt is None:
            first_attempt = int(clock() * 1_000_000)
        self.scheduler = Scheduler(config, clock=clock, first_attempt=first_attempt)
        self.clock = clock
        self.retry_after_s = retry_after_s
        self.replica_timeout_s = replica_timeout_s
        self.lease_s = lease_s
        # Who waits for each queued request: an enqueue call's future, or a batching client's id.
        self._waiters: dict[str, asyncio.Future | str] = {}
        self._outboxes: dict[str, list[Polled]] = {}  # client id -> answers not yet polled
        self._outbox_ready: dict[str, asyncio.Event] = {}
        self._client_seen: dict[str, float] = {}
        self._last_seen: dict[str, float] = {}
        # Runs that ended by a report or a requeue, newest last (at most ``history``): a heartbeat that
        # was sent before such an end but arrives after it must not adopt the run again.
        self._ended: dict[tuple[str, int], None] = {}
        self._history = history
        self.started_at = clock()
        self.last_heartbeat_at = self.started_at
        self.last_replica_at = self.started_at  # when some LLM replica was last registered
        self.dispatch_log: deque[DispatchRecord] = deque(maxlen=history)
        self.counters = {"enqueued": 0, "dispatched": 0, "adopted": 0, "completed": 0, "cancelled": 0,
                         "failed": 0, "requeued": 0, "withdrawn": 0, "rejected": 0, "stale_reports": 0,
                         "replicas_removed": 0, "leases_expired": 0, "preempted": 0, "preempt_races": 0,
                         "progress_reports": 0, "shed": 0}
        # Requests shed (``Rejection``), newest last (at most ``history``), with the reason: a call that
        # joins one after its answer (a resubmit, the ingress of a preempted run) is answered Shed again
        # instead of queueing it anew.
        self._shed: dict[str, str] = {}
        self._sheds = config.policy is Policy.SLO and config.slo_infeasible is SLOInfeasible.SHED

    # ---- requests ----------------------------------------------------------------------------
    async def enqueue(self, meta: RequestMeta, requeue: bool = False) -> EnqueueAnswer:
        """Wait until the policy dispatches ``meta``; answer :class:`Dispatched` (or why not).
        ``requeue``: its last dispatch never ran (the replica died or bounced the call)."""
        rid = meta.request_id
        existing = self._to_join(rid, requeue)
        if existing is None and rid in self._shed:  # shed already: the same answer again
            return Shed(self._shed[rid])
        if existing is not None:  # a caller retrying a call that did reach us: join the first one
            if existing.status is RequestStatus.RUNNING:
                return Dispatched(existing.replica_id, None, existing.attempt)
            fut = self._waiters.get(rid)
            if not isinstance(fut, asyncio.Future):
                fut = self._waiters[rid] = asyncio.get_running_loop().create_future()
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        answer = self._admit(meta, fut, requeue)
        if answer is not None:
            return answer
        try:
            return await fut
        except asyncio.CancelledError:
            # The caller went away while waiting (its call was cancelled, which cancels ``fut`` too):
            # free its place, or the run it was answered (unless a newer call took the request over).
            if fut.cancelled() or not fut.done():
                if self._waiters.get(rid) is fut:
                    del self._waiters[rid]
                    self._end(rid, ReportKind.CANCEL)
            elif not fut.cancelled() and isinstance(fut.result(), Dispatched):
                self._end(rid, ReportKind.CANCEL, fut.result().attempt)
            raise

    def _to_join(self, request_id: str, requeue: bool):
        """The scheduled state a call for ``request_id`` joins, or None when it is to be admitted. For
        a requeue, a running state is the run that failed: admitted again, in its place (``_admit``)."""
        existing = self.scheduler.requests.get(request_id)
        if requeue and existing is not None and existing.status is RequestStatus.RUNNING:
            return None
        return existing

    def _admit(self, meta: RequestMeta, waiter: asyncio.Future | str, requeue: bool = False) -> EnqueueAnswer | None:
        """Queue a new request for ``waiter``: None when it waits, else the immediate answer.
        ``requeue``: it ran and failed; it goes back in its own place (``Scheduler.requeue``)."""
        if self._no_replica():
            # Every LLM replica is gone (e.g. its nodes were lost): say so now rather than queue
            # the request behind nothing. Serve (or the Ray autoscaler) may bring one back.
            self.counters["rejected"] += 1
            return NoReplica(self.retry_after_s)
        sched = self.scheduler
        failed_run = sched.requests.get(meta.request_id) if requeue else None
        try:
            assignments = sched.requeue(meta) if requeue else sched.enqueue(meta)
        except QueueFullError:
            self.counters["rejected"] += 1
            return QueueFull(self.retry_after_s)
        if failed_run is not None:  # the run it had ends here (an unknown or lost one: just admitted)
            self.counters["requeued"] += 1
            self._remember_end(meta.request_id, failed_run.attempt)
        self._waiters[meta.request_id] = waiter
        self.counters["enqueued"] += 1
        self._apply(assignments)
        return None

    # ---- batching clients --------------------------------------------------------------------
    def submit(self, client_id: str, metas: list[RequestMeta], requeue_ids: list[str] = ()) -> None:
        """Queue requests for a batching client; their answers wait in its outbox for :meth:`poll`.
        ``requeue_ids`` ran on a replica that died or bounced them: that run is forgotten first."""
        self._client_seen[client_id] = self.clock()
        box = self._outboxes.setdefault(client_id, [])
        requeue = set(requeue_ids)
        for meta in metas:
            rid = meta.request_id
            again = rid in requeue
            existing = self._to_join(rid, again)
            if existing is None and rid in self._shed:  # shed already: the same answer again
                box.append(Polled(rid, Shed(self._shed[rid])))
                continue
            if existing is not None:  # sent again (the client retried): answer or wait as before
                if existing.status is RequestStatus.RUNNING:
                    if not _has_dispatched(box, rid, existing.attempt):  # one answer per run
                        box.append(Polled(rid, Dispatched(existing.replica_id, None, existing.attempt)))
                else:
                    old = self._waiters.get(rid)
                    if isinstance(old, asyncio.Future) and not old.done():
                        old.set_result(Cancelled())  # one waiter per request: the latest
                    self._waiters[rid] = client_id
                continue
            answer = self._admit(meta, client_id, again)
            if answer is not None:
                box.append(Polled(rid, answer))
        if box:
            self._ready(client_id).set()

    async def poll(self, client_id: str, timeout_s: float = 1.0) -> list[Polled]:
        """The answers for ``client_id`` so far, waiting up to ``timeout_s`` for the first one."""
        self._client_seen[client_id] = self.clock()
        if not self._outboxes.get(client_id):
            ready = self._ready(client_id)
            ready.clear()
            try:
                await asyncio.wait_for(ready.wait(), timeout_s)
            except asyncio.TimeoutError:
                pass
        self._client_seen[client_id] = self.clock()
        out = self._outboxes.get(client_id) or []
        self._outboxes[client_id] = []
        return out

    def report(self, reports: list[Report]) -> None:
        """Several reports in one call, applied in order."""
        for r in reports:
            if r.kind is ReportKind.REMOVE_REPLICA:
                self.remove_replica(r.replica_id)
            else:
                self._end(r.request_id, r.kind, r.attempt, r.num_output_tokens)

    def _ready(self, client_id: str) -> asyncio.Event:
        event = self._outbox_ready.get(client_id)
        if event is None:
            event = self._outbox_ready[client_id] = asyncio.Event()
        return event

    def _drop_client(self, client_id: str) -> None:
        """A batching client stopped polling (its ingress died): free what it held."""
        for rid, waiter in list(self._waiters.items()):
            if waiter == client_id:
                del self._waiters[rid]
                self._end(rid, ReportKind.CANCEL)
        for polled in self._outboxes.pop(client_id, []):
            if isinstance(polled.answer, Dispatched):  # nobody will run it
                self._end(polled.request_id, ReportKind.FAIL, polled.answer.attempt)
        self._outbox_ready.pop(client_id, None)
        self._client_seen.pop(client_id, None)

    async def requeue(self, meta: RequestMeta) -> EnqueueAnswer:
        """Its replica died or bounced the call before it produced output: forget the run and wait
        again in the request's own place (the slot it frees does not go to the one behind it first)."""
        return await self.enqueue(meta, requeue=True)

    def complete(self, request_id: str, num_output_tokens: int | None = None, attempt: int | None = None) -> None:
        self._end(request_id, ReportKind.COMPLETE, attempt, num_output_tokens)

    def cancel(self, request_id: str, attempt: int | None = None) -> None:
        self._end(request_id, ReportKind.CANCEL, attempt)

    def fail(self, request_id: str, attempt: int | None = None) -> None:
        self._end(request_id, ReportKind.FAIL, attempt)

    def progress(self, request_id: str, attempt: int, tokens_done: int, predicted_remaining: float) -> bool:
        """``srpt``: the run (``request_id``, ``attempt``) has generated ``tokens_done`` tokens and is
        re-predicted to need ``predicted_remaining`` more (``Scheduler.progress``). True: it is preempted
        (its replica stops it and reports nothing more for it; the ingress asks again with ``enqueue``,
        which joins the request's new place in the queue) and the slot went to the candidate. Other
        policies, a stale attempt, or a request not running here: False, nothing changes."""
        self.counters["progress_reports"] += 1
        decisions = self.scheduler.progress(request_id, tokens_done, predicted_remaining, attempt)
        if not decisions:
            return False
        preempted = False
        assignments = []
        for d in decisions:
            if not isinstance(d, Preemption):
                assignments.append(d)
                continue
            preempted = preempted or (d.request_id == request_id and d.attempt == attempt)
            self.counters["preempted"] += 1
            self._remember_end(d.request_id, d.attempt)  # a heartbeat still listing it must not adopt it
            # Its ingress asks again once the replica's stream says so; a dispatch that comes first
            # waits in this future, which that call then joins (``_to_join``: a running state answers
            # at once). An ingress that never asks leaves the run to lease expiry, as any lost answer.
            self._waiters[d.request_id] = asyncio.get_running_loop().create_future()
        self._apply(assignments)
        return preempted

    def _end(self, request_id: str, kind: ReportKind, attempt: int | None = None,
             num_output_tokens: int | None = None, remember: bool = True) -> bool:
        """End ``request_id`` (a report of ``kind``, or the router's own decision) and count it once.
        With ``attempt``, only the run under that dispatch (see ``Scheduler.state_for``); otherwise
        (the ingress, which owns the request) in any state. ``remember``: the run ended for good, so
        a later heartbeat listing it is stale (a replica's report says so even when it is stale
        itself); False where the replica may still run it (lease expiry). False when there was
        nothing to end; a report naming an attempt then counts as stale."""
        sched = self.scheduler
        state = sched.state_for(request_id, attempt)
        running = state is not None and state.status is RequestStatus.RUNNING
        if remember and (attempt is not None or running):
            self._remember_end(request_id, state.attempt if attempt is None else attempt)
        # srpt: the replica completed the run that a preemption stopped (it never heard the answer of
        # its progress call): the request is done and leaves the queue it was waiting in again.
        raced = (kind is ReportKind.COMPLETE and not running and attempt is not None and state is not None
                 and state.num_preemptions > 0)
        if state is None or (kind is ReportKind.COMPLETE and not running and not raced):
            if attempt is not None or state is not None:  # a late, duplicate or confused report
                self.counters["stale_reports"] += 1
            return False
        if raced:
            self.counters["preempt_races"] += 1
        if running:
            self.counters[_RUN_ENDS[kind]] += 1
        else:
            self.counters["withdrawn"] += 1
            self._resolve(request_id, Cancelled())
        if kind is ReportKind.COMPLETE:
            self._apply(sched.complete(request_id, num_output_tokens, state.attempt))
        elif kind is ReportKind.CANCEL:
            self._apply(sched.cancel(request_id, state.attempt))
        else:
            self._apply(sched.fail(request_id, state.attempt))
        return True

    def _remember_end(self, request_id: str, attempt: int | None) -> None:
        ended = self._ended
        ended[(request_id, attempt)] = None
        if len(ended) > self._history:
            del ended[next(iter(ended))]

    # ---- replicas ----------------------------------------------------------------------------
    def heartbeat(self, replica_id: str, num_slots: int, running: list[Running] | None = None) -> None:
        """A replica is alive with ``num_slots`` and runs ``running`` (None: it did not say):
        (re-)register it, adopt the runs the router does not know (it restarted, or dropped the
        replica) unless a report ended them, and free dispatched runs it has not listed for ``lease_s``."""
        now = self.clock()
        self.last_heartbeat_at = now
        self.last_replica_at = now
        self._last_seen[replica_id] = now
        sched = self.scheduler
        # Of the runs of one request (an earlier try may still be running beside the later one), the
        # latest: attempt ids grow with every dispatch, across restarts too.
        newest: dict[str, Running] = {}
        for r in running or ():
            if r.meta is None or (r.meta.request_id, r.attempt) in self._ended:
                continue
            seen = newest.get(r.meta.request_id)
            if seen is None or seen.attempt < r.attempt:
                newest[r.meta.request_id] = r
        unknown = []
        for rid, r in newest.items():
            state = sched.requests.get(rid)
            if state is None:
                unknown.append(r)
            elif state.attempt is not None and state.attempt < r.attempt:
                # A later dispatch than the run the router holds (after a restart it adopted an
                # earlier try that a replica still ran): the later one is the live one.
                self._end(rid, ReportKind.FAIL, state.attempt)
                unknown.append(r)
        replica = sched.replicas.get(replica_id)
        if replica is None or replica.num_slots != num_slots:
            # Its runs take their slots before anything queued is dispatched to it.
            self._apply(sched.add_replica(replica_id, num_slots, dispatch=not unknown))
            replica = sched.replicas[replica_id]
        if unknown:
            for r in unknown:
                if sched.adopt(replica_id, r.meta, r.attempt):
                    self.counters["adopted"] += 1
            self._apply(sched.dispatch())
        if running is None:
            return
        # A run dispatched here long ago that the replica does not list: its ingress died or lost
        # the call. Free the slot so the queue behind it moves (a later listing adopts it again).
        listed = {(r.meta.request_id, r.attempt) for r in running if r.meta is not None}
        expired = [(rid, state.attempt) for rid, state in replica.running.items()
                   if (rid, state.attempt) not in listed and now - state.dispatched_at > self.lease_s]
        for rid, attempt in expired:
            self.counters["leases_expired"] += 1
            self._end(rid, ReportKind.FAIL, attempt, remember=False)

    def remove_replica(self, replica_id: str) -> None:
        """A replica died (a caller saw it) or left: its queue moves to the others."""
        self._last_seen.pop(replica_id, None)
        if replica_id not in self.scheduler.replicas:
            return
        self.counters["replicas_removed"] += 1
        orphans, assignments = self.scheduler.remove_replica(replica_id)
        # Orphans were running there: their runs end here. Their callers see the failure on the call
        # itself and requeue; a run that goes on (the replica was only unreachable) is adopted when
        # the replica heartbeats again.
        self.counters["failed"] += len(orphans)
        self._apply(assignments)

    def sweep(self) -> None:
        """Drop replicas silent for ``replica_timeout_s``; with none left for that long, answer
        every waiting request :class:`NoReplica` (the ingress turns it into a 503) instead of
        leaving it queued behind nothing. ``slo`` shedding: answer Shed to the waiting requests
        that can no longer meet their SLO."""
        cutoff = self.clock() - self.replica_timeout_s
        for replica_id, seen in list(self._last_seen.items()):
            if seen < cutoff:
                logger.warning("replica %s sent no heartbeat for %.0f s: dropping it (router.replica_timeout_s)",
                               replica_id, self.replica_timeout_s)
                self.remove_replica(replica_id)
        client_cutoff = self.clock() - self.lease_s
        for client_id, seen in list(self._client_seen.items()):
            if seen < client_cutoff:
                logger.warning("client %s stopped polling: freeing its requests (router.lease_s)", client_id)
                self._drop_client(client_id)
        if self._sheds and self.scheduler.num_queued:
            # slo with shedding: a waiting request whose SLO became unattainable is dropped at the next
            # decision of any kind; on a quiet cluster that may be late, so its client hears here too.
            self._apply(self.scheduler.dispatch())
        if self._waiters and self._no_replica():
            logger.warning("no LLM replica for %.0f s: answering %d waiting request(s) 503 "
                           "(router.replica_timeout_s)", self.replica_timeout_s, len(self._waiters))
            for rid in list(self._waiters):
                if self._resolve(rid, NoReplica(self.retry_after_s)):
                    self.counters["rejected"] += 1
                self._end(rid, ReportKind.CANCEL)

    def forgive(self) -> None:
        """The router itself was paused (stopped, its host stalled): restart every silence clock
        (replica heartbeats, client polls) so the pause drops nobody and answers nobody NoReplica;
        a caller really gone is dropped one timeout later."""
        now = self.clock()
        for seen in (self._last_seen, self._client_seen):
            for key in seen:
                seen[key] = now
        self.last_heartbeat_at = now
        if self.scheduler.replicas:
            self.last_replica_at = now

    def _no_replica(self) -> bool:
        return not self.scheduler.replicas and self.clock() - self.last_replica_at > self.replica_timeout_s

    # ---- applying decisions ------------------------------------------------------------------
    def _resolve(self, request_id: str, answer: EnqueueAnswer) -> bool:
        waiter = self._waiters.pop(request_id, None)
        if waiter is None:
            return False
        if isinstance(waiter, str):  # a batching client: into its outbox
            box = self._outboxes.get(waiter)
            if box is None:
                return False
            box.append(Polled(request_id, answer))
            self._ready(waiter).set()
            return True
        if waiter.done():
            return False
        waiter.set_result(answer)
        return True

    def _apply(self, decisions: list[Assignment | Rejection]) -> None:
        now = self.clock()
        pending = list(decisions)
        while pending:
            more: list[Assignment | Rejection] = []
            for a in pending:
                if isinstance(a, Rejection):
                    self._shed_request(a)
                    continue
                if self._resolve(a.request_id, Dispatched(a.replica_id, a.batch_id, a.attempt)):
                    self.counters["dispatched"] += 1
                    state = self.scheduler.requests.get(a.request_id)
                    predicted = state.meta.predicted_tokens if state is not None else None
                    self.dispatch_log.append(DispatchRecord(a.request_id, a.replica_id, now, predicted))
                else:
                    # Nobody waits for it any more: give the slot straight back.
                    self.counters["withdrawn"] += 1
                    more.extend(self.scheduler.cancel(a.request_id, a.attempt))
            pending = more

    def _shed_request(self, rejection: Rejection) -> None:
        """The policy dropped a waiting request unrun (the scheduler forgot it): answer its waiter Shed,
        and remember it for a caller that joins later."""
        rid = rejection.request_id
        self.counters["shed"] += 1
        self._shed[rid] = rejection.reason
        if len(self._shed) > self._history:
            del self._shed[next(iter(self._shed))]
        self._resolve(rid, Shed(rejection.reason))

    # ---- views -------------------------------------------------------------------------------
    def snapshot(self, dispatch_log: bool = False) -> dict:
        """The scheduler's view plus ``counters`` (their identities: see the class docstring)."""
        snap = self.scheduler.snapshot()
        snap["counters"] = dict(self.counters)
        snap["num_waiters"] = len(self._waiters)
        snap["num_clients"] = len(self._client_seen)
        snap["client_ids"] = list(self._client_seen)  # the batching clients (ingress replicas) it knows
        snap["started_at"] = self.started_at
        snap["config"] = self.scheduler.config.to_dict()
        if dispatch_log:
            snap["dispatch_log"] = list(self.dispatch_log)
        return snap


_RUN_ENDS = {ReportKind.COMPLETE: "completed", ReportKind.CANCEL: "cancelled", ReportKind.FAIL: "failed"}


def _has_dispatched(box: list[Polled], request_id: str, attempt: int | None) -> bool:
    """Whether ``box`` already answers ``request_id`` with its dispatch under ``attempt``."""
    for p in box:
        if p.request_id == request_id and isinstance(p.answer, Dispatched) and p.answer.attempt == attempt:
            return True
    return False


class RouterActor:
    """The Ray actor (created through :func:`router_actor_options`): a :class:`RouterService` plus a sweeper."""

    def __init__(self, config: dict, retry_after_s: float = 1.0, replica_timeout_s: float = 15.0,
                 lease_s: float = 30.0, orphan_timeout_s: float = 120.0):
        self.service = RouterService(SchedulerConfig(**config), retry_after_s=retry_after_s,
                                     replica_timeout_s=replica_timeout_s, lease_s=lease_s)
        self.orphan_timeout_s = orphan_timeout_s
        self._sweeper: asyncio.Task | None = None

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def _sweep_loop(self) -> None:
        period = max(0.2, min(self.service.replica_timeout_s / 3, 5.0))
        last = time.monotonic()
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            paused, last = now - last - period, now
            try:
                if paused > period:
                    # This process was stopped or starved (SIGSTOP, a stalled host): the silence it
                    # would see is its own, not its callers'.
                    logger.warning("router actor was paused for %.1f s: nobody's silence in that time counts",
                                   paused)
                    self.service.forgive()
                self.service.sweep()
                if self.service.clock() - self.service.last_heartbeat_at > self.orphan_timeout_s:
                    # Nobody heartbeats: the app was deleted. A detached actor must end itself.
                    logger.warning("no heartbeat for %.0f s: router actor exits (router.orphan_timeout_s)",
                                   self.orphan_timeout_s)
                    import ray

                    ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
            except Exception:
                logger.exception("router sweep failed")

    async def enqueue(self, meta: RequestMeta) -> EnqueueAnswer:
        self._ensure_sweeper()
        return await self.service.enqueue(meta)

    async def requeue(self, meta: RequestMeta) -> EnqueueAnswer:
        self._ensure_sweeper()
        return await self.service.requeue(meta)

    async def submit(self, client_id: str, metas: list[RequestMeta], requeue_ids: list[str] = ()) -> None:
        self._ensure_sweeper()
        self.service.submit(client_id, metas, requeue_ids)

    async def poll(self, client_id: str, timeout_s: float = 1.0) -> list[Polled]:
        return await self.service.poll(client_id, timeout_s)

    async def report(self, reports: list[Report]) -> None:
        self.service.report(reports)

    async def heartbeat(self, replica_id: str, num_slots: int, running: list[Running] | None = None) -> None:
        self._ensure_sweeper()
        self.service.heartbeat(replica_id, num_slots, running)

    async def progress(self, request_id: str, attempt: int, tokens_done: int, predicted_remaining: float) -> bool:
        return self.service.progress(request_id, attempt, tokens_done, predicted_remaining)

    async def remove_replica(self, replica_id: str) -> None:
        self.service.remove_replica(replica_id)

    async def snapshot(self, dispatch_log: bool = False) -> dict:
        return self.service.snapshot(dispatch_log)

    async def ping(self) -> float:
        return self.service.started_at

    async def outstanding_work(self) -> float:
        """Predicted tokens queued or running: the signal of cluster.autoscaling's policy."""
        return self.service.scheduler.outstanding_work()


def router_actor_options(name: str, namespace: str, max_restarts: int = -1, resources: dict | None = None) -> dict:
    """Ray options of the router actor: detached and named (both the ingress and the replicas may
    create it; the first wins), no CPU reserved (it is light and must fit beside replicas), many
    concurrent waiting calls (one per queued request), never retried (callers decide)."""
    options = dict(name=name, namespace=namespace, lifetime="detached", get_if_exists=True,
                   max_restarts=max_restarts, max_task_retries=0, num_cpus=0, max_concurrency=100_000)
    if resources:  # placement by custom resource, e.g. {"router_node": 0.01} on the head
        options["resources"] = dict(resources)
    return options


class RouterUnresponsive(RuntimeError):
    """The router actor answered no ping within the deadline: it hangs without dying (stopped, or its
    event loop is blocked). Outstanding enqueues fail with it, and the caller retries as after the
    actor's death (:meth:`RouterClient.is_router_failure` is true for it)."""


class RouterClient:
    """Finds or creates the router actor and survives its restarts. For the ingress and replicas.

    It also keeps track of whether the actor answers: callers with deadlines record missed ones
    (:meth:`unanswered`) and answers (:meth:`answered`); :meth:`kill_if_hung` kills an actor that
    answered nothing for ``hung_kill_s``, and Ray restarts it (``max_restarts``)."""

    def __init__(self, name: str, namespace: str, scheduler_config: dict, *, max_restarts: int = -1,
                 actor_kwargs: dict | None = None, resources: dict | None = None, hung_kill_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.resources = resources
        self.namespace = namespace
        self.scheduler_config = scheduler_config
        self.max_restarts = max_restarts
        self.actor_kwargs = actor_kwargs or {}
        self.hung_kill_s = hung_kill_s
        self.clock = clock
        self._handle = None
        self._unanswered_since: float | None = None  # when the oldest call still unanswered was sent
        self._killed_at: float | None = None

    @property
    def handle(self):
        if self._handle is None:
            self._handle = self.get_or_create()
        return self._handle

    def get_or_create(self):
        import ray

        cls = ray.remote(RouterActor)
        return cls.options(**router_actor_options(self.name, self.namespace, self.max_restarts, self.resources)).remote(
            self.scheduler_config, **self.actor_kwargs)

    def reset(self) -> None:
        """Look the actor up again on next use (after it died for good, a new one is created)."""
        self._handle = None

    # ---- liveness ----------------------------------------------------------------------------
    async def ping(self, timeout_s: float) -> bool:
        """Whether the actor answers a ping within ``timeout_s`` (recorded for :meth:`kill_if_hung`).
        A dead or restarting actor raises its error: it is not hung, Ray is restarting it."""
        sent = self.clock()
        try:
            await asyncio.wait_for(self.handle.ping.remote(), timeout_s)
        except asyncio.TimeoutError:
            self.unanswered(sent)
            return False
        except Exception:
            self.answered()
            raise
        self.answered()
        return True

    def answered(self) -> None:
        """A call came back (an answer or the actor's error): the actor does not hang."""
        self._unanswered_since = None

    def unanswered(self, sent_at: float) -> None:
        """A call sent at ``sent_at`` (``clock`` time) missed its deadline."""
        if self._unanswered_since is None or sent_at < self._unanswered_since:
            self._unanswered_since = sent_at

    def kill_if_hung(self) -> bool:
        """Kill the actor (Ray restarts it) when it answered nothing for ``hung_kill_s``; True if killed.
        A stopped process never dies by itself and Ray sees it alive, so nothing else restarts it.
        A restarting actor answers nothing either: after a kill, the next one waits twice as long."""
        since, now = self._unanswered_since, self.clock()
        if since is None or now - since < self.hung_kill_s:
            return False
        if self._killed_at is not None and now - self._killed_at < 2 * self.hung_kill_s:
            return False
        self._unanswered_since = None
        self._killed_at = now
        logger.warning("router actor %s answered nothing for %.0f s (hung without dying): killing it so that "
                       "Ray restarts it (router.max_restarts=%d)", self.name, self.clock() - since, self.max_restarts)
        try:
            self._kill(self.handle)
        except Exception:
            logger.warning("killing the hung router actor %s failed", self.name, exc_info=True)
        self.reset()
        return True

    def _kill(self, handle) -> None:
        import ray

        ray.kill(handle, no_restart=False)

    @staticmethod
    def is_router_failure(error: BaseException) -> bool:
        """The router died, is restarting or hangs: the call may be made again (same id and arrival time)."""
        if isinstance(error, RouterUnresponsive):
            return True
        import ray.exceptions as rex

        return isinstance(error, (rex.RayActorError, rex.ActorUnavailableError))

    is_actor_failure = is_router_failure  # the older name; it covers a hung router too


def _consume(fut: asyncio.Future) -> None:
    """Retrieve an abandoned future's outcome, so asyncio does not log it as never retrieved."""
    if not fut.cancelled():
        fut.exception()


def background_task(coro) -> asyncio.Task:
    """A task for a loop that serves many requests, started from none of them (an empty context).

    ``create_task`` copies the caller's context variables, Ray's ``async_task_id`` among them: the
    actor task being served. Ray takes every ``.remote()`` call made under it for a child of that
    task, and ``ray.cancel`` (Serve cancels a request whose client disconnected, even after its
    last byte) cancels the children too. A loop started lazily while one request was served would
    see its call in flight cancelled with that request, and a cancelled poll fails every request
    waiting on it (a live demo run: six HTTP 500s from one client closing its stream at [DONE])."""
    return contextvars.Context().run(asyncio.get_running_loop().create_task, coro)


class BatchedEnqueuer:
    """The ingress side of ``submit``/``poll``: ``await enqueue(meta)`` as if it were one call.

    Alone, a request takes one direct ``enqueue`` call (lowest latency). With others in flight it
    joins the batch: new requests collect while a ``submit`` is in flight and go in the next one;
    one long ``poll`` brings back every answer ready for this client. If the router dies, every
    outstanding ``enqueue`` raises the actor error, and the caller enqueues again (the new router
    is empty).

    Exactly one answer per run: a :class:`Dispatched` (request, attempt) delivered once is remembered
    (the last ``remember`` of them), so a duplicate (the client resubmitted after a failed poll)
    neither answers twice nor is taken for an unwanted one; an unwanted one (its caller left) is
    cancelled by naming its attempt, so it cannot end a later run.

    Deadlines: while anything is outstanding, a watchdog pings the actor every ``ping_interval_s``.
    A ping unanswered within ``call_timeout_s`` (the router hangs without dying, e.g. SIGSTOP) fails
    every outstanding ``enqueue`` with :class:`RouterUnresponsive`, which callers retry like an actor
    failure; after the client's ``hung_kill_s`` without an answer it kills the actor (Ray restarts it).

    A pause of this client (its process stopped or starved): the router drops a client that has not
    polled for ``router.lease_s``, withdrawing what it waited for and failing its unpolled answers,
    and tells it nothing. So after a gap of ``resubmit_after_s`` between two answered polls (keep it
    below the router's lease), every request still waiting is submitted again: a request the router
    still holds joins itself (one answer per run), one it dropped is queued again in its own place.
    """

    def __init__(self, client: RouterClient, poll_timeout_s: float = 1.0, *, call_timeout_s: float = 5.0,
                 ping_interval_s: float = 1.0, remember: int = 4096, resubmit_after_s: float = 5.0):
        import uuid

        self.client = client
        self.client_id = uuid.uuid4().hex
        self.poll_timeout_s = poll_timeout_s
        self.call_timeout_s = call_timeout_s
        self.ping_interval_s = ping_interval_s
        self._futures: dict[str, asyncio.Future] = {}
        self._outgoing: list[tuple[RequestMeta, bool]] = []
        self._send_wake: asyncio.Event | None = None
        self._poll_wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._direct = 0  # direct enqueue calls in flight
        self._direct_waits: set[asyncio.Future] = set()  # their watchdog verdicts
        self._watchdog: asyncio.Task | None = None
        self._delivered: dict[tuple[str, int], None] = {}  # Dispatched (request, attempt) answered, newest last
        self._remember = remember
        self.resubmit_after_s = resubmit_after_s
        self._metas: dict[str, RequestMeta] = {}  # what each batched enqueue waits for, to submit it again

    def _ensure_started(self) -> None:
        if not self._tasks or any(t.done() for t in self._tasks):
            for t in self._tasks:
                t.cancel()
            self._send_wake, self._poll_wake = asyncio.Event(), asyncio.Event()
            self._tasks = [background_task(self._send_loop()), background_task(self._poll_loop())]

    def _ensure_watchdog(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = background_task(self._watch())

    async def enqueue(self, meta: RequestMeta, requeue: bool = False) -> EnqueueAnswer:
        if not self._futures and not self._direct:
            return await self._enqueue_direct(meta, requeue)
        self._ensure_started()
        fut = asyncio.get_running_loop().create_future()
        self._futures[meta.request_id] = fut
        self._metas[meta.request_id] = meta
        self._ensure_watchdog()
        self._outgoing.append((meta, requeue))
        self._send_wake.set()
        self._poll_wake.set()
        try:
            return await fut
        finally:
            if self._futures.get(meta.request_id) is fut:
                del self._futures[meta.request_id]
            if meta.request_id not in self._futures:
                self._metas.pop(meta.request_id, None)

    async def _enqueue_direct(self, meta: RequestMeta, requeue: bool) -> EnqueueAnswer:
        """Nothing else in flight: one direct call has the lowest latency. It races the watchdog's
        verdict, so a hung router fails it like the batched ones."""
        self._direct += 1
        verdict = asyncio.get_running_loop().create_future()
        verdict.add_done_callback(_consume)
        self._direct_waits.add(verdict)
        self._ensure_watchdog()
        reply = None
        try:
            handle = self.client.handle
            call = handle.requeue if requeue else handle.enqueue
            reply = asyncio.ensure_future(call.remote(meta))
            await asyncio.wait((reply, verdict), return_when=asyncio.FIRST_COMPLETED)
            if reply.done():
                answer = reply.result()
                if isinstance(answer, Dispatched):
                    # Answered here, not through the outbox: a copy of this run's answer that a later
                    # resubmit puts there is a duplicate, not an unwanted dispatch to cancel.
                    self._remember_delivered(meta.request_id, answer.attempt)
                return answer
            return verdict.result()  # raises RouterUnresponsive
        except Exception as e:
            if RouterClient.is_router_failure(e):
                self.client.reset()
            raise
        finally:
            self._direct -= 1
            self._direct_waits.discard(verdict)
            if reply is not None and not reply.done():
                reply.add_done_callback(_consume)  # a late answer nobody wants (the lease frees its slot)

    def _fail(self, request_ids, error: BaseException) -> None:
        for rid in request_ids:
            fut = self._futures.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_exception(error)

    async def _watch(self) -> None:
        while self._futures or self._direct_waits:
            await asyncio.sleep(self.ping_interval_s)
            if not (self._futures or self._direct_waits):
                break
            try:
                alive = await self.client.ping(self.call_timeout_s)
            except Exception as e:
                # Dead, not hung: the outstanding calls fail with the actor's error by themselves.
                if RouterClient.is_router_failure(e):
                    self.client.reset()
                else:
                    logger.debug("router ping failed: %r", e)
                continue
            if not alive:
                self._give_up(RouterUnresponsive(
                    f"the router actor {self.client.name} answered no ping within {self.call_timeout_s:g} s"))
                self.client.kill_if_hung()

    def _give_up(self, error: RouterUnresponsive) -> None:
        """The router hangs: fail every outstanding enqueue (their callers retry) and drop the calls in
        flight (the loops start again with the next enqueue)."""
        logger.warning("%s: failing %d outstanding enqueue(s)", error, len(self._futures) + len(self._direct_waits))
        self._fail(list(self._futures), error)
        self._outgoing = []
        for verdict in self._direct_waits:
            if not verdict.done():
                verdict.set_exception(error)
        for t in self._tasks:
            t.cancel()
        self._tasks = []

    async def _send_loop(self) -> None:
        while True:
            await self._send_wake.wait()
            self._send_wake.clear()
            batch, self._outgoing = self._outgoing, []
            if not batch:
                continue
            metas = [m for m, _ in batch]
            requeue = [m.request_id for m, again in batch if again]
            try:
                await self.client.handle.submit.remote(self.client_id, metas, requeue)
            except Exception as e:
                if RouterClient.is_router_failure(e):
                    self.client.reset()
                self._fail([m.request_id for m in metas], e)

    async def _poll_loop(self) -> None:
        last_answer = self.client.clock()
        while True:
            if not self._futures:
                self._poll_wake.clear()
                await self._poll_wake.wait()
                last_answer = self.client.clock()  # an idle client owes the router no polls
                continue
            try:
                answers = await self.client.handle.poll.remote(self.client_id, self.poll_timeout_s)
            except Exception as e:
                # The router died with our requests: all of them must be enqueued again.
                if RouterClient.is_router_failure(e):
                    self.client.reset()
                else:
                    logger.exception("router poll failed")
                self._fail(list(self._futures), e)
                await asyncio.sleep(0.05)
                continue
            self.client.answered()
            unwanted = self._deliver(answers)
            if unwanted:
                try:
                    self.client.handle.report.remote(unwanted)
                except Exception:
                    pass
            now = self.client.clock()
            if now - last_answer > self.resubmit_after_s:
                self._resubmit(now - last_answer)
            last_answer = now

    def _resubmit(self, gap_s: float) -> None:
        """After a gap in our polls: submit every request still waiting again (see the class docstring).
        Never as a requeue: a run that failed has ended by now, or ends when the first submit arrives."""
        waiting = [m for rid, m in self._metas.items() if rid in self._futures and not self._futures[rid].done()]
        if not waiting:
            return
        logger.warning("no poll answered for %.1f s (this process paused?): submitting %d waiting request(s) "
                       "again, in case the router dropped this client (router.lease_s)", gap_s, len(waiting))
        self._outgoing.extend((m, False) for m in waiting)
        self._send_wake.set()

    def _deliver(self, answers: list[Polled]) -> list[Report]:
        """Hand each answer to its waiting ``enqueue``; the cancels of dispatches nobody waits for."""
        unwanted = []
        delivered = self._delivered
        for polled in answers:
            rid, answer = polled.request_id, polled.answer
            dispatched = isinstance(answer, Dispatched)
            if dispatched and (rid, answer.attempt) in delivered:
                continue  # the same run again (we resubmitted): it has its caller
            fut = self._futures.pop(rid, None)
            if fut is None or fut.done():
                if dispatched:  # its caller left: give the slot back (that run's, not a later one's)
                    unwanted.append(Report.cancel(rid, attempt=answer.attempt))
                continue
            fut.set_result(answer)
            if dispatched:
                self._remember_delivered(rid, answer.attempt)
        return unwanted

    def _remember_delivered(self, request_id: str, attempt: int) -> None:
        delivered = self._delivered
        delivered[(request_id, attempt)] = None
        if len(delivered) > self._remember:
            del delivered[next(iter(delivered))]


class Reporter:
    """Fire-and-forget reports, coalesced: one ``report`` call carries all that piled up while
    the previous one was in flight. A call unanswered within ``call_timeout_s`` (a hung router) is
    dropped rather than piled up, and counts toward the client's ``kill_if_hung``. Reports lost to
    a dead or hung router are harmless: its successor adopts the runs from the replicas' heartbeats,
    and a router that wakes frees the runs no replica lists by lease expiry."""

    def __init__(self, client: RouterClient, call_timeout_s: float = 5.0):
        self.client = client
        self.call_timeout_s = call_timeout_s
        self._reports: list[Report] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def report(self, report: Report) -> None:
        self._reports.append(report)
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = background_task(self._loop())
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._reports = self._reports, []
            if not batch:
                continue
            sent = self.client.clock()
            try:
                await asyncio.wait_for(self.client.handle.report.remote(batch), self.call_timeout_s)
                self.client.answered()
            except asyncio.TimeoutError:
                self.client.unanswered(sent)
                logger.debug("router answered no report call within %.1f s: %d report(s) dropped",
                             self.call_timeout_s, len(batch))
                self.client.kill_if_hung()
            except Exception as e:
                if RouterClient.is_router_failure(e):
                    self.client.reset()
                logger.debug("router report of %d reports failed: %r", len(batch), e)
