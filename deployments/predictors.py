"""Length predictors as the serving cluster loads them (the proxy pool and the ingress fallback).

The predictors themselves live in ``proxy_model.predictor`` (``LengthPredictor``,
``HeuristicPredictor``, ``ConstantPredictor``: ``predict(prompts, models) -> list[float]``).
This module picks one from the config and adds :class:`MarkerPredictor`, a predictor that tests
and demos control through the prompt text. It is here, not in a test file, because the proxy
replicas must be able to import it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from deployments.config import PredictorKind, ProxySettings
from proxy_model.predictor import ConstantPredictor, HeuristicPredictor, LengthPredictor

logger = logging.getLogger(__name__)

MARKER_RE = re.compile(r"\[\[predict:(\d+(?:\.\d+)?)\]\]")


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
        return LengthPredictor.load(settings.artifact_path)
    if kind is PredictorKind.CONSTANT:
        return ConstantPredictor(settings.constant_tokens)
    if kind is PredictorKind.MARKER:
        return MarkerPredictor(settings.constant_tokens)
    return heuristic_predictor()
