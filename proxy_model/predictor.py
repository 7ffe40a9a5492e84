"""Output-length predictors behind one call: ``predict(prompts, models) -> predicted tokens``.

Imports without torch: ``LengthPredictor.load`` imports the torch engine lazily, so the simulator
and the router can use ``HeuristicPredictor`` / ``ConstantPredictor`` in a bare Python process.

``LengthPredictor`` wraps a trained artifact, optionally with a latency bound: given ``timeout_s``
(serving passes its one prediction deadline, ``proxy.timeout_s``), each call runs on one worker
thread and waits at most ``timeout_s`` per batch of ``batch_size`` distinct prompts (a call of
n distinct prompts waits ``timeout_s * ceil(n / batch_size)``, so bulk calls are not cut short,
while a serving call of one batch is bounded); on a timeout, an exception, or while an earlier
timed-out call still occupies the worker, it returns its fallback's answer instead, counts it in
``stats`` and names the reason (:data:`FALLBACK_REASONS`, see ``predict_with_fallback``). A slow
proxy therefore degrades scheduling quality, never serving latency. Without ``timeout_s`` (the
default: evaluation, simulation) it waits for the model however long it takes.

:func:`text_for` is the text a predictor reads for one request: ``proxy_model.text.proxy_text``
with the history cut the predictor's artifact was trained with.

Documented fallbacks (no exceptions for these):
- unknown target model: the artifact's generic ``<unk>`` model row (trained on every model's
  replies, so it predicts a typical reply for the prompt); counted in ``stats["num_unknown_model"]``.
  Names match exactly, then case-insensitively, then without an ``org/`` prefix.
- empty or whitespace-only prompt: the fallback predictor's answer (the target model's median
  training length by default); counted in ``stats["num_empty_prompt"]``.
Caller mistakes (lists of different lengths, a non-string prompt) raise ``ValueError``.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import threading
from collections.abc import Sequence
from pathlib import Path

from proxy_model.text import DEFAULT_MAX_HISTORY_CHARS, approx_tokens, proxy_text

logger = logging.getLogger(__name__)

__all__ = ["LengthPredictor", "HeuristicPredictor", "ConstantPredictor", "FALLBACK_REASONS", "check_inputs",
           "normalize_model_name", "text_for"]

# Why a LengthPredictor answered with its fallback: the call ran past timeout_s, an earlier timed-out
# call still occupied the worker, or the model raised.
FALLBACK_REASONS = ("timeout", "busy", "error")


def text_for(predictor, conversation) -> str:
    """What ``predictor`` reads for one request (a prompt string or chat messages): the proxy text
    rule with its artifact's history cut (the default cut for predictors without an artifact)."""
    return proxy_text(conversation, getattr(predictor, "max_history_chars", DEFAULT_MAX_HISTORY_CHARS))


def check_inputs(prompts: Sequence[str], models: Sequence[str]) -> None:
    if isinstance(prompts, str) or isinstance(models, str):
        raise ValueError("prompts and models must be lists of strings, not a single string")
    if len(prompts) != len(models):
        raise ValueError(f"got {len(prompts)} prompts but {len(models)} model names; need one model per prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompt {i} is {type(p).__name__}, expected str")
    for i, m in enumerate(models):
        if not isinstance(m, str):
            raise ValueError(f"model name {i} is {type(m).__name__}, expected str")


def normalize_model_name(name: str) -> str:
    """Loose key for model names: lower case, without an ``org/`` prefix."""
    return name.strip().lower().rsplit("/", 1)[-1]


class ConstantPredictor:
    """Predicts ``tokens`` for every request (or a per-model value where one is given)."""

    def __init__(self, tokens: float, per_model: dict[str, float] | None = None):
        if not (tokens >= 0 and math.isfinite(tokens)):
            raise ValueError(f"tokens must be a finite number >= 0, got {tokens}")
        for name, v in (per_model or {}).items():
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"per_model[{name!r}] must be a finite number >= 0, got {v}")
        self.tokens = float(tokens)
        self.per_model = dict(per_model or {})
        self._loose = {normalize_model_name(k): v for k, v in self.per_model.items()}

    @property
    def known_models(self) -> list[str]:
        return sorted(self.per_model)

    def predict(self, prompts: Sequence[str], models: Sequence[str]) -> list[float]:
        check_inputs(prompts, models)
        out = []
        for m in models:
            v = self.per_model.get(m)
            if v is None:
                v = self._loose.get(normalize_model_name(m), self.tokens)
            out.append(float(v))
        return out

    def __repr__(self) -> str:
        return f"ConstantPredictor(tokens={self.tokens:g}, per_model={len(self.per_model)} models)"


class HeuristicPredictor:
    """Prompt-length heuristic: ``clip(base + ratio * prompt_tokens, min_tokens, max_tokens)``.

    Longer prompts are assumed to get longer replies. Tokens are estimated as characters / 4
    (no tokenizer needed). A baseline, and a fallback that needs nothing loaded.
    """

    def __init__(self, ratio: float = 0.5, base: float = 64.0, min_tokens: float = 1.0, max_tokens: float = 2048.0):
        if ratio < 0 or base < 0:
            raise ValueError(f"ratio and base must be >= 0, got ratio={ratio}, base={base}")
        if not 0 <= min_tokens <= max_tokens:
            raise ValueError(f"need 0 <= min_tokens <= max_tokens, got {min_tokens}, {max_tokens}")
        self.ratio, self.base, self.min_tokens, self.max_tokens = float(ratio), float(base), float(min_tokens), float(max_tokens)

    known_models: list[str] = []

    def predict(self, prompts: Sequence[str], models: Sequence[str]) -> list[float]:
        check_inputs(prompts, models)
        return [min(self.max_tokens, max(self.min_tokens, self.base + self.ratio * approx_tokens(p)))
                for p in prompts]

    def __repr__(self) -> str:
        return f"HeuristicPredictor(ratio={self.ratio:g}, base={self.base:g})"


class LengthPredictor:
    """A trained proxy artifact, batched, with a latency bound and a fallback (see module doc).

    ``timeout_s=None`` (the default) waits for the model however long it takes (evaluation,
    simulation); serving passes its prediction deadline. ``dtype``: "auto" (bf16 where the CPU has native bf16, else fp32; always fp32
    on GPU unless told), "fp32", "bf16", or "int8" (dynamic quantization of the linear layers).
    """

    def __init__(self, engine, *, timeout_s: float | None = None, fallback=None):
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
        self._engine = engine
        self.timeout_s = timeout_s
        self.fallback = fallback if fallback is not None else ConstantPredictor(
            engine.median_tokens, per_model=engine.median_tokens_per_model)
        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="proxy-predict")
        self._busy: cf.Future | None = None
        self._lock = threading.Lock()
        self.stats = {"num_calls": 0, "num_prompts": 0, "num_fallback_calls": 0, "num_timeouts": 0,
                      "num_errors": 0, "num_busy": 0, "num_unknown_model": 0, "num_empty_prompt": 0}

    @classmethod
    def load(cls, path: str | Path, *, timeout_s: float | None = None, batch_size: int = 32,
             dtype: str = "auto", num_threads: int | None = None, device: str = "cpu",
             fallback=None) -> LengthPredictor:
        from proxy_model.engine import InferenceEngine  # torch: imported only here

        engine = InferenceEngine.load(path, batch_size=batch_size, dtype=dtype, num_threads=num_threads, device=device)
        # Warm up: the first forward pass sets up kernels (seconds with bf16 on CPU); keep that out
        # of the first request's latency bound.
        engine.predict(["warm up"], [engine.known_models[0] if engine.known_models else "warm-up"])
        return cls(engine, timeout_s=timeout_s, fallback=fallback)

    @property
    def known_models(self) -> list[str]:
        return list(self._engine.known_models)

    @property
    def config(self) -> dict:
        return self._engine.describe()

    @property
    def max_history_chars(self) -> int:
        """The history cut of the proxy text rule this artifact was trained with."""
        return self._engine.max_history_chars

    def predict(self, prompts: Sequence[str], models: Sequence[str]) -> list[float]:
        return self.predict_with_fallback(prompts, models)[0]

    def predict_with_fallback(self, prompts: Sequence[str], models: Sequence[str]) -> tuple[list[float], str | None]:
        """``predict``, and why the model's answers were replaced by the fallback's (one of
        :data:`FALLBACK_REASONS`), or None when the model answered. Empty prompts always get the
        fallback's answer (there is nothing to read) and do not make the call a fallback."""
        check_inputs(prompts, models)
        prompts, models = list(prompts), list(models)
        self.stats["num_calls"] += 1
        self.stats["num_prompts"] += len(prompts)
        if not prompts:
            return [], None
        empty = [i for i, p in enumerate(prompts) if not p.strip()]
        self.stats["num_empty_prompt"] += len(empty)
        self.stats["num_unknown_model"] += sum(1 for m in models if self._engine.model_index(m) == 0)
        todo = [i for i, p in enumerate(prompts) if p.strip()]
        out = [0.0] * len(prompts)
        if empty:
            for i, v in zip(empty, self.fallback.predict([prompts[i] for i in empty], [models[i] for i in empty]), strict=True):
                out[i] = float(v)
        reason = None
        if todo:
            values, reason = self._bounded([prompts[i] for i in todo], [models[i] for i in todo])
            for i, v in zip(todo, values, strict=True):
                out[i] = float(v)
        return out, reason

    def predict_detail(self, prompts: Sequence[str], models: Sequence[str]) -> tuple[list[float], list[float] | None]:
        """(predicted tokens, P(each reply hits the generation cap)) where the artifact's head is
        censored, else (predicted tokens, None). Waits for the model (no deadline, no fallback, no
        empty-prompt rule): for evaluation, not serving."""
        check_inputs(prompts, models)
        return self._engine.predict_detail(list(prompts), list(models))

    def predict_messages(self, conversations: Sequence[Sequence[dict]], models: Sequence[str]) -> list[float]:
        """Like ``predict`` for chat requests: each conversation is rendered by :func:`text_for`."""
        return self.predict([text_for(self, c) for c in conversations], models)

    def _bounded(self, prompts: list[str], models: list[str]) -> tuple[list[float], str | None]:
        if self.timeout_s is None:
            return self._engine.predict(prompts, models), None
        with self._lock:
            if self._busy is not None and not self._busy.done():
                # An earlier call timed out and still runs: do not queue behind it.
                self.stats["num_busy"] += 1
                return self._fall_back(prompts, models, "busy")
            fut = self._pool.submit(self._engine.predict, prompts, models)
            self._busy = fut
        num_batches = max(1, math.ceil(len(set(prompts)) / self._engine.batch_size))
        timeout = self.timeout_s * num_batches
        try:
            return fut.result(timeout=timeout), None
        except cf.TimeoutError:
            self.stats["num_timeouts"] += 1
            return self._fall_back(prompts, models, "timeout", f"timed out after {timeout:g}s ({num_batches} batches)")
        except Exception:  # the proxy must never fail a request
            self.stats["num_errors"] += 1
            logger.exception("proxy prediction failed; using the fallback predictor")
            return self._fall_back(prompts, models, "error")

    def _fall_back(self, prompts, models, reason: str, detail: str | None = None) -> tuple[list[float], str]:
        self.stats["num_fallback_calls"] += 1
        logger.warning("proxy prediction %s for %d prompts; answering with %r (tune timeout_s)",
                       detail or reason, len(prompts), self.fallback)
        return [float(v) for v in self.fallback.predict(prompts, models)], reason

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __repr__(self) -> str:
        return f"LengthPredictor({self._engine.path}, head={self._engine.head_type}, timeout_s={self.timeout_s})"
