"""One proxy text rule on every path: the text the proxy trains on (``proxy-model prepare``), the text
the serving cluster's proxy pool reads for a /v1/chat/completions request, and the text the
simulator's predictor reads for a workload row are the same string, for a multi-turn conversation
(history cut by the artifact's ``max_history_chars``) and for a single-turn prompt."""

import asyncio
import json

import pyarrow.parquet as pq
import pytest

from deployments.protocol import parse_chat, parse_completion
from deployments.proxy_pool import ProxyPool
from loadgen.predictors_sim import predictor_inputs
from loadgen.workload import WorkloadSpec, build_workload
from proxy_model.data import max_history_chars_of, prepare

HISTORY_CHARS = 40  # not the default, and shorter than the history below: the cut must travel too
MULTI_TURN = [
    {"role": "system", "content": "You answer as a ship's navigator."},
    {"role": "user", "content": "How far is it to the harbour?"},
    {"role": "assistant", "content": "About twelve nautical miles, bearing north-east."},
    {"role": "user", "content": "And how long at eight knots?"},
]
SINGLE_TURN = [{"role": "user", "content": "Name three prime numbers."}]


class ArtifactLike:
    """A trained proxy as the text rule sees it: its artifact's history cut."""

    def __init__(self, max_history_chars: int):
        self.max_history_chars = max_history_chars


def training_text(tmp_path, messages) -> tuple[str, int]:
    logs = tmp_path / "logs.jsonl"
    logs.write_text(json.dumps({"model": "m", "messages": messages, "output_tokens": 42}) + "\n")
    out = tmp_path / "prepared.parquet"
    prepare([str(logs)], out, tokenizer="whitespace", max_history_chars=HISTORY_CHARS, val_frac=0.0, test_frac=0.0)
    table = pq.read_table(out)
    # What `proxy-model train` records in the artifact, so serving and simulation read the same cut.
    return table.column("prompt")[0].as_py(), max_history_chars_of(table)


def serving_text(conversation, predictor) -> str:
    pool = ProxyPool.func_or_class.__new__(ProxyPool.func_or_class)
    pool.predictor = predictor
    seen = []

    async def predict_batch(item):  # stands in for @serve.batch, which needs a running replica
        seen.append(item)
        return None

    pool.predict_batch = predict_batch
    asyncio.run(pool.predict(conversation, "m"))
    ((text, model),) = seen
    assert model == "m"
    return text


def simulator_text(tmp_path, messages, predictor) -> str:
    dataset = tmp_path / "dataset.jsonl"  # the logs format, read by proxy_model.datasets
    dataset.write_text(json.dumps({"model": "m", "messages": messages, "output_tokens": 42}) + "\n")
    workload = build_workload(WorkloadSpec(dataset=str(dataset), trace="poisson", rate=1.0, num_requests=1,
                                           tokenizer="whitespace"))
    (text,) = predictor_inputs(predictor, workload)
    return text


@pytest.mark.parametrize("messages", [MULTI_TURN, SINGLE_TURN], ids=["multi-turn", "single-turn"])
def test_training_serving_and_simulation_feed_the_proxy_the_same_text(tmp_path, messages):
    trained, history_chars = training_text(tmp_path, messages)
    artifact = ArtifactLike(history_chars)
    request = parse_chat({"model": "m", "messages": messages})
    assert serving_text(request.conversation, artifact) == trained
    assert simulator_text(tmp_path, messages, artifact) == trained
    assert trained.endswith(messages[-1]["content"])
    if len(messages) > 1:
        assert history_chars == HISTORY_CHARS
        assert trained.startswith("...") and "user: And how long" in trained  # history, cut from the left
    else:  # a single-turn prompt: the plain text, also as a completion request
        assert trained == messages[0]["content"]
        assert serving_text(parse_completion({"model": "m", "prompt": trained}).conversation, artifact) == trained
