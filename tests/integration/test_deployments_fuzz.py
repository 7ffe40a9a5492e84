"""The live HTTP API under bad input (replay engine): the bodies that once answered a plain-text 500
each get their 4xx with an OpenAI-style body and are counted in ``ssjf_requests_total``; then
schemathesis generates requests from the app's own /openapi.json (valid and invalid bodies for both
POST routes, and the GET routes) and none may get a 5xx. scripts/fuzz_api.sh runs the long version."""

import re

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.integration.conftest import make_replay_config

pytestmark = pytest.mark.integration

MAX_BODY = 64 * 1024
MAX_MESSAGES = 8


@pytest.fixture(scope="module")
def fuzz_app(deploy_module):
    # A small context and a fast emulated engine: a generated max_tokens never means a long answer.
    return deploy_module(make_replay_config(
        "fuzz", llm={"context_length": 256, "time_scale": 0.001},
        ingress={"max_body_bytes": MAX_BODY, "max_messages": MAX_MESSAGES, "metrics_push_s": 0.2}))


@pytest.fixture(scope="module")
def http(fuzz_app):
    with httpx.Client(base_url=fuzz_app.url, timeout=60) as client:
        yield client


def counter(text: str, endpoint: str, status: str) -> float:
    m = re.search(rf'^ssjf_requests_total{{endpoint="{endpoint}",status="{status}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


JSON = "application/json"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
# (path, content type, raw body, status, code): each of these answered a plain-text 500 (or was
# accepted when it should not be) before the edge checked it.
BAD = [
    (COMPLETIONS, JSON, b'{"model": "m", "prompt": "x", "user": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", 400,
     "invalid_json"),
    (COMPLETIONS, JSON, b'{"model": "m", "prompt": "a\\ud800b"}', 400, "invalid_string"),
    (COMPLETIONS, JSON, b'{"model": "m\\udfff", "prompt": "x"}', 400, "invalid_string"),
    (CHAT, JSON, b'{"model": "m", "messages": [{"role": "user", "content": "\\udc00"}]}', 400, "invalid_string"),
    (COMPLETIONS, JSON, b'{"model": "m", "prompt": "x", "seed": 1e20}', 400, "invalid_value"),
    (COMPLETIONS, JSON, b'{"model": "m", "prompt": "x", "temperature": 1' + b"0" * 400 + b"}", 400, "invalid_value"),
    (COMPLETIONS, JSON, b'{"model": "m", "prompt": "x", "top_p": NaN}', 400, "invalid_json"),
    (COMPLETIONS, "text/plain", b'{"model": "m", "prompt": "x"}', 415, "unsupported_media_type"),
    (CHAT, "application/x-www-form-urlencoded", b"model=m", 415, "unsupported_media_type"),
    (COMPLETIONS, JSON, b'{"model": "m", "prompt": "' + b"x" * MAX_BODY + b'"}', 413, "request_too_large"),
    (CHAT, JSON, b'{"model": "m", "messages": [' + b", ".join([b'{"role": "user", "content": "x"}'] * 9) + b"]}",
     400, "invalid_value"),
]


def test_what_once_got_a_500_gets_its_4xx_and_is_counted(http, wait):
    before = http.get("/metrics").text
    want: dict[tuple[str, str], int] = {}
    for path, content_type, raw, status, code in BAD:
        r = http.post(path, content=raw, headers={"content-type": content_type})
        assert r.status_code == status, (path, raw[:80], r.status_code, r.text[:300])
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == code and error["message"]
        key = ("chat" if path == CHAT else "completions", str(status))
        want[key] = want.get(key, 0) + 1

    def counted():
        text = http.get("/metrics").text
        return all(counter(text, *key) - counter(before, *key) >= n for key, n in want.items())

    wait(counted, timeout=30, interval=0.2, what=f"/metrics to count {want}")
    ok = http.post(COMPLETIONS, json={"model": "m", "prompt": "still serving", "max_tokens": 3})
    assert ok.status_code == 200, ok.text


def test_the_post_routes_document_their_bodies(http):
    spec = http.get("/openapi.json").json()
    for path, required in ((COMPLETIONS, ["model", "prompt"]), (CHAT, ["model", "messages"])):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["required"] == required and "max_tokens" in body["properties"]


@pytest.fixture(scope="module")
def api_schema(fuzz_app):
    return schemathesis.openapi.from_url(f"{fuzz_app.url}/openapi.json")


def test_no_generated_request_gets_a_5xx(api_schema, fuzz_app, http):
    """100 requests generated from the OpenAPI schemas of both POST routes, valid and invalid
    bodies (schemathesis's positive and negative modes); then each GET route."""
    strategy = st.one_of(*(api_schema[path]["POST"].as_strategy(mode)
                           for path in (COMPLETIONS, CHAT) for mode in (GenerationMode.POSITIVE,
                                                                          GenerationMode.NEGATIVE)))
    statuses: list[int] = []

    @settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def no_5xx(case):
        response = case.call(base_url=fuzz_app.url, timeout=60)
        statuses.append(response.status_code)
        assert response.status_code < 500, (case.path, case.body, response.status_code, response.text[:500])

    no_5xx()
    assert len(statuses) >= 50, statuses  # hypothesis may stop early only if it runs out of new cases
    assert any(s == 200 for s in statuses) and any(400 <= s < 500 for s in statuses), sorted(set(statuses))
    for path in ("/v1/models", "/healthz", "/metrics"):
        assert http.get(path).status_code == 200
