"""The OpenAI-compatible wire format: request parsing at the edge, response and chunk builders.

Pure Python (no FastAPI, no Ray), so every rule is unit-tested. A caller's mistake raises
:class:`APIError` with an HTTP status and an OpenAI-style body; nothing here ever raises anything
else for bad input. Unknown fields are ignored as OpenAI does, except options we cannot honour
(``n > 1``, ``logprobs``, ``echo``...), which are refused rather than silently dropped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")

# Limits on what a body may hold. Each is far above any real request and caps the work (and the
# stack depth) one request can cost the ingress; ``ingress.max_messages`` and
# ``ingress.max_body_bytes`` are the configurable ones.
MAX_JSON_DEPTH = 64  # nesting of arrays and objects; a chat with text parts needs 5
MAX_MESSAGES = 1024
MAX_STOP = 4  # as OpenAI
MAX_STOP_CHARS = 256
MAX_MODEL_CHARS = 256
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # OpenAI's int64; every engine's seed (torch's) takes it
# replay_remaining_predictions: one per progress point (max_tokens / router.repredict_every_tokens).
MAX_REPLAY_PREDICTIONS = 16384
MAX_REPLAY_PREDICTION = 1e9  # tokens
# Latency objectives (``slo`` body field, ``x-slo-*-ms`` headers): milliseconds from the request's
# arrival, at least 1 ms and at most a day (a longer "objective" constrains nothing).
SLO_FIELDS = ("ttft_ms", "jct_ms")
SLO_HEADERS = {"ttft_ms": "x-slo-ttft-ms", "jct_ms": "x-slo-jct-ms"}
# An SLO under a millisecond cannot be met through any HTTP path; the floor also keeps a subnormal
# float (5e-324 ms) from becoming 0 s when converted, which RequestMeta refuses.
MIN_SLO_MS = 1.0
MAX_SLO_MS = 86_400_000.0
_SLO_HEADER_VALUE = re.compile(r"[0-9]{1,12}(\.[0-9]{1,6})?")


class APIError(Exception):
    """An error answered to the client: ``status`` plus the OpenAI ``{"error": {...}}`` body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class ParsedRequest:
    """A validated completion or chat request."""

    kind: str  # "completion" or "chat"
    model: str
    prompt: str | None = None  # completion
    messages: tuple[ChatMessage, ...] | None = None  # chat
    max_tokens: int | None = None  # None: the endpoint's default
    temperature: float = 1.0
    top_p: float = 1.0
    stream: bool = False
    include_usage: bool = False
    stop: tuple[str, ...] = ()
    seed: int | None = None
    replay_output_tokens: int | None = None  # benchmark-only: read by the replay engine alone
    # Benchmark-only, replay engine alone: the EMULATED remaining length at each progress point (srpt).
    replay_remaining_predictions: tuple[float, ...] | None = None
    # Latency objectives in seconds from arrival (body ``slo`` or ``x-slo-*-ms`` headers); None: none.
    slo_ttft_s: float | None = None
    slo_jct_s: float | None = None

    @property
    def conversation(self) -> str | tuple[ChatMessage, ...]:
        """What the length predictor reads, through the proxy text rule (``proxy_model.text``): the
        prompt, or the chat's messages (the rule renders the history its training data had)."""
        return self.prompt if self.prompt is not None else self.messages


def _no_constant(name: str):
    # json.loads takes NaN and Infinity, which are not JSON (RFC 8259): refuse them as OpenAI does.
    raise ValueError(f"{name} is not valid JSON")


def _deeper_than(value, limit: int) -> bool:
    """Whether arrays/objects nest deeper than ``limit``: an explicit stack, so no recursion, and it
    stops at the first container past the limit."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def parse_json(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> dict:
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        # The C decoder recurses once per level: a body nested ~1000 deep exhausts the stack.
        raise bad_request(f"request body nests arrays/objects deeper than {max_depth} levels",
                          code="invalid_json") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"request body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    if _deeper_than(body, max_depth):
        raise bad_request(f"request body nests arrays/objects deeper than {max_depth} levels", code="invalid_json")
    return body


# ---- field readers: each checks one type and names the field in its message ------------------
def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _check_text(value: str, param: str) -> str:
    """``value`` if it is valid Unicode. JSON's ``\\ud800`` escapes decode to lone surrogates, which no
    tokenizer takes and no response can encode as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise bad_request(f"{param!r} holds a lone surrogate ({value[e.start]!a} at index {e.start}): "
                          "strings must be valid Unicode", param=param, code="invalid_string") from None
    return value


def _str(body: dict, key: str, *, required: bool = False, default=None, max_chars: int | None = None):
    if key not in body or body[key] is None:
        if required:
            raise bad_request(f"missing required field {key!r}", param=key, code="missing_field")
        return default
    value = body[key]
    if not isinstance(value, str):
        raise bad_request(f"{key!r} must be a string, got {_type_name(value)}", param=key, code="invalid_type")
    if max_chars is not None and len(value) > max_chars:
        raise bad_request(f"{key!r} must be at most {max_chars} characters, got {len(value)}", param=key,
                          code="invalid_value")
    return _check_text(value, key)


def _int(body: dict, key: str, *, default=None, minimum: int | None = None, maximum: int | None = None):
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{key!r} must be an integer, got {_type_name(value)}", param=key, code="invalid_type")
    if minimum is not None and value < minimum:
        raise bad_request(f"{key!r} must be >= {minimum}, got {short_int(value)}", param=key, code="invalid_value")
    if maximum is not None and value > maximum:
        raise bad_request(f"{key!r} must be <= {maximum}, got {short_int(value)}", param=key, code="invalid_value")
    return value


def short_int(value: int) -> str:
    # JSON allows integers of up to 4300 digits (Python's limit): do not echo them whole.
    text = str(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} digits)"


def _number(body: dict, key: str, *, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise bad_request(f"{key!r} must be a number, got {_type_name(value)}", param=key, code="invalid_type")
    # Compared before any float(): a huge JSON integer does not fit a float (OverflowError).
    if not low <= value <= high:
        shown = short_int(value) if isinstance(value, int) else value
        raise bad_request(f"{key!r} must be between {low} and {high}, got {shown}", param=key, code="invalid_value")
    return float(value)


def _numbers(body: dict, key: str, *, max_items: int, high: float) -> tuple[float, ...] | None:
    """A list of finite numbers in [0, ``high``] (None when absent)."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > max_items:
        raise bad_request(f"{key!r} must be a list of at most {max_items} numbers", param=key, code="invalid_type")
    for x in value:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or (isinstance(x, float) and not math.isfinite(x)):
            raise bad_request(f"{key!r} must hold numbers only, got {_type_name(x)}", param=key, code="invalid_type")
        if not 0 <= x <= high:
            shown = short_int(x) if isinstance(x, int) else x
            raise bad_request(f"{key!r} values must be between 0 and {high:g}, got {shown}", param=key,
                              code="invalid_value")
    return tuple(float(x) for x in value)


def _bool(body: dict, key: str, default: bool = False) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"{key!r} must be a boolean, got {_type_name(value)}", param=key, code="invalid_type")
    return value


def _stop(body: dict) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value) or len(value) > MAX_STOP:
        raise bad_request(f"'stop' must be a string or a list of up to {MAX_STOP} strings", param="stop",
                          code="invalid_type")
    for s in value:
        if len(s) > MAX_STOP_CHARS:
            raise bad_request(f"each 'stop' string must be at most {MAX_STOP_CHARS} characters, got {len(s)}",
                              param="stop", code="invalid_value")
        _check_text(s, "stop")
    return tuple(s for s in value if s)


def _stream_options(body: dict, stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise bad_request(f"'stream_options' must be an object, got {_type_name(options)}",
                          param="stream_options", code="invalid_type")
    if not stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true", param="stream_options")
    return _bool(options, "include_usage")


def _slo_ms(value, param: str) -> float:
    """One SLO value in milliseconds: a finite number in [MIN_SLO_MS, MAX_SLO_MS]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise bad_request(f"{param!r} must be a number of milliseconds, got {_type_name(value)}", param=param,
                          code="invalid_type")
    if not MIN_SLO_MS <= value <= MAX_SLO_MS:  # compared before float(): a huge integer does not fit one
        shown = short_int(value) if isinstance(value, int) else value
        raise bad_request(f"{param!r} must be >= {MIN_SLO_MS:.0f} and <= {MAX_SLO_MS:.0f} ms, got {shown}", param=param,
                          code="invalid_value")
    return float(value)


def _slo(body: dict) -> dict:
    """The body's ``slo`` object (``{"ttft_ms": .., "jct_ms": ..}``, both optional; null: none) as
    ``slo_ttft_s`` / ``slo_jct_s`` in seconds. An unknown key is refused, not ignored: a client that
    believes it set an objective (a ``tpot_ms``, a typo) would otherwise get none."""
    value = body.get("slo")
    out = {"slo_ttft_s": None, "slo_jct_s": None}
    if value is None:
        return out
    if not isinstance(value, dict):
        raise bad_request(f"'slo' must be an object such as {{\"jct_ms\": 20000}}, got {_type_name(value)}",
                          param="slo", code="invalid_type")
    for key in value:
        if key not in SLO_FIELDS:
            raise bad_request(f"'slo' takes only {list(SLO_FIELDS)}, got {str(key)[:40]!a}", param="slo",
                              code="invalid_value")
    for key in SLO_FIELDS:
        if value.get(key) is not None:
            out[_slo_name(key)] = _slo_ms(value[key], f"slo.{key}") / 1000.0
    return out


def _slo_name(key: str) -> str:
    return "slo_ttft_s" if key == "ttft_ms" else "slo_jct_s"


def _header_values(headers, name: str) -> list[str]:
    """Every value of header ``name``: Starlette's headers list repeats (``getlist``); a plain dict
    (lower-case names) holds one."""
    getlist = getattr(headers, "getlist", None)
    if getlist is not None:
        return list(getlist(name))
    value = headers.get(name)
    return [] if value is None else [value]


def slo_from_headers(headers) -> dict:
    """``x-slo-ttft-ms`` / ``x-slo-jct-ms`` (as llm-d's SLO-aware routing takes them): a plain decimal
    number of milliseconds each, 1 ms to a day (no sign, exponent, NaN or infinity), as ``slo_ttft_s`` /
    ``slo_jct_s`` in seconds (None where absent). A header repeated with different values is a 400."""
    out = {"slo_ttft_s": None, "slo_jct_s": None}
    for key, name in SLO_HEADERS.items():
        values = {v.strip() for v in _header_values(headers, name)}
        if not values:
            continue
        if len(values) > 1:
            raise bad_request(f"the header {name!r} is given more than once with different values", param=name,
                              code="invalid_header")
        text = values.pop()
        if not _SLO_HEADER_VALUE.fullmatch(text):
            raise bad_request(f"the header {name!r} must be a positive number of milliseconds such as 2500, got "
                              f"{text[:40]!a}", param=name, code="invalid_header")
        ms = float(text)
        if not MIN_SLO_MS <= ms <= MAX_SLO_MS:
            raise bad_request(f"the header {name!r} must be >= {MIN_SLO_MS:.0f} and <= {MAX_SLO_MS:.0f} ms, got {text}",
                              param=name, code="invalid_header")
        out[_slo_name(key)] = ms / 1000.0
    return out


def with_header_slo(parsed: ParsedRequest, header_slo: dict) -> ParsedRequest:
    """``parsed`` with the SLOs of :func:`slo_from_headers` added. A header and the body's ``slo`` may
    both give an objective only if they agree: two different objectives for one request is a 400
    (param: the header), since neither can be taken for the one the client meant."""
    changes = {}
    for key, name in SLO_HEADERS.items():
        attr = _slo_name(key)
        from_header, from_body = header_slo.get(attr), getattr(parsed, attr)
        if from_header is None:
            continue
        if from_body is not None and not math.isclose(from_header, from_body, rel_tol=1e-9, abs_tol=1e-9):
            raise bad_request(f"the header {name!r} ({from_header * 1000:g} ms) and the body's 'slo.{key}' "
                              f"({from_body * 1000:g} ms) disagree: give one", param=name, code="slo_conflict")
        changes[attr] = from_header
    return dataclasses.replace(parsed, **changes) if changes else parsed


def _refuse_unsupported(body: dict, kind: str) -> None:
    n = _int(body, "n", default=1)
    if n != 1:
        raise bad_request(f"'n' must be 1 (one choice per request), got {n}", param="n", code="unsupported")
    best_of = _int(body, "best_of", default=1)
    if best_of != 1:
        raise bad_request(f"'best_of' must be 1, got {best_of}", param="best_of", code="unsupported")
    if body.get("logprobs") not in (None, False, 0) or body.get("top_logprobs") not in (None, 0):
        raise bad_request("'logprobs' is not supported", param="logprobs", code="unsupported")
    if kind == "completion" and body.get("echo") not in (None, False):
        raise bad_request("'echo' is not supported", param="echo", code="unsupported")
    if kind == "completion" and body.get("suffix") not in (None, ""):
        raise bad_request("'suffix' is not supported", param="suffix", code="unsupported")
    if kind == "chat" and body.get("tools"):
        raise bad_request("'tools' is not supported", param="tools", code="unsupported")


def _common(body: dict, kind: str) -> dict:
    _refuse_unsupported(body, kind)
    stream = _bool(body, "stream")
    return dict(
        model=_str(body, "model", required=True, max_chars=MAX_MODEL_CHARS),
        temperature=_number(body, "temperature", default=1.0, low=0.0, high=2.0),
        top_p=_number(body, "top_p", default=1.0, low=0.0, high=1.0),
        stream=stream,
        include_usage=_stream_options(body, stream),
        stop=_stop(body),
        seed=_int(body, "seed", minimum=SEED_MIN, maximum=SEED_MAX),
        replay_output_tokens=_int(body, "replay_output_tokens", minimum=0),
        replay_remaining_predictions=_numbers(body, "replay_remaining_predictions", max_items=MAX_REPLAY_PREDICTIONS,
                                              high=MAX_REPLAY_PREDICTION),
        **_slo(body),
    )


def _max_tokens(body: dict, *keys: str) -> int | None:
    for key in keys:
        value = _int(body, key)
        if value is not None:
            if value <= 0:
                raise bad_request(f"{key!r} must be a positive integer, got {value}", param=key, code="invalid_value")
            return value
    return None


def parse_completion(body: dict) -> ParsedRequest:
    """``POST /v1/completions``: ``prompt`` is a string (or a list holding one string)."""
    prompt = body.get("prompt")
    if prompt is None:
        raise bad_request("missing required field 'prompt'", param="prompt", code="missing_field")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        raise bad_request(f"'prompt' must hold exactly one string (batched prompts are not supported), got {len(prompt)}",
                          param="prompt", code="unsupported")
    if not isinstance(prompt, str):
        raise bad_request(f"'prompt' must be a string, got {_type_name(prompt)}", param="prompt", code="invalid_type")
    _check_text(prompt, "prompt")
    return ParsedRequest(kind="completion", prompt=prompt, max_tokens=_max_tokens(body, "max_tokens"),
                         **_common(body, "completion"))


def _content(message: dict, i: int) -> str:
    content = message.get("content")
    param = f"messages[{i}].content"
    if content is None:
        if message.get("role") == "assistant":
            return ""
        raise bad_request(f"missing required field {param!r}", param=param, code="missing_field")
    if isinstance(content, str):
        return _check_text(content, param)
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(f"{param}[{j}] must be a text part {{'type': 'text', 'text': ...}}",
                                  param=param, code="invalid_type")
            parts.append(part["text"])
        return _check_text("".join(parts), param)
    raise bad_request(f"{param!r} must be a string or a list of text parts, got {_type_name(content)}",
                      param=param, code="invalid_type")


def parse_chat(body: dict, max_messages: int = MAX_MESSAGES) -> ParsedRequest:
    """``POST /v1/chat/completions``: ``messages`` is a non-empty list of ``{role, content}``."""
    messages = body.get("messages")
    if messages is None:
        raise bad_request("missing required field 'messages'", param="messages", code="missing_field")
    if not isinstance(messages, list):
        raise bad_request(f"'messages' must be a list, got {_type_name(messages)}", param="messages", code="invalid_type")
    if not messages:
        raise bad_request("'messages' must not be empty", param="messages", code="invalid_value")
    if len(messages) > max_messages:
        raise bad_request(f"'messages' holds {len(messages)} messages; at most {max_messages} are allowed",
                          param="messages", code="invalid_value")
    parsed = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"messages[{i}] must be an object, got {_type_name(message)}",
                              param=f"messages[{i}]", code="invalid_type")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise bad_request(f"messages[{i}].role must be one of {list(CHAT_ROLES)}, got {role!r}",
                              param=f"messages[{i}].role", code="invalid_value")
        parsed.append(ChatMessage(role, _content(message, i)))
    return ParsedRequest(kind="chat", messages=tuple(parsed),
                         max_tokens=_max_tokens(body, "max_completion_tokens", "max_tokens"), **_common(body, "chat"))


# ---- request-body schemas, for the OpenAPI document (clients, API fuzzers) -------------------
# Documentation only: the routes read the raw body and parse it with the functions above, so a bad
# body gets their OpenAI-style 4xx rather than FastAPI's 422. Unknown fields are allowed, as parsed.
_STOP_SCHEMA = {"anyOf": [
    {"type": "string", "maxLength": MAX_STOP_CHARS},
    {"type": "array", "items": {"type": "string", "maxLength": MAX_STOP_CHARS}, "maxItems": MAX_STOP},
    {"type": "null"}]}
_COMMON_PROPERTIES = {
    "model": {"type": "string", "maxLength": MAX_MODEL_CHARS},
    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
    "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    "stream": {"type": ["boolean", "null"]},
    "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": "boolean"}},
                       "description": "Only with stream: true."},
    "stop": _STOP_SCHEMA,
    "seed": {"type": ["integer", "null"], "minimum": SEED_MIN, "maximum": SEED_MAX},
    "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 1},
    "max_tokens": {"type": ["integer", "null"], "minimum": 1},
    "replay_output_tokens": {"type": ["integer", "null"], "minimum": 0,
                             "description": "Benchmark-only, replay engine only: the output length to emit."},
    "replay_remaining_predictions": {
        "type": ["array", "null"], "maxItems": MAX_REPLAY_PREDICTIONS,
        "items": {"type": "number", "minimum": 0, "maximum": MAX_REPLAY_PREDICTION},
        "description": "Benchmark-only, replay engine only (router.policy srpt): the EMULATED re-predicted remaining "
                       "output length at progress points K, 2K, ... (K = router.repredict_every_tokens)."},
    "slo": {
        "type": ["object", "null"], "additionalProperties": False,
        "properties": {key: {"type": ["number", "null"], "minimum": MIN_SLO_MS, "maximum": MAX_SLO_MS}
                       for key in SLO_FIELDS},
        "description": "Latency objectives in milliseconds from arrival (also as headers x-slo-ttft-ms, "
                       "x-slo-jct-ms; both given: they must agree). router.policy slo schedules by them and may "
                       "answer 503 slo_unattainable; other policies only carry them."},
}
COMPLETION_BODY_SCHEMA = {
    "type": "object", "required": ["model", "prompt"],
    "properties": {
        **_COMMON_PROPERTIES,
        "prompt": {"anyOf": [{"type": "string"},
                             {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1}]},
        "echo": {"type": ["boolean", "null"], "enum": [False, None]},
    },
}
_TEXT_PART = {"type": "object", "required": ["type", "text"],
              "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}
CHAT_BODY_SCHEMA = {
    "type": "object", "required": ["model", "messages"],
    "properties": {
        **_COMMON_PROPERTIES,
        "messages": {"type": "array", "minItems": 1, "maxItems": MAX_MESSAGES, "items": {
            "type": "object", "required": ["role", "content"],
            "properties": {"role": {"enum": list(CHAT_ROLES)},
                           "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART},
                                                 {"type": "null"}]}}}},
        "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1},
    },
}


def openapi_body(schema: dict) -> dict:
    """``openapi_extra`` for a route that reads its body itself: the body's schema, JSON only."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


# ---- responses ---------------------------------------------------------------------------
def usage(num_prompt_tokens: int, num_output_tokens: int) -> dict:
    return {"prompt_tokens": num_prompt_tokens, "completion_tokens": num_output_tokens,
            "total_tokens": num_prompt_tokens + num_output_tokens}


def completion_response(req_id: str, model: str, kind: str, text: str, finish_reason: str,
                        num_prompt_tokens: int, num_output_tokens: int, created: int | None = None) -> dict:
    created = int(time.time()) if created is None else created
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish_reason}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    return {"id": req_id, "object": obj, "created": created, "model": model, "choices": [choice],
            "usage": usage(num_prompt_tokens, num_output_tokens)}


def stream_chunk(req_id: str, model: str, kind: str, created: int, *, text: str | None = None,
                 finish_reason: str | None = None, role: bool = False, usage_dict: dict | None = None,
                 no_choices: bool = False) -> dict:
    """One SSE payload. ``role`` opens a chat stream; ``no_choices`` is the trailing usage chunk."""
    if kind == "chat":
        obj = "chat.completion.chunk"
        delta: dict = {}
        if role:
            delta["role"] = "assistant"
            delta["content"] = ""
        if text is not None:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    else:
        obj = "text_completion"
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
    chunk = {"id": req_id, "object": obj, "created": created, "model": model,
             "choices": [] if no_choices else [choice]}
    if usage_dict is not None:
        chunk["usage"] = usage_dict
    return chunk


def sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


SSE_DONE = sse("[DONE]")


class StopMatcher:
    """Cuts a text stream at the first stop string, holding back a tail that may start one."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Returns the text that is safe to emit now; sets ``stopped`` when a stop string appears."""
        if not self.stops:
            return text
        if self.stopped:
            return ""
        buf = self._pending + text
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return buf[:cut]
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        self._pending = buf[len(buf) - hold:] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return "" if self.stopped else out
