"""The OpenAI-compatible API of a real cluster (tiny hf model, continuous batching, 2 replicas):
completions and chat, streamed and not, over HTTP and through the official ``openai`` client;
every bad input gets its 4xx with an OpenAI-style body, and the cluster keeps serving."""

import json

import httpx
import openai
import pytest

pytestmark = pytest.mark.integration

MODEL = "tiny"


@pytest.fixture(scope="module")
def api_app(deploy_module, tiny_model_dir):
    return deploy_module({
        "name": "api",
        "router": {"policy": "ssjf"},
        "proxy": {"predictor": "heuristic", "num_cpus": 0},
        "llm": {"engine": "hf", "model": tiny_model_dir, "served_models": [MODEL], "num_replicas": 2,
                "batching": "continuous", "max_batch": 2, "kv_pages": 32, "cb_page_size": 32,
                "max_batch_tokens": 256, "num_cpus": 0, "torch_threads": 1, "heartbeat_s": 0.5},
        "ingress": {"num_cpus": 0},
    })


@pytest.fixture(scope="module")
def http(api_app):
    with httpx.Client(base_url=api_app.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def oai(api_app):
    return openai.OpenAI(base_url=f"{api_app.url}/v1", api_key="unused", max_retries=0, timeout=60)


def sse_events(text: str) -> list:
    events = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_models_health_and_metrics(http):
    models = http.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL] and models["data"][0]["engine"] == "hf"
    health = http.get("/healthz")
    assert health.status_code == 200 and health.json()["num_replicas"] == 2
    assert http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2}).status_code == 200
    metrics = http.get("/metrics")
    assert metrics.status_code == 200
    assert 'ssjf_requests_total{endpoint="completions",status="200"}' in metrics.text
    assert "ssjf_router_replicas 2.0" in metrics.text


def test_completion_stream_and_not_agree(http):
    body = {"model": MODEL, "prompt": "the quick brown fox", "max_tokens": 12, "temperature": 0}
    plain = http.post("/v1/completions", json=body)
    assert plain.status_code == 200, plain.text
    answer = plain.json()
    assert answer["object"] == "text_completion" and answer["model"] == MODEL
    choice = answer["choices"][0]
    assert choice["finish_reason"] in ("length", "stop")
    n = answer["usage"]["completion_tokens"]
    assert 1 <= n <= 12 and answer["usage"]["prompt_tokens"] > 0
    assert (choice["finish_reason"] == "length") == (n == 12)
    # Greedy decoding through the whole stack is deterministic, whichever replica serves it.
    assert http.post("/v1/completions", json=body).json()["choices"][0]["text"] == choice["text"]

    streamed = http.post("/v1/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}})
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    events = sse_events(streamed.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == choice["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == choice["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == n


def test_chat_stream_and_not(http):
    body = {"model": MODEL, "messages": [{"role": "system", "content": "be brief"},
                                         {"role": "user", "content": "what is the capital of france?"}],
            "max_tokens": 10, "temperature": 0}
    plain = http.post("/v1/chat/completions", json=body)
    assert plain.status_code == 200, plain.text
    answer = plain.json()
    assert answer["object"] == "chat.completion"
    message = answer["choices"][0]["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str)
    assert 1 <= answer["usage"]["completion_tokens"] <= 10

    events = sse_events(http.post("/v1/chat/completions", json={**body, "stream": True}).text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == message["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == answer["choices"][0]["finish_reason"]


def test_stop_string_cuts_the_answer(http):
    body = {"model": MODEL, "prompt": "hello world", "max_tokens": 16, "temperature": 0}
    full = http.post("/v1/completions", json=body).json()["choices"][0]["text"]
    if len(full) < 4:
        pytest.skip(f"the random model's greedy answer is too short to cut: {full!r}")
    stop = full[len(full) // 2: len(full) // 2 + 2]
    cut = http.post("/v1/completions", json={**body, "stop": [stop]}).json()["choices"][0]
    assert cut["text"] == full[: full.index(stop)] and cut["finish_reason"] == "stop"


def test_openai_client_completions_and_chat(oai):
    completion = oai.completions.create(model=MODEL, prompt="ray serve routes", max_tokens=6, temperature=0)
    assert completion.choices[0].finish_reason in ("length", "stop")
    assert 1 <= completion.usage.completion_tokens <= 6
    streamed = "".join(chunk.choices[0].text for chunk in oai.completions.create(
        model=MODEL, prompt="ray serve routes", max_tokens=6, temperature=0, stream=True) if chunk.choices)
    assert streamed == completion.choices[0].text

    chat = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}],
                                       max_tokens=6, temperature=0)
    assert chat.choices[0].message.role == "assistant"
    pieces = [chunk.choices[0].delta.content or "" for chunk in oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=6, temperature=0,
        stream=True, stream_options={"include_usage": True}) if chunk.choices]
    assert "".join(pieces) == chat.choices[0].message.content


def test_openai_client_sees_typed_errors(oai):
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="no-such-model", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=0)
    assert e.value.body["param"] == "max_tokens"


LONG = "the quick brown fox jumps over the lazy dog " * 80  # > 512 tokens: the tiny model's context


@pytest.mark.parametrize("path, raw, status, code", [
    ("/v1/completions", b'{"model": "tiny", "prompt": ', 400, "invalid_json"),
    ("/v1/chat/completions", b"not json at all", 400, "invalid_json"),
    ("/v1/completions", b'["a list"]', 400, "invalid_json"),
    ("/v1/completions", {"prompt": "x"}, 400, "missing_field"),
    ("/v1/completions", {"model": MODEL}, 400, "missing_field"),
    ("/v1/chat/completions", {"model": MODEL}, 400, "missing_field"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user"}]}, 400, "missing_field"),
    ("/v1/completions", {"model": 5, "prompt": "x"}, 400, "invalid_type"),
    ("/v1/completions", {"model": MODEL, "prompt": {"text": "x"}}, 400, "invalid_type"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": "8"}, 400, "invalid_type"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stream": "true"}, 400, "invalid_type"),
    ("/v1/chat/completions", {"model": MODEL, "messages": "hello"}, 400, "invalid_type"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": 1}]}, 400, "invalid_type"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": "hot"}, 400, "invalid_type"),
    ("/v1/completions", {"model": "gpt-9", "prompt": "x"}, 404, "model_not_found"),
    ("/v1/chat/completions", {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}, 404, "model_not_found"),
    ("/v1/completions", {"model": MODEL, "prompt": LONG}, 400, "context_length_exceeded"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": LONG}]}, 400,
     "context_length_exceeded"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 100_000}, 400, "context_length_exceeded"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "invalid_value"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": -3}, 400, "invalid_value"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400,
     "invalid_value"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "n": 3}, 400, "unsupported"),
])
def test_bad_input_gets_its_4xx(http, path, raw, status, code):
    if isinstance(raw, bytes):
        r = http.post(path, content=raw, headers={"content-type": "application/json"})
    else:
        r = http.post(path, json=raw)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code and error["message"]


def test_unknown_routes_and_methods_answer_json(http):
    r = http.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = http.get("/v1/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_still_serving_after_bad_input(http, api_app):
    for _ in range(3):
        http.post("/v1/completions", content=b"{broken", headers={"content-type": "application/json"})
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "ok?"}],
                                                  "max_tokens": 3})
    assert r.status_code == 200
    snap = api_app.snapshot()
    assert len(snap["replicas"]) == 2 and snap["num_running"] == 0 and snap["num_queued"] == 0
