"""A request's latency objectives at the edge (issue 14 item 4): the ``x-slo-ttft-ms`` / ``x-slo-jct-ms``
headers and the body's ``slo`` object, both endpoints, in seconds on the parsed request; every bad
value a 400 naming the header or field; a header and a body that disagree refused; and the headers
never mistaken for the Serve hint headers the ingress refuses."""

import asyncio
import json

import pytest
from starlette.datastructures import Headers

from deployments.auth import SERVE_HINT_HEADERS, refuse_serve_hints
from deployments.config import AppConfig
from deployments.prepare import RequestPreparer
from deployments.prompts import PromptRenderer
from deployments.protocol import (
    MAX_SLO_MS,
    SLO_HEADERS,
    APIError,
    parse_chat,
    parse_completion,
    slo_from_headers,
)

JSON = {"content-type": "application/json"}
COMPLETION = {"model": "m", "prompt": "hello world"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


def prepare(body: dict, kind: str = "completion", headers: dict | None = None):
    cfg = AppConfig.from_dict({"llm": {"engine": "replay"}})
    prep = RequestPreparer(cfg, PromptRenderer(None, 8192))

    async def chunks():
        yield json.dumps(body).encode()

    return asyncio.run(prep.prepare({**JSON, **(headers or {})}, chunks(), kind)).parsed


def refused(body: dict, kind: str = "completion", headers: dict | None = None) -> APIError:
    with pytest.raises(APIError) as e:
        prepare(body, kind, headers)
    assert e.value.status == 400
    assert set(e.value.body()["error"]) == {"message", "type", "param", "code"}
    return e.value


@pytest.mark.parametrize("kind, body", [("completion", COMPLETION), ("chat", CHAT)])
def test_headers_and_body_field_set_the_objectives_in_seconds(kind, body):
    parsed = prepare(body, kind, {"x-slo-ttft-ms": "250", "x-slo-jct-ms": "20000.5"})
    assert (parsed.slo_ttft_s, parsed.slo_jct_s) == (0.25, 20.0005)
    parsed = prepare({**body, "slo": {"ttft_ms": 1500, "jct_ms": 30000.0}}, kind)
    assert (parsed.slo_ttft_s, parsed.slo_jct_s) == (1.5, 30.0)
    only_jct = prepare({**body, "slo": {"jct_ms": 800}}, kind)
    assert (only_jct.slo_ttft_s, only_jct.slo_jct_s) == (None, 0.8)
    none = prepare(body, kind)
    assert (none.slo_ttft_s, none.slo_jct_s) == (None, None)
    assert prepare({**body, "slo": None}, kind).slo_jct_s is None
    assert prepare({**body, "slo": {}}, kind).slo_jct_s is None


def test_header_and_body_combine_and_must_agree():
    # One from each: both kept.
    parsed = prepare({**COMPLETION, "slo": {"ttft_ms": 100}}, headers={"x-slo-jct-ms": "5000"})
    assert (parsed.slo_ttft_s, parsed.slo_jct_s) == (0.1, 5.0)
    # The same objective twice, equal: fine.
    assert prepare({**COMPLETION, "slo": {"jct_ms": 5000}}, headers={"x-slo-jct-ms": "5000.0"}).slo_jct_s == 5.0
    # Different: neither can be taken for the one meant.
    e = refused({**COMPLETION, "slo": {"jct_ms": 4000}}, headers={"x-slo-jct-ms": "5000"})
    assert (e.param, e.code) == ("x-slo-jct-ms", "slo_conflict")
    assert "slo.jct_ms" in e.message


@pytest.mark.parametrize("value", ["0", "-5", "+5", "1e3", "nan", "inf", "Infinity", "0x10", "", "12 ms", "1,000",
                                   "5.", ".5", "1" * 13, f"{MAX_SLO_MS + 1:.0f}", "0.0",
                                   "0.5", "0.000001"])
@pytest.mark.parametrize("name", sorted(SLO_HEADERS.values()))
def test_a_bad_header_value_is_a_400_naming_the_header(name, value):
    e = refused(COMPLETION, headers={name: value})
    assert (e.param, e.code) == (name, "invalid_header")


def test_a_header_is_checked_before_the_body_is_read():
    cfg = AppConfig.from_dict({"llm": {"engine": "replay"}})
    prep = RequestPreparer(cfg, PromptRenderer(None, 8192))
    read = []

    async def chunks():
        read.append(True)
        yield json.dumps(COMPLETION).encode()

    with pytest.raises(APIError) as e:
        asyncio.run(prep.prepare({**JSON, "x-slo-ttft-ms": "soon"}, chunks(), "completion"))
    assert e.value.param == "x-slo-ttft-ms" and not read


def test_repeated_headers_must_agree():
    same = Headers(raw=[(b"x-slo-jct-ms", b"300"), (b"x-slo-jct-ms", b"300")])
    assert slo_from_headers(same) == {"slo_ttft_s": None, "slo_jct_s": 0.3}
    different = Headers(raw=[(b"x-slo-jct-ms", b"300"), (b"x-slo-jct-ms", b"400")])
    with pytest.raises(APIError) as e:
        slo_from_headers(different)
    assert (e.value.status, e.value.param) == (400, "x-slo-jct-ms")
    # Starlette's headers are case-insensitive, as HTTP's (ASGI hands them over lower-cased).
    assert slo_from_headers(Headers(headers={"X-SLO-TTFT-MS": " 42 "})) == {"slo_ttft_s": 0.042, "slo_jct_s": None}


@pytest.mark.parametrize("slo, param, code", [
    ("fast", "slo", "invalid_type"),
    ([1000], "slo", "invalid_type"),
    ({"tpot_ms": 50}, "slo", "invalid_value"),  # not silently ignored: the client would think it set one
    ({"jct_ms": 0}, "slo.jct_ms", "invalid_value"),
    ({"jct_ms": -1}, "slo.jct_ms", "invalid_value"),
    ({"ttft_ms": "100"}, "slo.ttft_ms", "invalid_type"),
    ({"ttft_ms": True}, "slo.ttft_ms", "invalid_type"),
    ({"jct_ms": 10**400}, "slo.jct_ms", "invalid_value"),
    ({"jct_ms": MAX_SLO_MS * 2}, "slo.jct_ms", "invalid_value"),
    ({"jct_ms": 5e-324}, "slo.jct_ms", "invalid_value"),  # the fuzzer's: it became 0 s and a 500
    ({"ttft_ms": 0.5}, "slo.ttft_ms", "invalid_value"),
])
@pytest.mark.parametrize("parse, base", [(parse_completion, COMPLETION), (parse_chat, CHAT)])
def test_a_bad_body_slo_is_a_400_naming_the_field(parse, base, slo, param, code):
    with pytest.raises(APIError) as e:
        parse({**base, "slo": slo})
    assert (e.value.status, e.value.param, e.value.code) == (400, param, code)


def test_a_nan_slo_is_refused_as_json_first():
    # json.loads would take NaN; the edge refuses it before any field is read.
    e = refused({**COMPLETION, "slo": {"jct_ms": float("nan")}})
    assert e.code == "invalid_json"


def test_slo_headers_are_not_serve_hint_headers():
    """The ingress refuses Serve's proxy hint headers (they change how Serve times out or cancels a
    request); the SLO headers must pass that check."""
    assert not set(SLO_HEADERS.values()) & set(SERVE_HINT_HEADERS)
    refuse_serve_hints(Headers(headers={"x-slo-ttft-ms": "100", "x-slo-jct-ms": "2000"}))  # no APIError
