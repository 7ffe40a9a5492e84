"""The OpenAI wire format at the edge: what is accepted, what gets which 4xx, what answers look like."""

import json

import pytest

from deployments.protocol import (
    APIError,
    StopMatcher,
    completion_response,
    parse_chat,
    parse_completion,
    parse_json,
    sse,
    stream_chunk,
)


def test_parse_json_rejects_malformed_and_non_objects():
    with pytest.raises(APIError) as e:
        parse_json(b'{"model": ')
    assert e.value.status == 400 and e.value.code == "invalid_json"
    with pytest.raises(APIError) as e:
        parse_json(b"[1, 2]")
    assert "JSON object" in e.value.message
    with pytest.raises(APIError):
        parse_json(b"\xff\xfe")
    assert parse_json(b'{"a": 1}') == {"a": 1}


def test_parse_json_limits_nesting_and_refuses_non_json_numbers():
    deep = b'{"user": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # json.loads: RecursionError
    for raw in (deep, b'{"a": ' + b"[" * 64 + b"]" * 64 + b"}", b'{"a": ' + b'{"b": ' * 64 + b"1" + b"}" * 65):
        with pytest.raises(APIError) as e:
            parse_json(raw)
        assert (e.value.status, e.value.code) == (400, "invalid_json") and "deeper than 64" in e.value.message
    assert parse_json(b'{"a": ' + b"[" * 63 + b"]" * 63 + b"}")  # 64 levels with the body itself
    for word in (b"NaN", b"Infinity", b"-Infinity"):
        with pytest.raises(APIError) as e:
            parse_json(b'{"temperature": ' + word + b"}")
        assert e.value.code == "invalid_json"
    with pytest.raises(APIError):
        parse_json(b'{"seed": ' + b"9" * 5000 + b"}")  # past Python's 4300-digit limit


def test_seed_takes_the_int64_range():
    for seed in (-(2**63), 0, 2**63 - 1, 7.0):
        assert parse_completion({"model": "m", "prompt": "x", "seed": seed}).seed == int(seed)


def test_a_surrogate_pair_is_fine_and_a_lone_one_is_named():
    assert parse_completion(parse_json(b'{"model": "m", "prompt": "\\ud83d\\ude00"}')).prompt == "\U0001F600"
    with pytest.raises(APIError) as e:
        parse_completion(parse_json(b'{"model": "m", "prompt": "ab\\ud83d"}'))
    assert (e.value.param, e.value.code) == ("prompt", "invalid_string") and "index 2" in e.value.message


def test_completion_defaults_and_fields():
    req = parse_completion({"model": "m", "prompt": "hi", "max_tokens": 7, "temperature": 0, "stream": True,
                            "stream_options": {"include_usage": True}, "stop": "\n", "replay_output_tokens": 3,
                            "user": "ignored", "frequency_penalty": 0})
    assert (req.kind, req.model, req.prompt, req.max_tokens) == ("completion", "m", "hi", 7)
    assert req.temperature == 0.0 and req.stream and req.include_usage
    assert req.stop == ("\n",) and req.replay_output_tokens == 3
    assert parse_completion({"model": "m", "prompt": ["one"]}).prompt == "one"
    assert parse_completion({"model": "m", "prompt": "x"}).max_tokens is None
    assert parse_completion({"model": "m", "prompt": "x", "max_tokens": 5.0}).max_tokens == 5


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x"}, "model"),
    ({"model": "m"}, "prompt"),
    ({"model": 3, "prompt": "x"}, "model"),
    ({"model": "m", "prompt": 5}, "prompt"),
    ({"model": "m", "prompt": ["a", "b"]}, "prompt"),
    ({"model": "m", "prompt": "x", "max_tokens": "10"}, "max_tokens"),
    ({"model": "m", "prompt": "x", "max_tokens": True}, "max_tokens"),
    ({"model": "m", "prompt": "x", "max_tokens": 1.5}, "max_tokens"),
    ({"model": "m", "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"model": "m", "prompt": "x", "max_tokens": -5}, "max_tokens"),
    ({"model": "m", "prompt": "x", "stream": "yes"}, "stream"),
    ({"model": "m", "prompt": "x", "temperature": "hot"}, "temperature"),
    ({"model": "m", "prompt": "x", "temperature": 3}, "temperature"),
    ({"model": "m", "prompt": "x", "top_p": 1.5}, "top_p"),
    ({"model": "m", "prompt": "x", "n": 2}, "n"),
    ({"model": "m", "prompt": "x", "logprobs": 2}, "logprobs"),
    ({"model": "m", "prompt": "x", "echo": True}, "echo"),
    ({"model": "m", "prompt": "x", "stop": 5}, "stop"),
    ({"model": "m", "prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": "m", "prompt": "x", "replay_output_tokens": -1}, "replay_output_tokens"),
    # Limits, and what once escaped as a 500.
    ({"model": "m" * 257, "prompt": "x"}, "model"),
    ({"model": "m\ud800", "prompt": "x"}, "model"),
    ({"model": "m", "prompt": "a\udfffb"}, "prompt"),
    ({"model": "m", "prompt": ["a\ud800"]}, "prompt"),
    ({"model": "m", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": "m", "prompt": "x", "stop": "s" * 257}, "stop"),
    ({"model": "m", "prompt": "x", "stop": ["ok", "\ud800"]}, "stop"),
    ({"model": "m", "prompt": "x", "seed": 1e20}, "seed"),
    ({"model": "m", "prompt": "x", "seed": 2**63}, "seed"),
    ({"model": "m", "prompt": "x", "seed": -(2**63) - 1}, "seed"),
    ({"model": "m", "prompt": "x", "temperature": 10**400}, "temperature"),
    ({"model": "m", "prompt": "x", "top_p": -(10**400)}, "top_p"),
])
def test_completion_bad_input_names_the_field(body, param):
    with pytest.raises(APIError) as e:
        parse_completion(body)
    assert e.value.status == 400
    assert e.value.param == param
    body = e.value.body()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["type"] == "invalid_request_error"


def test_chat_messages_and_content_parts():
    req = parse_chat({"model": "m", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "last"},
    ], "max_completion_tokens": 9})
    assert [m.role for m in req.messages] == ["system", "user", "assistant", "user"]
    assert req.messages[1].content == "hello there" and req.messages[2].content == ""
    assert req.max_tokens == 9
    assert req.conversation == req.messages  # the predictor renders the whole chat by the proxy text rule


@pytest.mark.parametrize("body, param", [
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": "hi"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": ["hi"]}, "messages[0]"),
    ({"model": "m", "messages": [{"content": "hi"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "m", "messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}]},
     "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}] * 1025}, "messages"),
])
def test_chat_bad_input_names_the_field(body, param):
    with pytest.raises(APIError) as e:
        parse_chat(body)
    assert e.value.status == 400 and e.value.param == param


def test_response_shapes():
    body = completion_response("cmpl-1", "m", "completion", "abc", "length", 3, 2, created=5)
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == "abc"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    chat = completion_response("c-1", "m", "chat", "hi", "stop", 1, 1)
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
    first = stream_chunk("c-1", "m", "chat", 5, role=True)
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    last = stream_chunk("c-1", "m", "chat", 5, usage_dict={"total_tokens": 2}, no_choices=True)
    assert last["choices"] == [] and last["usage"] == {"total_tokens": 2}
    assert sse({"a": 1}) == b'data: {"a":1}\n\n'
    assert json.loads(sse(stream_chunk("x", "m", "completion", 1, text="t"))[6:])["choices"][0]["text"] == "t"


def test_stop_matcher_cuts_across_chunk_boundaries():
    m = StopMatcher(("END",))
    assert m.feed("hello E") == "hello "  # "E" may start the stop string: held back
    assert m.feed("N") == ""
    assert m.feed("D and more") == ""
    assert m.stopped
    m = StopMatcher(("END",))
    assert m.feed("hello E") == "hello "
    assert m.feed("xit") == "Exit"
    assert m.flush() == "" and not m.stopped
    m = StopMatcher(("\n\n", "STOP"))
    assert m.feed("a\n") == "a"
    assert m.flush() == "\n"
    assert StopMatcher(()).feed("anything") == "anything"
