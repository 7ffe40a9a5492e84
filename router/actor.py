"""The central router: the scheduling core behind an async, restartable Ray actor.

:class:`RouterService` applies the core's decisions for callers that wait on them: ``enqueue``
parks an ``asyncio.Future`` per request and resolves it when an :class:`Assignment` for that
request comes out of any call (enqueue, complete, cancel, heartbeat, replica removal). It is pure
asyncio (no Ray) and unit-tested with an injected clock. :class:`RouterActor` is the thin actor
around it (a detached named actor with ``max_restarts``), adding the periodic sweep; and
:class:`RouterClient` is how the ingress and the LLM replicas find, create and call it.

Batching: one actor call per request each way costs more than the scheduling itself, so busy
callers batch. :class:`BatchedEnqueuer` (the ingress) sends new requests with ``submit`` and
collects dispatch answers with a long ``poll``; :class:`Reporter` (replicas, ingress) sends
completions and cancellations with ``report``. While a call is in flight the next batch fills,
so an idle cluster pays one call per request and a busy one far fewer. What these calls carry is
typed in :mod:`router.messages`.

Restarts: a restarted actor starts empty. Replicas re-register on their next heartbeat; an
ingress whose ``enqueue`` failed because the actor died enqueues again (same id, same arrival
time, so the request keeps its place); requests already running finish on their replicas and
their completion reports are ignored (the new router never knew them).
"""

from __future__ import annotations

import asyncio
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
)
from router.request import Assignment, RequestMeta, RequestStatus
from router.scheduler import QueueFullError, Scheduler

logger = logging.getLogger(__name__)


class RouterService:
    """Per-request futures over a :class:`~router.scheduler.Scheduler`; decisions applied as they appear."""

    def __init__(self, config: SchedulerConfig, *, retry_after_s: float = 1.0, replica_timeout_s: float = 15.0,
                 lease_s: float = 30.0, clock: Callable[[], float] = time.time, history: int = 10_000):
        # Wall-clock time: arrival_at is stamped by the ingress, in another process.
        self.scheduler = Scheduler(config, clock=clock)
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
        self.started_at = clock()
        self.last_heartbeat_at = self.started_at
        self.last_replica_at = self.started_at  # when some LLM replica was last registered
        self.dispatch_log: deque[DispatchRecord] = deque(maxlen=history)
        self.counters = {"enqueued": 0, "dispatched": 0, "completed": 0, "cancelled": 0, "failed": 0,
                         "rejected": 0, "requeued": 0, "replicas_removed": 0, "leases_expired": 0}

    # ---- requests ----------------------------------------------------------------------------
    async def enqueue(self, meta: RequestMeta, requeue: bool = False) -> EnqueueAnswer:
        """Wait until the policy dispatches ``meta``; answer :class:`Dispatched` (or why not).
        ``requeue``: its last dispatch never ran (the replica died or bounced the call)."""
        rid = meta.request_id
        existing = self._to_join(rid, requeue)
        if existing is not None:  # a caller retrying a call that did reach us: join the first one
            if existing.status is RequestStatus.RUNNING:
                return Dispatched(existing.replica_id)
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
            # The caller went away while waiting (its call was cancelled): free its place.
            if not fut.done():
                self._waiters.pop(rid, None)
            self._apply(self.scheduler.cancel(rid))
            raise

    def _to_join(self, request_id: str, requeue: bool):
        """The scheduled state a call for ``request_id`` joins, or None when it is to be admitted. A
        requeue is counted, and a running state is then the run that failed: admitted again, in its
        place (``_admit``), not joined."""
        existing = self.scheduler.requests.get(request_id)
        if requeue:
            self.counters["requeued"] += 1
            if existing is not None and existing.status is RequestStatus.RUNNING:
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
        try:
            assignments = self.scheduler.requeue(meta) if requeue else self.scheduler.enqueue(meta)
        except QueueFullError:
            self.counters["rejected"] += 1
            return QueueFull(self.retry_after_s)
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
            if existing is not None:  # sent again (the client retried): answer or wait as before
                if existing.status is RequestStatus.RUNNING:
                    box.append(Polled(rid, Dispatched(existing.replica_id)))
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
            if r.kind is ReportKind.COMPLETE:
                self.complete(r.request_id, r.num_output_tokens)
            elif r.kind is ReportKind.CANCEL:
                self.cancel(r.request_id)
            elif r.kind is ReportKind.FAIL:
                self.fail(r.request_id)
            else:
                self.remove_replica(r.replica_id)

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
                self._apply(self.scheduler.cancel(rid))
        for polled in self._outboxes.pop(client_id, []):
            if isinstance(polled.answer, Dispatched):
                self._apply(self.scheduler.fail(polled.request_id))
        self._outbox_ready.pop(client_id, None)
        self._client_seen.pop(client_id, None)

    async def requeue(self, meta: RequestMeta) -> EnqueueAnswer:
        """Its replica died or bounced the call before it produced output: forget the run and wait
        again in the request's own place (the slot it frees does not go to the one behind it first)."""
        return await self.enqueue(meta, requeue=True)

    def complete(self, request_id: str, num_output_tokens: int | None = None) -> None:
        if request_id in self.scheduler.requests:
            self.counters["completed"] += 1
        self._apply(self.scheduler.complete(request_id, num_output_tokens))

    def cancel(self, request_id: str) -> None:
        if request_id in self.scheduler.requests:
            self.counters["cancelled"] += 1
        self._resolve(request_id, Cancelled())
        self._apply(self.scheduler.cancel(request_id))

    def fail(self, request_id: str) -> None:
        if request_id in self.scheduler.requests:
            self.counters["failed"] += 1
        self._resolve(request_id, Cancelled())
        self._apply(self.scheduler.fail(request_id))

    # ---- replicas ----------------------------------------------------------------------------
    def heartbeat(self, replica_id: str, num_slots: int, running_ids: list[str] | None = None) -> None:
        """A replica is alive with ``num_slots``: (re-)register it; reconcile what it runs."""
        now = self.clock()
        self.last_heartbeat_at = now
        self.last_replica_at = now
        self._last_seen[replica_id] = now
        replica = self.scheduler.replicas.get(replica_id)
        if replica is None or replica.num_slots != num_slots:
            self._apply(self.scheduler.add_replica(replica_id, num_slots))
            replica = self.scheduler.replicas[replica_id]
        if running_ids is None:
            return
        # A request dispatched here long ago that the replica does not run: its ingress died or
        # lost the call. Free the slot so the queue behind it moves.
        running = set(running_ids)
        expired = [rid for rid, state in replica.running.items()
                   if rid not in running and state.dispatched_at is not None
                   and now - state.dispatched_at > self.lease_s]
        for rid in expired:
            self.counters["leases_expired"] += 1
            self._apply(self.scheduler.fail(rid))

    def remove_replica(self, replica_id: str) -> None:
        """A replica died (a caller saw it) or left: its queue moves to the others."""
        self._last_seen.pop(replica_id, None)
        if replica_id not in self.scheduler.replicas:
            return
        self.counters["replicas_removed"] += 1
        orphans, assignments = self.scheduler.remove_replica(replica_id)
        # Orphans were running there; their callers see the failure on the call itself and requeue.
        self._apply(assignments)

    def sweep(self) -> None:
        """Drop replicas silent for ``replica_timeout_s``; with none left for that long, answer
        every waiting request :class:`NoReplica` (the ingress turns it into a 503) instead of
        leaving it queued behind nothing."""
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
        if self._waiters and self._no_replica():
            logger.warning("no LLM replica for %.0f s: answering %d waiting request(s) 503 "
                           "(router.replica_timeout_s)", self.replica_timeout_s, len(self._waiters))
            for rid in list(self._waiters):
                if self._resolve(rid, NoReplica(self.retry_after_s)):
                    self.counters["rejected"] += 1
                    self._apply(self.scheduler.cancel(rid))

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

    def _apply(self, assignments: list[Assignment]) -> None:
        now = self.clock()
        pending = list(assignments)
        while pending:
            more: list[Assignment] = []
            for a in pending:
                if self._resolve(a.request_id, Dispatched(a.replica_id, a.batch_id)):
                    self.counters["dispatched"] += 1
                    state = self.scheduler.requests.get(a.request_id)
                    predicted = state.meta.predicted_tokens if state is not None else None
                    self.dispatch_log.append(DispatchRecord(a.request_id, a.replica_id, now, predicted))
                else:
                    # Nobody waits for it any more: give the slot straight back.
                    more.extend(self.scheduler.cancel(a.request_id))
            pending = more

    # ---- views -------------------------------------------------------------------------------
    def snapshot(self, dispatch_log: bool = False) -> dict:
        snap = self.scheduler.snapshot()
        snap["counters"] = dict(self.counters)
        snap["num_waiters"] = len(self._waiters)
        snap["num_clients"] = len(self._client_seen)
        snap["started_at"] = self.started_at
        snap["config"] = self.scheduler.config.to_dict()
        if dispatch_log:
            snap["dispatch_log"] = list(self.dispatch_log)
        return snap


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
        while True:
            await asyncio.sleep(period)
            try:
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

    async def heartbeat(self, replica_id: str, num_slots: int, running_ids: list[str] | None = None) -> None:
        self._ensure_sweeper()
        self.service.heartbeat(replica_id, num_slots, running_ids)

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


class RouterClient:
    """Finds or creates the router actor and survives its restarts. For the ingress and replicas."""

    def __init__(self, name: str, namespace: str, scheduler_config: dict, *, max_restarts: int = -1,
                 actor_kwargs: dict | None = None, resources: dict | None = None):
        self.name = name
        self.resources = resources
        self.namespace = namespace
        self.scheduler_config = scheduler_config
        self.max_restarts = max_restarts
        self.actor_kwargs = actor_kwargs or {}
        self._handle = None

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

    @staticmethod
    def is_actor_failure(error: BaseException) -> bool:
        import ray.exceptions as rex

        return isinstance(error, (rex.RayActorError, rex.ActorUnavailableError))


class BatchedEnqueuer:
    """The ingress side of ``submit``/``poll``: ``await enqueue(meta)`` as if it were one call.

    Alone, a request takes one direct ``enqueue`` call (lowest latency). With others in flight it
    joins the batch: new requests collect while a ``submit`` is in flight and go in the next one;
    one long ``poll`` brings back every answer ready for this client. If the router dies, every
    outstanding ``enqueue`` raises the actor error, and the caller enqueues again (the new router
    is empty).
    """

    def __init__(self, client: RouterClient, poll_timeout_s: float = 1.0):
        import uuid

        self.client = client
        self.client_id = uuid.uuid4().hex
        self.poll_timeout_s = poll_timeout_s
        self._futures: dict[str, asyncio.Future] = {}
        self._outgoing: list[tuple[RequestMeta, bool]] = []
        self._send_wake: asyncio.Event | None = None
        self._poll_wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._direct = 0  # direct enqueue calls in flight

    def _ensure_started(self) -> None:
        if not self._tasks or any(t.done() for t in self._tasks):
            for t in self._tasks:
                t.cancel()
            loop = asyncio.get_running_loop()
            self._send_wake, self._poll_wake = asyncio.Event(), asyncio.Event()
            self._tasks = [loop.create_task(self._send_loop()), loop.create_task(self._poll_loop())]

    async def enqueue(self, meta: RequestMeta, requeue: bool = False) -> EnqueueAnswer:
        if not self._futures and not self._direct:
            # Nothing else in flight: one direct call has the lowest latency.
            self._direct += 1
            try:
                handle = self.client.handle
                call = handle.requeue if requeue else handle.enqueue
                return await call.remote(meta)
            except Exception as e:
                if RouterClient.is_actor_failure(e):
                    self.client.reset()
                raise
            finally:
                self._direct -= 1
        self._ensure_started()
        fut = asyncio.get_running_loop().create_future()
        self._futures[meta.request_id] = fut
        self._outgoing.append((meta, requeue))
        self._send_wake.set()
        self._poll_wake.set()
        try:
            return await fut
        finally:
            if self._futures.get(meta.request_id) is fut:
                del self._futures[meta.request_id]

    def _fail(self, request_ids, error: BaseException) -> None:
        for rid in request_ids:
            fut = self._futures.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_exception(error)

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
                if RouterClient.is_actor_failure(e):
                    self.client.reset()
                self._fail([m.request_id for m in metas], e)

    async def _poll_loop(self) -> None:
        while True:
            if not self._futures:
                self._poll_wake.clear()
                await self._poll_wake.wait()
                continue
            try:
                answers = await self.client.handle.poll.remote(self.client_id, self.poll_timeout_s)
            except Exception as e:
                # The router died with our requests: all of them must be enqueued again.
                if RouterClient.is_actor_failure(e):
                    self.client.reset()
                else:
                    logger.exception("router poll failed")
                self._fail(list(self._futures), e)
                await asyncio.sleep(0.05)
                continue
            unwanted = []
            for polled in answers:
                fut = self._futures.pop(polled.request_id, None)
                if fut is None or fut.done():
                    if isinstance(polled.answer, Dispatched):
                        unwanted.append(Report.cancel(polled.request_id))  # its caller left: give the slot back
                    continue
                fut.set_result(polled.answer)
            if unwanted:
                try:
                    self.client.handle.report.remote(unwanted)
                except Exception:
                    pass


class Reporter:
    """Fire-and-forget reports, coalesced: one ``report`` call carries all that piled up while
    the previous one was in flight. A dead router loses them, which is harmless: its successor
    never knew those requests."""

    def __init__(self, client: RouterClient):
        self.client = client
        self._reports: list[Report] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def report(self, report: Report) -> None:
        self._reports.append(report)
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop())
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._reports = self._reports, []
            if not batch:
                continue
            try:
                await self.client.handle.report.remote(batch)
            except Exception as e:
                if RouterClient.is_actor_failure(e):
                    self.client.reset()
                logger.debug("router report of %d reports failed: %r", len(batch), e)
