"""The proxy pool's predictors: the deadline comes from the config, and every answer that is not the
proxy model's own says why (the ingress counts it)."""

import pytest

from deployments.config import ProxySettings
from deployments.predictors import LOAD_FAILED, Prediction, answer_batch, heuristic_predictor, load_predictor
from proxy_model.predictor import FALLBACK_REASONS, LengthPredictor


class Answering(LengthPredictor):
    """A trained proxy that answers ``values`` for the reason ``reason`` (None: its model answered)."""

    def __init__(self, values, reason):
        self.answer = (values, reason)

    def predict_with_fallback(self, prompts, models):
        return self.answer


def test_the_learned_predictor_takes_proxy_timeout_s_as_its_deadline(tmp_path, monkeypatch):
    seen = {}

    def fake_load(cls, path, **kwargs):
        seen.update(kwargs, path=path)
        return "loaded"

    monkeypatch.setattr(LengthPredictor, "load", classmethod(fake_load))
    settings = ProxySettings(predictor="learned", artifact_path=str(tmp_path), timeout_s=7.5)
    assert load_predictor(settings) == "loaded"
    assert seen == {"path": str(tmp_path), "timeout_s": 7.5}


@pytest.mark.parametrize("reason", [None, *FALLBACK_REASONS])
def test_a_trained_proxys_answers_carry_its_fallback_reason(reason):
    assert answer_batch(Answering([60.0, 7.0], reason), ["a", "b"], ["m", "m"]) == [
        Prediction(60.0, reason), Prediction(7.0, reason)]


def test_a_pool_without_its_artifact_answers_fallbacks():
    heuristic = heuristic_predictor()
    assert answer_batch(heuristic, ["x"], ["m"])[0].fallback is None  # the configured predictor: not a fallback
    assert answer_batch(heuristic, ["x"], ["m"], load_failed=True)[0].fallback == LOAD_FAILED


@pytest.mark.parametrize("value, tokens", [(-3.0, 0.0), (12.5, 12.5)])
def test_predictions_are_never_negative(value, tokens):
    assert answer_batch(Answering([value], None), ["x"], ["m"]) == [Prediction(tokens, None)]
