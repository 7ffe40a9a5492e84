"""The LLM replica deployment: one engine, registered with the central router.

At start the replica learns its Serve id, registers its slots with the router actor and then
heartbeats (which also re-registers it after a router restart). Every call is pinned here by
``router.serve_router.PinnedRequestRouter``; a call meant for another replica is bounced, never
run. When a request ends the replica reports it (actual tokens) so the router frees the slot and
dispatches the next job; a cancelled call (the client left) frees its slot the same way.

With ``router.mode: serve-default`` there is no router: the replica neither registers, heartbeats
nor reports; Serve's own request router sends it calls (at most ``max_ongoing_requests``, its slots
by default) and its engine runs them in arrival order.

Every run carries the router's dispatch ``attempt``: the replica keys its runs by (request id,
attempt), names the attempt in each report (so a late report of an abandoned attempt cannot free
the slot of the request's next one) and lists its runs in every heartbeat, so a router that
restarted or dropped this replica adopts them.

Preemption (``router.policy: srpt``): every ``router.repredict_every_tokens`` generated tokens a run
re-predicts its remaining length (:mod:`deployments.repredict`) and reports it to the router
(``RouterActor.progress``) while it streams on; a True answer (within ``llm.progress_timeout_s``,
else the run goes on) stops the run at its next delta: its engine sequence is closed and the stream
ends with :class:`~deployments.engines.base.Preempted` (tokens streamed, the ids to resume from),
and nothing is reported for that attempt (the router counted it preempted). The ingress resumes the
request on its next dispatch (``GenerationRequest.resume_*``). An engine that cannot preempt
(``Engine.supports_preemption``) reports no progress: srpt then orders the queue without preempting.

Watchdog: a hung engine raises nothing, so the replica watches its output
(:class:`~deployments.engines.base.StallWatchdog`). While it has work and no output came for
``llm.stall_timeout_s`` it stops heartbeating (the router drops it after
``router.replica_timeout_s`` and dispatches elsewhere) and ``check_health`` raises (Serve replaces
it after three failed checks, ``llm.health_check_period_s`` apart).
"""

from __future__ import annotations

import asyncio
import logging
import os

from ray import serve

from deployments.config import AppConfig, RoutingMode
from deployments.engines import GenerationRequest, Misrouted, Started, build_engine
from deployments.engines.base import Preempted, StallWatchdog
from deployments.repredict import ProgressPoints, Repredictor
from router.actor import Reporter, RouterClient
from router.messages import Report, Running
from router.policies import Policy

logger = logging.getLogger("ray.serve")


@serve.deployment(name="llm")
class LLMServer:
    # srpt (_init_preemption): progress points every this many tokens (0: none), the re-predictor and
    # what the reports did; class defaults, so a replica without a router (serve-default) has them too.
    every = 0
    repredictor: Repredictor | None = None
    progress_counts: dict | None = None

    async def __init__(self, config: dict):
        cfg = AppConfig.from_dict(config)
        self.settings = cfg.llm
        self.engine = build_engine(cfg.llm)
        await self.engine.start()
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.running: dict[tuple[str, int], GenerationRequest] = {}  # (request_id, attempt) -> its request
        self.watchdog = StallWatchdog(cfg.llm.stall_timeout_s)
        self._stall_logged = False
        # serve-default: no router to create, tell or heartbeat (a stalled engine still fails
        # check_health, and Serve replaces the replica).
        self.router: RouterClient | None = None
        self.reporter: Reporter | None = None
        self._heartbeat: asyncio.Task | None = None
        self.progress_counts = {"reports": 0, "preempted": 0, "timeouts": 0, "errors": 0}
        if cfg.routing_mode is RoutingMode.CENTRAL:
            self.router = RouterClient(
                cfg.router_actor_name, cfg.router.namespace, cfg.scheduler_config().to_dict(),
                max_restarts=cfg.router.max_restarts,
                actor_kwargs=dict(retry_after_s=cfg.router.retry_after_s, replica_timeout_s=cfg.router.replica_timeout_s,
                                  lease_s=cfg.router.lease_s, orphan_timeout_s=cfg.router.orphan_timeout_s),
                resources=cfg.router.resources,
            )
            self.reporter = Reporter(self.router)
            await self._init_preemption(cfg)
            await self._register()
            self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop())
        logger.info("LLM replica %s up: engine %s, %d slots", self.replica_id, self.engine.kind, self.engine.num_slots)

    async def _init_preemption(self, cfg: AppConfig) -> None:
        """srpt: progress reports every router.repredict_every_tokens tokens (none where the engine
        cannot stop a sequence, or K is 0)."""
        sched = cfg.scheduler_config()
        if sched.policy is not Policy.SRPT or not sched.repredict_every_tokens:
            return
        if not self.engine.supports_preemption:
            logger.warning("router.policy srpt: the %s engine cannot preempt a running sequence; this replica "
                           "reports no progress, so srpt orders its queue without preempting", self.engine.kind)
            return
        self.every = sched.repredict_every_tokens
        self.repredictor = await asyncio.to_thread(Repredictor.load, self.every, self.settings.remaining_predictor,
                                                   getattr(self.engine, "tokenizer", None))

    def running_runs(self) -> list[Running]:
        """What the heartbeat lists: the runs the router dispatched (a call without a meta came from
        elsewhere, e.g. a benchmark calling the replica directly: the router never knew it)."""
        return [Running(r.meta, r.attempt) for r in self.running.values() if r.meta is not None]

    async def _register(self) -> None:
        quiet = self.watchdog.stalled_for()
        if quiet is not None:
            # A stalled engine must not be given more work: going silent makes the router drop this
            # replica after router.replica_timeout_s; check_health has Serve replace it.
            if not self._stall_logged:
                self._stall_logged = True
                logger.error("LLM replica %s: no engine output for %.1f s with %d request(s) running "
                             "(llm.stall_timeout_s): heartbeats stop", self.replica_id, quiet, len(self.running))
            return
        if self._stall_logged:
            self._stall_logged = False
            logger.warning("LLM replica %s: the engine produces output again: heartbeats resume", self.replica_id)
        try:
            await asyncio.wait_for(
                self.router.handle.heartbeat.remote(self.replica_id, self.engine.num_slots, self.running_runs()),
                timeout=max(2.0, 5 * self.settings.heartbeat_s))
        except Exception as e:  # the router may be restarting: the next beat retries
            logger.warning("heartbeat to the router failed: %r", e)
            self.router.reset()

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            await self._register()

    async def generate(self, request: GenerationRequest, target_replica_id: str | None = None):
        """Stream one request: :class:`Started`, then :class:`Delta` s, the last with a finish reason;
        or :class:`Misrouted` alone when the call was pinned to another replica."""
        if target_replica_id is not None and target_replica_id != self.replica_id:
            yield Misrouted(self.replica_id)
            return
        rid, attempt = request.request_id, request.attempt
        key = (rid, attempt)
        self.running[key] = request
        self.watchdog.begin()
        num_tokens = request.resume_tokens  # the reply's tokens, a resumed run's earlier ones included
        # Unless it finishes or fails: the caller went away (or hit a stop string, or a deadline).
        report = Report.cancel(rid, attempt=attempt)
        points = (ProgressPoints(self.every, num_tokens)
                  if self.repredictor is not None and request.meta is not None else None)
        keep_text = points is not None and self.repredictor.model is not None
        text = request.resume_text if keep_text else ""
        asked: asyncio.Task | None = None  # the progress report in flight: is this run preempted?
        deltas = self.engine.generate(request)
        try:
            # Started says the call reached this replica, not that the engine made progress: the
            # ingress's first-token deadline runs from the dispatch, whatever comes before a token.
            yield Started(self.replica_id)
            async for delta in deltas:
                self.watchdog.progress()
                num_tokens += delta.num_tokens
                if delta.finish_reason is not None:
                    # Report before the last chunk leaves: the next job starts while it travels.
                    report = None
                    if self.reporter is not None:
                        self.reporter.report(Report.complete(rid, num_tokens, attempt=attempt))
                yield delta
                if points is None or delta.finish_reason is not None:
                    continue
                if keep_text:
                    text += delta.text
                if asked is not None and asked.done():
                    preempt, asked = asked.result(), None
                    if preempt:
                        # Everything streamed so far stays streamed; the router already counted this
                        # run preempted and dispatched the request that takes its slot.
                        ids = self.engine.resume_token_ids(request)
                        report = None
                        await deltas.aclose()
                        self.progress_counts["preempted"] += 1
                        yield Preempted(num_tokens, ids)
                        return
                if asked is None and points.due(num_tokens):
                    ids = self.engine.resume_token_ids(request) if keep_text else None
                    asked = asyncio.get_running_loop().create_task(self._progress(request, num_tokens, text, ids))
        except Exception:
            report = Report.fail(rid, attempt=attempt)
            raise
        finally:
            if asked is not None:
                asked.cancel()
            await deltas.aclose()
            self.watchdog.end()
            if self.running.get(key) is request:
                del self.running[key]
            if report is not None and self.reporter is not None:
                self.reporter.report(report)

    async def _progress(self, request: GenerationRequest, tokens_done: int, text: str,
                        token_ids: tuple[int, ...] | None) -> bool:
        """Report the run's progress with its re-predicted remaining length: whether the router
        preempts it. A late or failed answer: not preempted (the run goes on)."""
        counts = self.progress_counts
        counts["reports"] += 1
        try:
            remaining = await self.repredictor.remaining(request, tokens_done, text, token_ids)
            call = self.router.handle.progress.remote(request.request_id, request.attempt, tokens_done, remaining)
            return bool(await asyncio.wait_for(call, timeout=self.settings.progress_timeout_s))
        except asyncio.TimeoutError:
            counts["timeouts"] += 1
            logger.warning("router answered no progress report of %s within %.1f s (llm.progress_timeout_s): "
                           "the run goes on", request.request_id, self.settings.progress_timeout_s)
        except Exception as e:
            counts["errors"] += 1
            logger.warning("progress report of %s failed: %r", request.request_id, e)
            if RouterClient.is_router_failure(e):
                self.router.reset()
        return False

    def check_health(self) -> None:
        self.engine.check_health()
        self.watchdog.check()

    def state(self, target_replica_id: str | None = None) -> dict:
        """What this replica runs now, for fault drills and tests: its id, process id and runs (the
        router's view is derived from heartbeats; this is the replica's own). Called through a Serve
        handle, pinned like ``generate`` by ``target_replica_id``; a call that reached another replica
        says so (``misrouted``) rather than answer for the wrong one."""
        if target_replica_id is not None and target_replica_id != self.replica_id:
            return {"replica_id": self.replica_id, "misrouted": True}
        return {"replica_id": self.replica_id, "pid": os.getpid(), "num_running": len(self.running),
                "runs": self.running_runs(), "stalled_for": self.watchdog.stalled_for(),
                "progress": dict(self.progress_counts or {}),
                "repredictions": dict(self.repredictor.counts) if self.repredictor is not None else {}}

    async def __del__(self):
        # A graceful stop (downscale, redeploy): hand the queue to the other replicas now.
        try:
            if self.router is not None:
                self._heartbeat.cancel()
                self.router.handle.remove_replica.remote(self.replica_id)
            await self.engine.stop()
        except Exception:
            pass
