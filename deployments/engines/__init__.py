"""LLM engines behind one interface (:class:`~deployments.engines.base.Engine`).

``hf`` (transformers), ``deepspeed`` (the hf model under DeepSpeed inference) and ``replay``
(emulated). Modules are imported lazily: the replay engine never imports torch.
"""

from __future__ import annotations

from deployments.config import EngineKind, LLMSettings
from deployments.engines.base import Delta, Engine, FinishReason, GenerationRequest, Misrouted, Started


def build_engine(settings: LLMSettings) -> Engine:
    """The engine the config names (not started: call ``await engine.start()``)."""
    kind = settings.engine_kind
    if kind is EngineKind.REPLAY:
        from deployments.engines.replay import ReplayEngine

        return ReplayEngine.from_settings(settings)
    if kind is EngineKind.DEEPSPEED:
        from deployments.engines.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(settings)
    from deployments.engines.hf import HFEngine

    return HFEngine(settings)


__all__ = ["Delta", "Engine", "FinishReason", "GenerationRequest", "Misrouted", "Started", "build_engine"]
