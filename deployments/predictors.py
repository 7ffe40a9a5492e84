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


class _PromptLengthFallback:
    """Used only if ``proxy_model.predictor`` cannot be imported: about 4 characters a token, x2."""

    known_models: list[str] = []

    def predict(self, prompts: list[str], models: list[str]) -> list[float]:
        return [float(min(1024, max(16, len(p) // 2))) for p in prompts]


def heuristic_predictor():
    """The prompt-length heuristic: pure Python, always available (the fallback of last resort)."""
    try:
        from proxy_model.predictor import HeuristicPredictor
    except ImportError:  # the proxy package is optional on a serving-only install
        logger.warning("proxy_model.predictor is not importable; using a prompt-length fallback")
        return _PromptLengthFallback()
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
        from proxy_model.predictor import LengthPredictor

        return LengthPredictor.load(settings.artifact_path)
    if kind is PredictorKind.CONSTANT:
        from proxy_model.predictor import ConstantPredictor

        return ConstantPredictor(settings.constant_tokens)
    if kind is PredictorKind.MARKER:
        return MarkerPredictor(settings.constant_tokens)
    return heuristic_predictor()
