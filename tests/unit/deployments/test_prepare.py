"""The ingress's prepare step (``deployments.prepare.RequestPreparer``) without Ray or Serve: headers,
body size, JSON, fields, the engine's options, the chat template and the context length, each
answered with its own 4xx; rendering off the event loop. A real tokenizer (byte-level BPE trained
here) with a chat template that refuses some conversations through ``raise_exception``."""

import asyncio
import json
import threading

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from deployments.config import AppConfig
from deployments.prepare import INLINE_PARSE_BYTES, Prepared, RequestPreparer
from deployments.prompts import PromptRenderer
from deployments.protocol import APIError
from tests.unit.deployments.bodies import chat_bodies, completion_bodies

JSON = {"content-type": "application/json"}
CONTEXT = 64
# A template in the style of real ones: it refuses what it cannot render.
TEMPLATE = (
    "{% if messages[0]['role'] == 'assistant' %}"
    "{{ raise_exception('Conversations must start with a user or system message') }}{% endif %}"
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # any text has tokens
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog", "hello world"] * 10, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = TEMPLATE
    return fast


def preparer(tokenizer=None, engine: str = "replay", **ingress) -> RequestPreparer:
    llm = {"engine": engine} if engine == "replay" else {"engine": engine, "model": "tiny"}
    cfg = AppConfig.from_dict({"llm": llm, "ingress": ingress})
    return RequestPreparer(cfg, PromptRenderer(tokenizer, CONTEXT if tokenizer is not None else 8192))


class Body:
    """An ASGI-like body stream that records how much of it was read."""

    def __init__(self, raw: bytes, chunk: int = 1 << 16):
        self.parts = [raw[i:i + chunk] for i in range(0, len(raw), chunk)] or [b""]
        self.read = 0

    async def __aiter__(self):
        for part in self.parts:
            self.read += 1
            yield part


def run(prep: RequestPreparer, body, kind: str = "completion", headers=JSON):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return asyncio.run(prep.prepare(headers, Body(raw), kind))


def refused(prep, body, kind="completion", headers=JSON) -> APIError:
    with pytest.raises(APIError) as e:
        run(prep, body, kind, headers)
    return e.value


COMPLETION = {"model": "m", "prompt": "hello world"}


def test_a_good_request_is_parsed_rendered_and_fitted(tokenizer):
    got = run(preparer(tokenizer), {"model": "m", "messages": [{"role": "user", "content": "hello"}]}, "chat")
    assert isinstance(got, Prepared)
    assert got.prompt.text == "<s>user: hello\nassistant:"
    assert got.prompt.num_tokens == len(got.prompt.token_ids) > 0
    assert got.max_tokens == CONTEXT - got.prompt.num_tokens  # the chat default, capped by the context
    assert run(preparer(), COMPLETION).max_tokens == 16


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonp", ""])
def test_only_json_bodies_are_accepted(content_type):
    headers = {} if content_type is None else {"content-type": content_type}
    e = refused(preparer(), COMPLETION, headers=headers)
    assert (e.status, e.code) == (415, "unsupported_media_type")


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON ;charset=UTF-8"])
def test_json_with_parameters_is_accepted(content_type):
    assert run(preparer(), COMPLETION, headers={"content-type": content_type}).parsed.prompt == "hello world"


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    body = Body(b"{}")
    with pytest.raises(APIError) as e:
        asyncio.run(preparer(max_body_bytes=1000).prepare({**JSON, "content-length": "1001"}, body, "completion"))
    assert (e.value.status, e.value.code) == (413, "request_too_large")
    assert body.read == 0
    e = refused(preparer(), COMPLETION, headers={**JSON, "content-length": "12abc"})
    assert (e.status, e.code) == (400, "invalid_header")


def test_a_body_over_the_limit_is_cut_off_while_reading():
    """No Content-Length (chunked), or one that lies: reading stops at the first chunk past the limit."""
    raw = json.dumps({"model": "m", "prompt": "x" * 10_000}).encode()
    body = Body(raw, chunk=1000)
    with pytest.raises(APIError) as e:
        asyncio.run(preparer(max_body_bytes=4000).prepare({**JSON, "content-length": "100"}, body, "completion"))
    assert e.value.status == 413
    assert body.read == 5 < len(body.parts)
    assert run(preparer(max_body_bytes=len(raw)), raw).parsed.prompt == "x" * 10_000  # at the limit: fine


def test_replay_output_tokens_is_refused_unless_the_engine_replays():
    body = {**COMPLETION, "replay_output_tokens": 5}
    assert run(preparer(), body).parsed.replay_output_tokens == 5
    e = refused(preparer(engine="hf"), {**body, "model": "tiny"})
    assert (e.status, e.param, e.code) == (400, "replay_output_tokens", "unsupported")


def test_max_messages_comes_from_the_config():
    messages = [{"role": "user", "content": "a"}] * 3
    assert len(run(preparer(max_messages=3), {"model": "m", "messages": messages}, "chat").parsed.messages) == 3
    e = refused(preparer(max_messages=2), {"model": "m", "messages": messages}, "chat")
    assert (e.status, e.param) == (400, "messages") and "at most 2" in e.message


def test_an_unknown_model_is_a_404():
    e = refused(preparer(engine="hf"), COMPLETION)
    assert (e.status, e.param, e.code) == (404, "model", "model_not_found")


def test_a_template_that_refuses_the_conversation_is_a_400(tokenizer):
    body = {"model": "m", "messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]}
    e = refused(preparer(tokenizer), body, "chat")
    assert (e.status, e.param, e.code) == (400, "messages", "template_error")
    assert "must start with a user or system message" in e.message


def test_a_broken_template_is_the_servers_fault(tokenizer):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, bos_token="<s>", eos_token="</s>")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }"
    e = refused(preparer(tok), {"model": "m", "messages": [{"role": "user", "content": "x"}]}, "chat")
    assert (e.status, e.type, e.code) == (500, "server_error", "template_error")


def test_context_length_and_empty_prompts(tokenizer):
    prep = preparer(tokenizer)
    e = refused(prep, {"model": "m", "prompt": "the quick brown fox " * 40})
    assert (e.status, e.param, e.code) == (400, "prompt", "context_length_exceeded")
    e = refused(prep, {**COMPLETION, "max_tokens": 10**50})
    assert (e.param, e.code) == ("max_tokens", "context_length_exceeded") and "(51 digits)" in e.message
    e = refused(prep, {"model": "m", "prompt": ""})  # this tokenizer adds no BOS: nothing to run
    assert (e.status, e.param, e.code) == (400, "prompt", "invalid_prompt")


def _recording(prep: RequestPreparer, name: str) -> list[str]:
    """Wrap ``prep.<name>`` (parse, or its renderer's render) to record the thread it runs on."""
    threads = []
    owner = prep.renderer if name == "render" else prep
    inner = getattr(owner, name)

    def wrapper(*args):
        threads.append(threading.current_thread().name)
        return inner(*args)

    setattr(owner, name, wrapper)
    return threads


def test_tokenizing_runs_off_the_event_loop(tokenizer):
    prep = preparer(tokenizer)
    rendered_on = _recording(prep, "render")
    run(prep, COMPLETION)
    assert len(rendered_on) == 1 and rendered_on[0].startswith("ssjf-prepare")


def test_the_approximate_counter_and_small_bodies_stay_on_the_loop():
    prep = preparer()
    rendered_on, parsed_on = _recording(prep, "render"), _recording(prep, "parse")
    run(prep, COMPLETION)
    assert rendered_on == parsed_on == [threading.main_thread().name]


def test_a_large_body_is_parsed_off_the_event_loop():
    prep = preparer()
    parsed_on = _recording(prep, "parse")
    run(prep, {"model": "m", "prompt": "x", "user": "y" * INLINE_PARSE_BYTES})
    assert len(parsed_on) == 1 and parsed_on[0].startswith("ssjf-prepare")


# ---- properties: whatever the body, a Prepared or a 4xx -------------------------------------
CONTENT_TYPES = st.sampled_from(["application/json"] * 6 + ["application/json; charset=utf-8", "text/plain", None])


def check_prepare(prep: RequestPreparer, body: dict, kind: str, content_type) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    try:
        got = run(prep, body, kind, headers)
    except APIError as e:
        assert 400 <= e.status < 500, (e.status, e.message)
        event(f"{e.status} {e.code}")
        return
    event("prepared")
    assert isinstance(got, Prepared)
    assert 1 <= got.prompt.num_tokens < CONTEXT and got.max_tokens >= 1
    assert got.prompt.num_tokens + got.max_tokens <= CONTEXT


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                             HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def shared(tokenizer) -> RequestPreparer:
    return preparer(tokenizer)  # one thread pool for all the examples


@PROPERTY
@given(body=chat_bodies, content_type=CONTENT_TYPES)
def test_any_chat_body_is_prepared_or_gets_a_4xx(shared, body, content_type):
    check_prepare(shared, body, "chat", content_type)


@PROPERTY
@given(body=completion_bodies, content_type=CONTENT_TYPES)
def test_any_completion_body_is_prepared_or_gets_a_4xx(shared, body, content_type):
    check_prepare(shared, body, "completion", content_type)
