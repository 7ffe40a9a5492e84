"""Length predictors as the serving cluster loads them (the proxy pool and the ingress fallback).

The predictors themselves live in ``proxy_model.predictor`` (``LengthPredictor``,
``HeuristicPredictor``, ``ConstantPredictor``: ``predict(prompts, models) -> list[float]``).
This module picks one from the config and adds :class:`MarkerPredictor`, a predictor that tests
and demos control through the prompt text. It is here, not in a test file, because the proxy
replicas must be able to import it.

:class:`Prediction` is what the proxy pool answers the ingress for one request: the predicted
tokens and, when they are not the proxy model's own, why (the ingress counts every such answer in
``ssjf_proxy_fallbacks_total``, which ``ssjf-cluster bench`` reads).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from deployments.config import PredictorKind, ProxySettings
from proxy_model.predictor import ConstantPredictor, HeuristicPredictor, LengthPredictor

logger = logging.getLogger(__name__)

MARKER_RE = re.compile(r"\[\[predict:(\d+(?:\.\d+)?)\]\]")
# The pool's artifact failed to load, so it predicts with the heuristic: every answer is a fallback.
LOAD_FAILED = "load_failed"


@dataclass(frozen=True)
class Prediction:
    """The proxy pool's answer for one request (it crosses from a pool replica to the ingress)."""

    tokens: float
    fallback: str | None = None  # why these are not the proxy model's tokens; None: they are


def answer_batch(predictor, prompts: list[str], models: list[str], *, load_failed: bool = False) -> list[Prediction]:
    """One batch of the pool: each prediction (at least 0) with the reason it is a fallback, if it is one
    (``proxy_model.predictor.FALLBACK_REASONS`` from a trained proxy, :data:`LOAD_FAILED`)."""
    if isinstance(predictor, LengthPredictor):
        values, reason = predictor.predict_with_fallback(prompts, models)
    else:
        values, reason = predictor.predict(prompts, models), None
    if load_failed:
        reason = LOAD_FAILED
    return [Prediction(max(0.0, float(v)), reason) for v in values]


class MarkerPredictor:
    """Predicts N for a prompt containing ``[[predict:N]]``, ``default`` otherwise."""

    def __init__(self, default: float = 128.0):
        self.default = float(default)
        self.known_models: list[str] = []

    def predict(self, prompts: list[str], models: list[str]) -> list[float]:
        out = []
        for prompt in prompts:
            m = MARKER_RE.search(prompt)
            out.append(float(m.group(1)) if m else self.default)
        return out


def heuristic_predictor() -> HeuristicPredictor:
    """The prompt-length heuristic: pure Python, needs nothing loaded (the fallback of last resort)."""
    return HeuristicPredictor()


def load_predictor(settings: ProxySettings):
    """Build the predictor the config names. ``auto`` loads the artifact if it exists."""
    kind = PredictorKind.parse(settings.predictor)
    if kind is PredictorKind.AUTO:
        kind = PredictorKind.LEARNED if Path(settings.artifact_path).exists() else PredictorKind.HEURISTIC
        if kind is PredictorKind.HEURISTIC:
            logger.warning("no proxy artifact at %r: predicting with the prompt-length heuristic "
                           "(set proxy.artifact_path to a trained model)", settings.artifact_path)
    if kind is PredictorKind.LEARNED:
        # One deadline: the proxy stops waiting for its model when the ingress stops waiting for it.
        return LengthPredictor.load(settings.artifact_path, timeout_s=settings.timeout_s)
    if kind is PredictorKind.CONSTANT:
        return ConstantPredictor(settings.constant_tokens)
    if kind is PredictorKind.MARKER:
        return MarkerPredictor(settings.constant_tokens)
    return heuristic_predictor()
