"""Re-predicting a running request's remaining length on its LLM replica (``srpt``, issue 14).

Under ``router.policy: srpt`` a replica reports each run's progress every ``K`` generated tokens
(``router.repredict_every_tokens``, its *progress points*) with the remaining length re-predicted
there; the router answers whether to preempt it (``RouterActor.progress``). Which re-prediction,
per request, first that applies:

- ``emulated`` (replay engine, benchmarks): the request carries ``replay_remaining_predictions``,
  one value per progress point ``K, 2K, ...``, computed by the load generator with the simulator's
  re-predictor (``loadgen.repredict_sim``: the measured remaining-length Kendall tau per progress
  point, Gaussian copula over the workload's true remaining lengths, seeded like the simulator), so
  the truth reaches the router only through that calibrated noise, exactly as in ``loadgen
  simulate``. EMULATED: always labelled so, never a model's output.
- ``model``: ``llm.remaining_predictor`` names a trained remaining-length artifact
  (``proxy_model.remaining.RemainingPredictor``) and the request carries its proxy text: the
  model reads the prompt, the tail of the reply so far and ``k``.
- ``prompt-minus-done``: the prompt-only prediction minus the tokens generated so far, at least 0
  (a request past its prediction is then never preempted: ``router.preempt_min_remaining_tokens``).

A progress point that several tokens of one delta pass at once is reported once, with the tokens
done then; the emulated value is the latest point passed (``tokens // K``-th).
"""

from __future__ import annotations

import asyncio
import logging

from deployments.engines.base import GenerationRequest

logger = logging.getLogger(__name__)

EMULATED = "emulated"
MODEL = "model"
PROMPT_MINUS_DONE = "prompt-minus-done"
# Characters of reply text the model reads when no tokenizer gives its last tail tokens (about 4 a token).
CHARS_PER_TOKEN = 4


class ProgressPoints:
    """When a run reports: every ``every`` generated tokens (counted over the whole reply, a resumed
    run's earlier tokens included), the next point once the last report's is passed."""

    def __init__(self, every: int, tokens_done: int = 0):
        if every < 1:
            raise ValueError(f"progress points need every >= 1 token, got {every}")
        self.every = every
        self.next_at = (tokens_done // every + 1) * every

    def due(self, tokens_done: int) -> bool:
        """Whether ``tokens_done`` reached the next point (then the one after is next)."""
        if tokens_done < self.next_at:
            return False
        self.next_at = (tokens_done // self.every + 1) * self.every
        return True


def prompt_minus_done(request: GenerationRequest, tokens_done: int) -> float:
    meta = request.meta
    predicted = meta.expected_tokens if meta is not None else float(request.max_tokens)
    return max(predicted - tokens_done, 0.0)


def emulated(request: GenerationRequest, tokens_done: int, every: int) -> float | None:
    """The load generator's emulated re-prediction at the latest progress point passed (None: none given there)."""
    values = request.replay_remaining_predictions
    i = tokens_done // every - 1
    if values is None or not 0 <= i < len(values):
        return None
    return float(values[i])


class Repredictor:
    """A replica's re-predictor (see the module docstring); ``model``: a loaded ``RemainingPredictor`` or None."""

    def __init__(self, every: int, model=None, tokenizer=None):
        self.every = every
        self.model = model
        self.tokenizer = tokenizer  # the served model's (hf): decodes the reply's last tail tokens
        self.counts = {EMULATED: 0, MODEL: 0, PROMPT_MINUS_DONE: 0}

    @classmethod
    def load(cls, every: int, path: str | None, tokenizer=None) -> Repredictor:
        model = None
        if path:
            from proxy_model.remaining import RemainingPredictor

            model = RemainingPredictor.load(path)
            logger.info("remaining-length predictor loaded from %s (tail %d tokens)", path, model.tail_tokens)
        return cls(every, model, tokenizer)

    def kind_for(self, request: GenerationRequest, tokens_done: int) -> str:
        if emulated(request, tokens_done, self.every) is not None:
            return EMULATED
        if self.model is not None and request.proxy_text is not None:
            return MODEL
        return PROMPT_MINUS_DONE

    async def remaining(self, request: GenerationRequest, tokens_done: int, text: str,
                        token_ids: tuple[int, ...] | None = None) -> float:
        """The re-predicted remaining output tokens of ``request`` after ``tokens_done`` (``text``: the
        reply so far; ``token_ids``: its ids where the engine has them)."""
        kind = self.kind_for(request, tokens_done)
        self.counts[kind] += 1
        if kind == EMULATED:
            return emulated(request, tokens_done, self.every)
        if kind == MODEL:
            tail = self._tail(text, token_ids)
            pred, _ = await asyncio.to_thread(self.model.predict, [request.proxy_text], [tail], [tokens_done])
            return max(float(pred[0]), 0.0)
        return prompt_minus_done(request, tokens_done)

    def _tail(self, text: str, token_ids: tuple[int, ...] | None) -> str:
        """The reply's last ``tail_tokens`` tokens, decoded (as the model was trained), or its last
        characters where no tokenizer or ids are at hand."""
        n = self.model.tail_tokens
        if token_ids and self.tokenizer is not None:
            return self.tokenizer.decode(list(token_ids[-n:]), skip_special_tokens=True)
        return text[-n * CHARS_PER_TOKEN:]
