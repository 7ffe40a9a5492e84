"""Property tests of the edge: for any JSON-ish body (nested values, strings with lone surrogates,
huge integers, NaN and infinities, wrong types in every field) parsing either gives a request that
every later step can use, or an :class:`APIError` with a 4xx; nothing else escapes."""

import json
import math

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from deployments.protocol import (
    MAX_MODEL_CHARS,
    MAX_STOP,
    MAX_STOP_CHARS,
    SEED_MAX,
    SEED_MIN,
    APIError,
    ParsedRequest,
    completion_response,
    parse_chat,
    parse_completion,
    parse_json,
)
from tests.unit.deployments.bodies import chat_bodies, completion_bodies, json_values

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_outcome(parse, body) -> ParsedRequest | None:
    """``parse(body)``: a usable request, or an APIError with a 4xx and a JSON body naming it."""
    try:
        req = parse(body)
    except APIError as e:
        assert 400 <= e.status < 500, (e.status, e.message)
        encoded = json.dumps(e.body(), ensure_ascii=False).encode("utf-8")  # what JSONResponse sends
        assert json.loads(encoded)["error"]["message"] == e.message
        event(f"{e.status} {e.code} {e.param}")
        return None
    event("parsed")
    assert isinstance(req, ParsedRequest)
    # Every string a later step reads is valid Unicode (tokenizers, and responses in UTF-8).
    texts_in = [req.model, *req.stop, req.prompt or ""] + [m.content for m in req.messages or ()]
    assert all(_encodable(t) for t in texts_in)
    assert len(req.model) <= MAX_MODEL_CHARS
    assert len(req.stop) <= MAX_STOP and all(len(s) <= MAX_STOP_CHARS for s in req.stop)
    assert req.seed is None or SEED_MIN <= req.seed <= SEED_MAX
    assert req.max_tokens is None or req.max_tokens >= 1
    assert math.isfinite(req.temperature) and math.isfinite(req.top_p)
    assert req.replay_output_tokens is None or req.replay_output_tokens >= 0
    # An SLO is what RequestMeta takes: None or a positive finite number of seconds.
    assert all(v is None or (math.isfinite(v) and v > 0) for v in (req.slo_ttft_s, req.slo_jct_s))
    # The answer that echoes the model name can be sent.
    json.dumps(completion_response("id", req.model, req.kind, "text", "stop", 1, 1), ensure_ascii=False).encode()
    return req


# The bodies that answered 500 before these rules, kept as fixed examples.
@SETTINGS
@given(completion_bodies)
@example({"model": "m", "prompt": "a\ud800b"})  # the tokenizer raised TypeError
@example({"model": "m\udfff", "prompt": "x"})  # the response could not be encoded
@example({"model": "m", "prompt": "x", "stop": ["\ud800"]})
@example({"model": "m", "prompt": "x", "seed": 1e20})  # torch.manual_seed failed a whole static batch
@example({"model": "m", "prompt": "x", "temperature": 10**400})  # OverflowError in math.isfinite
def test_any_completion_body_parses_or_gets_a_4xx(body):
    check_outcome(parse_completion, body)


@SETTINGS
@given(chat_bodies)
@example({"model": "m", "messages": [{"role": "user", "content": "\ud800"}]})
@example({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}]})
def test_any_chat_body_parses_or_gets_a_4xx(body):
    check_outcome(parse_chat, body)


@SETTINGS
@given(json_values)
def test_any_json_value_as_the_whole_body_gets_a_4xx_or_parses(value):
    raw = json.dumps(value).encode()  # NaN and Infinity come out as the non-JSON words
    for parse in (parse_completion, parse_chat):
        try:
            body = parse_json(raw)
        except APIError as e:
            assert e.status == 400 and e.code == "invalid_json"
            continue
        check_outcome(parse, body)


@SETTINGS
@given(st.binary(max_size=64))
def test_any_bytes_get_a_400_or_an_object(raw):
    try:
        assert isinstance(parse_json(raw), dict)
    except APIError as e:
        assert e.status == 400 and e.code == "invalid_json"


@SETTINGS
@given(st.integers(min_value=1, max_value=200_000), st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
def test_any_nesting_depth_gets_a_400_or_parses(depth, brackets):
    open_, close = brackets
    raw = b'{"model": "m", "prompt": "x", "user": ' + open_ * depth + b"1" + close * depth + b"}"
    try:
        body = parse_json(raw)
    except APIError as e:
        assert e.status == 400 and e.code == "invalid_json" and depth > 60
        return
    assert depth < 64
    check_outcome(parse_completion, body)
