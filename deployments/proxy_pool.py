"""The proxy pool: replicas that predict each request's output length, batched with ``@serve.batch``.

Each call carries one request's prompt or chat messages; the pool renders the text its predictor
reads (``proxy_model.predictor.text_for``: the proxy text rule with the artifact's history cut).
Concurrent calls on one replica are gathered (up to ``proxy.max_batch_size`` prompts or
``proxy.batch_wait_timeout_s``) into one predictor call, which runs on a worker thread so the
replica keeps accepting calls. ``proxy.timeout_s`` is the one prediction deadline: the ingress
waits that long and then falls back to the heuristic, and a trained proxy stops waiting for its
model after it too (answering with its own fallback, marked in the :class:`Prediction`), so a slow
or failed proxy never blocks serving.
"""

from __future__ import annotations

import asyncio
import logging

from ray import serve

from deployments.config import AppConfig
from deployments.predictors import Prediction, answer_batch, heuristic_predictor, load_predictor
from proxy_model.predictor import text_for

logger = logging.getLogger("ray.serve")


@serve.deployment(name="proxy")
class ProxyPool:
    async def __init__(self, config: dict):
        settings = AppConfig.from_dict(config).proxy
        self.load_failed = False
        try:
            self.predictor = await asyncio.to_thread(load_predictor, settings)
        except Exception:  # a broken artifact must not take serving down with it
            logger.exception("loading predictor %r failed: predicting with the heuristic", settings.predictor)
            self.predictor = heuristic_predictor()
            self.load_failed = True
        self.predict_batch.set_max_batch_size(settings.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self.num_batches = 0
        self.num_prompts = 0
        logger.info("proxy replica up: %s", type(self.predictor).__name__)

    async def predict(self, conversation, model: str) -> Prediction:
        """``conversation``: the request's prompt string or its chat messages."""
        return await self.predict_batch((text_for(self.predictor, conversation), model))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict_batch(self, items: list[tuple[str, str]]) -> list[Prediction]:
        prompts = [p for p, _ in items]
        models = [m for _, m in items]
        answers = await asyncio.to_thread(answer_batch, self.predictor, prompts, models, load_failed=self.load_failed)
        self.num_batches += 1
        self.num_prompts += len(items)
        return answers

    async def stats(self) -> dict:
        return {"predictor": type(self.predictor).__name__, "num_batches": self.num_batches,
                "num_prompts": self.num_prompts}
