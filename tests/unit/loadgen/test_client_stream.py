"""The client's parsing and metrics, exactly: a mock transport advances a fake clock per chunk.

Each scripted chunk is ``(seconds before it, SSE text)``; the fake clock moves by those seconds
as the client reads, so TTFT, TPOT, the longest gap and JCT have exact expected values.
"""

from __future__ import annotations

import json

import httpx
import pytest

from loadgen.client import ClientConfig, LoadClient, PlannedRequest, RequestRecord


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def chat_chunk(text=None, finish=None, role=None):
    delta = {}
    if role:
        delta["role"] = role
    if text is not None:
        delta["content"] = text
    return "data: " + json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"


def usage_chunk(tokens):
    return "data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": tokens}}) + "\n\n"


DONE = "data: [DONE]\n\n"


def transport(clock: FakeClock, script, status=200, headers_delay=0.0, seen=None):
    """A mock server: waits ``headers_delay`` (fake seconds), then streams ``script``."""

    async def body():
        for delay, text in script:
            clock.now += delay
            yield text.encode()

    def handler(request: httpx.Request):
        if seen is not None:
            seen.append(json.loads(request.content))
        clock.now += headers_delay
        if status != 200 or isinstance(script, (dict, str)):
            content = script if isinstance(script, str) else json.dumps(script)
            return httpx.Response(status, content=content.encode(), headers={"content-type": "application/json"})
        return httpx.Response(status, content=body(), headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handler)


REQ = PlannedRequest(request_id="r1", scheduled_at=0.0, model="m", messages=({"role": "user", "content": "hi"},),
                     prompt="hi", expected_output_tokens=4)


async def send(script, *, stream=True, endpoint="chat", status=200, headers_delay=0.0, seen=None,
               sent_at=0.0) -> RequestRecord:
    clock = FakeClock()
    clock.now = sent_at
    cfg = ClientConfig(url="http://fake", stream=stream, endpoint=endpoint)
    async with LoadClient(cfg, clock=clock, transport=transport(clock, script, status, headers_delay, seen)) as client:
        return await client.send(REQ, t0=0.0)


async def test_streamed_metrics_are_exact():
    script = [
        (0.0, chat_chunk(role="assistant")),  # role-only opener: not a token
        (0.0, ": keep-alive\n\n"),  # SSE comment: ignored
        (0.5, chat_chunk("Hel")),
        (0.1, chat_chunk("lo")),
        (0.4, chat_chunk(" wor")),
        (0.1, chat_chunk("ld")),
        (0.05, chat_chunk(None, finish="stop")),
        (0.0, usage_chunk(4)),
        (0.0, DONE),
    ]
    rec = await send(script, sent_at=0.25)
    assert rec.status == "ok" and rec.error is None and rec.http_status == 200
    assert rec.sent_at == pytest.approx(0.25)
    assert rec.send_lag_s == pytest.approx(0.25)  # scheduled at 0, sent at 0.25
    assert rec.ttft_s == pytest.approx(0.5)
    assert rec.max_gap_s == pytest.approx(0.4)
    assert rec.tpot_s == pytest.approx((0.1 + 0.4 + 0.1) / 3)
    assert rec.jct_s == pytest.approx(1.15)
    assert rec.num_chunks == 4 and rec.num_output_tokens == 4 and rec.num_output_chars == len("Hello world")
    assert rec.finish_reason == "stop"
    assert rec.expected_output_tokens == 4


async def test_time_before_headers_counts_in_ttft():
    rec = await send([(0.2, chat_chunk("a")), (0.0, chat_chunk(None, finish="length")), (0.0, DONE)], headers_delay=1.0)
    assert rec.ttft_s == pytest.approx(1.2)
    assert rec.num_output_tokens == 1 and rec.tpot_s is None and rec.max_gap_s is None
    assert rec.finish_reason == "length"


async def test_without_usage_tokens_are_counted_chunks():
    script = [(0.1, chat_chunk("a")), (0.1, chat_chunk("b")), (0.1, chat_chunk("c")),
              (0.0, chat_chunk(None, finish="stop")), (0.0, DONE)]
    rec = await send(script)
    assert rec.num_output_tokens == 3
    assert rec.tpot_s == pytest.approx(0.1)


async def test_usage_tokens_win_over_chunks_in_tpot():
    script = [(0.1, chat_chunk("ab")), (0.3, chat_chunk("cd")), (0.0, chat_chunk(None, finish="stop")),
              (0.0, usage_chunk(4)), (0.0, DONE)]
    rec = await send(script)
    assert rec.num_chunks == 2 and rec.num_output_tokens == 4
    assert rec.tpot_s == pytest.approx(0.3 / 3)


async def test_completions_stream_reads_text_and_sends_prompt():
    seen = []
    chunk = lambda t, f=None: "data: " + json.dumps({"choices": [{"text": t, "finish_reason": f}]}) + "\n\n"  # noqa: E731
    rec = await send([(0.2, chunk("x")), (0.2, chunk("y")), (0.0, chunk("", "stop")), (0.0, DONE)],
                     endpoint="completions", seen=seen)
    assert rec.status == "ok" and rec.num_output_tokens == 2 and rec.ttft_s == pytest.approx(0.2)
    assert seen[0]["prompt"] == "hi" and "messages" not in seen[0]


async def test_error_event_mid_stream_is_an_error_with_its_message():
    script = [(0.1, chat_chunk("a")), (0.1, 'data: {"error": {"message": "replica died", "type": "server_error"}}\n\n')]
    rec = await send(script)
    assert rec.status == "error" and "replica died" in rec.error
    assert rec.num_chunks == 1 and rec.jct_s == pytest.approx(0.2)


async def test_stream_that_stops_early_is_an_error():
    rec = await send([(0.1, chat_chunk("a")), (0.1, chat_chunk("b"))])
    assert rec.status == "error" and "before [DONE]" in rec.error
    assert rec.num_chunks == 2


async def test_finish_reason_without_done_is_still_complete():
    rec = await send([(0.1, chat_chunk("a")), (0.1, chat_chunk(None, finish="stop"))])
    assert rec.status == "ok"


async def test_http_error_keeps_status_and_openai_message():
    rec = await send({"error": {"message": "queue full", "type": "rate_limit", "code": 429}}, status=429)
    assert rec.status == "error" and rec.http_status == 429
    assert rec.error == "HTTP 429: queue full"


async def test_http_error_with_plain_text_body():
    rec = await send("upstream crashed", status=502)
    assert rec.status == "error" and rec.error == "HTTP 502: upstream crashed"


async def test_non_streaming_answer():
    seen = []
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "four words of text"},
                           "finish_reason": "stop"}], "usage": {"prompt_tokens": 2, "completion_tokens": 7}}
    rec = await send(answer, stream=False, headers_delay=0.8, seen=seen)
    assert rec.status == "ok" and rec.num_output_tokens == 7 and rec.num_output_chars == len("four words of text")
    assert rec.jct_s == pytest.approx(0.8) and rec.ttft_s is None and rec.tpot_s is None
    assert seen[0]["stream"] is False and "stream_options" not in seen[0]


async def test_non_streaming_answer_without_choices_is_an_error():
    rec = await send({"choices": []}, stream=False)
    assert rec.status == "error" and "no choices" in rec.error


async def test_garbage_in_stream_is_an_error_not_a_crash():
    rec = await send([(0.1, "data: {not json\n\n")])
    assert rec.status == "error" and rec.error.startswith("bad answer")


async def test_api_key_goes_in_the_authorization_header_and_not_into_the_saved_config():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(401, json={"error": {"message": "bad key", "type": "invalid_request_error",
                                                   "param": None, "code": "invalid_api_key"}})

    cfg = ClientConfig(url="http://fake", stream=False, api_key="sk-test-0123456789abcdef")
    async with LoadClient(cfg, transport=httpx.MockTransport(handler)) as client:
        rec = await client.send(REQ, t0=0.0)
    assert seen == ["Bearer sk-test-0123456789abcdef"]
    assert rec.http_status == 401 and "bad key" in rec.error
    assert cfg.to_dict()["api_key"] == "<redacted>" and "sk-test" not in repr(cfg)
    assert ClientConfig(url="http://fake").to_dict()["api_key"] is None
