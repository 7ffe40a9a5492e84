"""The proxy pool: replicas that predict each request's output length, batched with ``@serve.batch``.

Concurrent calls on one replica are gathered (up to ``proxy.max_batch_size`` prompts or
``proxy.batch_wait_timeout_s``) into one predictor call, which runs on a worker thread so the
replica keeps accepting calls. The ingress bounds its wait (``proxy.timeout_s``) and falls back to
the heuristic, so a slow or failed proxy never blocks serving.
"""

from __future__ import annotations

import asyncio
import logging

from ray import serve

from deployments.config import AppConfig
from deployments.predictors import heuristic_predictor, load_predictor

logger = logging.getLogger("ray.serve")


@serve.deployment(name="proxy")
class ProxyPool:
    async def __init__(self, config: dict):
        settings = AppConfig.from_dict(config).proxy
        try:
            self.predictor = await asyncio.to_thread(load_predictor, settings)
        except Exception:  # a broken artifact must not take serving down with it
            logger.exception("loading predictor %r failed: predicting with the heuristic", settings.predictor)
            self.predictor = heuristic_predictor()
        self.predict_batch.set_max_batch_size(settings.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self.num_batches = 0
        self.num_prompts = 0
        logger.info("proxy replica up: %s", type(self.predictor).__name__)

    async def predict(self, prompt: str, model: str) -> float:
        return await self.predict_batch((prompt, model))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict_batch(self, items: list[tuple[str, str]]) -> list[float]:
        prompts = [p for p, _ in items]
        models = [m for _, m in items]
        predictions = await asyncio.to_thread(self.predictor.predict, prompts, models)
        self.num_batches += 1
        self.num_prompts += len(items)
        return [max(0.0, float(p)) for p in predictions]

    async def stats(self) -> dict:
        return {"predictor": type(self.predictor).__name__, "num_batches": self.num_batches,
                "num_prompts": self.num_prompts}
