"""The LLM replica deployment: one engine, registered with the central router.

At start the replica learns its Serve id, registers its slots with the router actor and then
heartbeats (which also re-registers it after a router restart). Every call is pinned here by
``router.serve_router.PinnedRequestRouter``; a call meant for another replica is bounced, never
run. When a request ends the replica reports it (actual tokens) so the router frees the slot and
dispatches the next job; a cancelled call (the client left) frees its slot the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ray import serve

from deployments.config import AppConfig
from deployments.engines import GenerationRequest, Misrouted, Started, build_engine
from router.actor import Reporter, RouterClient
from router.messages import Report

logger = logging.getLogger("ray.serve")


@serve.deployment(name="llm")
class LLMServer:
    async def __init__(self, config: dict):
        cfg = AppConfig.from_dict(config)
        self.settings = cfg.llm
        self.engine = build_engine(cfg.llm)
        await self.engine.start()
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.router = RouterClient(
            cfg.router_actor_name, cfg.router.namespace, cfg.scheduler_config().to_dict(),
            max_restarts=cfg.router.max_restarts,
            actor_kwargs=dict(retry_after_s=cfg.router.retry_after_s, replica_timeout_s=cfg.router.replica_timeout_s,
                              lease_s=cfg.router.lease_s, orphan_timeout_s=cfg.router.orphan_timeout_s),
            resources=cfg.router.resources,
        )
        self.reporter = Reporter(self.router)
        self.running: dict[str, float] = {}  # request_id -> started_at
        await self._register()
        self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop())
        logger.info("LLM replica %s up: engine %s, %d slots", self.replica_id, self.engine.kind, self.engine.num_slots)

    async def _register(self) -> None:
        try:
            await asyncio.wait_for(
                self.router.handle.heartbeat.remote(self.replica_id, self.engine.num_slots, list(self.running)),
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
        rid = request.request_id
        self.running[rid] = time.time()
        yield Started(self.replica_id)
        num_tokens = 0
        report = Report.cancel(rid)  # unless it finishes or fails: the caller went away (or hit a stop string)
        try:
            async for delta in self.engine.generate(request):
                num_tokens += delta.num_tokens
                if delta.finish_reason is not None:
                    # Report before the last chunk leaves: the next job starts while it travels.
                    report = None
                    self.reporter.report(Report.complete(rid, num_tokens))
                yield delta
        except Exception:
            report = Report.fail(rid)
            raise
        finally:
            self.running.pop(rid, None)
            if report is not None:
                self.reporter.report(report)

    def check_health(self) -> None:
        self.engine.check_health()

    async def __del__(self):
        # A graceful stop (downscale, redeploy): hand the queue to the other replicas now.
        try:
            self._heartbeat.cancel()
            self.router.handle.remove_replica.remote(self.replica_id)
            await self.engine.stop()
        except Exception:
            pass
