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
from deployments.engines import GenerationRequest, build_engine
from router.actor import Reporter, RouterClient

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
        self.num_served = 0
        self.num_misrouted = 0
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

    async def generate(self, payload: dict, target_replica_id: str | None = None):
        """Stream one request: a start event, then deltas; the last carries ``finish_reason``."""
        if target_replica_id is not None and target_replica_id != self.replica_id:
            self.num_misrouted += 1
            yield {"event": "misrouted", "replica_id": self.replica_id}
            return
        rid = payload["request_id"]
        request = GenerationRequest(
            request_id=rid, prompt=payload.get("prompt", ""), max_tokens=payload["max_tokens"],
            num_prompt_tokens=payload.get("num_prompt_tokens", 0),
            prompt_token_ids=tuple(payload["prompt_token_ids"]) if payload.get("prompt_token_ids") else None,
            temperature=payload.get("temperature", 1.0), top_p=payload.get("top_p", 1.0), seed=payload.get("seed"),
            replay_output_tokens=payload.get("replay_output_tokens"), batch_id=payload.get("batch_id"),
        )
        self.running[rid] = time.time()
        yield {"event": "start", "replica_id": self.replica_id}
        num_tokens = 0
        outcome = "cancel"
        try:
            async for delta in self.engine.generate(request):
                num_tokens += delta.num_tokens
                if delta.finish_reason is not None:
                    # Report before the last chunk leaves: the next job starts while it travels.
                    outcome = "complete"
                    self.reporter.report("complete", rid, num_tokens)
                yield {"event": "delta", "text": delta.text, "num_tokens": delta.num_tokens,
                       "finish_reason": delta.finish_reason}
        except Exception:
            outcome = "fail"
            raise
        finally:
            self.running.pop(rid, None)
            self.num_served += 1
            if outcome == "cancel":  # the caller went away (or stopped at a stop string)
                self.reporter.report("cancel", rid)
            elif outcome == "fail":
                self.reporter.report("fail", rid)

    async def stats(self) -> dict:
        return {"replica_id": self.replica_id, "engine": self.engine.kind, "num_slots": self.engine.num_slots,
                "num_running": len(self.running), "num_served": self.num_served, "num_misrouted": self.num_misrouted}

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
