"""The ingress's prediction call (``Ingress._predict``): ``proxy.timeout_s`` is its one deadline, and
every prediction that is not the proxy model's own is counted by reason in ``ssjf_proxy_fallbacks``,
the counter ``ssjf-cluster bench`` reads from ``/metrics``."""

import asyncio
from types import SimpleNamespace

import pytest

from deployments.config import AppConfig
from deployments.ingress import Ingress
from deployments.metrics import IngressMetrics
from deployments.predictors import Prediction, heuristic_predictor
from deployments.protocol import parse_chat

MESSAGES = [{"role": "user", "content": "first question"}, {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": "the follow-up"}]


def ingress(pool_answer) -> SimpleNamespace:
    """What ``Ingress._predict`` uses of its ingress (no Serve replica needed); the proxy pool answers
    with ``pool_answer(conversation)``."""
    calls = []

    def remote(conversation, model):
        calls.append((conversation, model))
        return pool_answer(conversation)

    return SimpleNamespace(cfg=AppConfig.from_dict({"proxy": {"timeout_s": 0.1}}), fallback=heuristic_predictor(),
                           metrics=IngressMetrics(), calls=calls,
                           proxy=SimpleNamespace(predict=SimpleNamespace(remote=remote)))


def predict(ing: SimpleNamespace, conversation, model: str = "m") -> float:
    return asyncio.run(asyncio.wait_for(Ingress.func_or_class._predict(ing, conversation, model), 2.0))


def fallbacks(ing: SimpleNamespace) -> dict[str, float]:
    counts = {}
    for metric in ing.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "ssjf_proxy_fallbacks_total":
                counts[sample.labels["reason"]] = sample.value
    return counts


async def answer(value):
    return value


async def too_late(_):
    await asyncio.sleep(5)


async def broken(_):
    raise RuntimeError("the proxy replica died")


def test_the_proxy_models_answer_is_used_and_not_counted():
    ing = ingress(lambda conv: answer(Prediction(42.0)))
    conversation = parse_chat({"model": "m", "messages": MESSAGES}).conversation
    assert predict(ing, conversation) == 42.0
    assert ing.calls == [(conversation, "m")]  # the whole chat goes to the pool, which renders the proxy text
    assert fallbacks(ing) == {}


@pytest.mark.parametrize("pool_answer, reason", [
    (too_late, "timeout"),  # past proxy.timeout_s
    (broken, "error"),
])
def test_a_missed_deadline_or_a_failed_call_gets_the_heuristic_and_is_counted(pool_answer, reason):
    ing = ingress(pool_answer)
    conversation = parse_chat({"model": "m", "messages": MESSAGES}).conversation
    # The heuristic reads the chat by the proxy text rule, as the pool would have.
    expected = heuristic_predictor().predict(["user: first question\nassistant: an answer\n\nuser: the follow-up"],
                                             ["m"])[0]
    assert predict(ing, conversation) == expected
    assert fallbacks(ing) == {reason: 1.0}


@pytest.mark.parametrize("reason", ["busy", "timeout", "error", "load_failed"])
def test_the_pools_own_fallbacks_are_counted_with_their_reason(reason):
    ing = ingress(lambda conv: answer(Prediction(60.0, reason)))
    assert predict(ing, "a prompt") == 60.0  # the pool's fallback answer stands
    assert fallbacks(ing) == {reason: 1.0}
