"""The ingress's first step for one request: from HTTP headers and body bytes to a validated request
whose prompt is rendered and counted, or an :class:`~deployments.protocol.APIError` (a 4xx with an
OpenAI-style body) that says what was wrong.

The cheap checks come first and run on the event loop: the Content-Type (415), the body size from
Content-Length (413), the SLO headers (``x-slo-ttft-ms``, ``x-slo-jct-ms``: 400), the body size while
reading (413), the JSON and its fields (400; the body's ``slo`` must agree with the headers), the
model (404), options the engine cannot honour. The expensive part (chat template and tokenizer) runs
in a small thread pool, so a long prompt does not stall the other streams of this ingress; a large
body is parsed there too. No FastAPI and no Ray: the ingress hands over its request's headers and body stream, and
tests drive this with plain values.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from deployments.config import AppConfig, EngineKind
from deployments.prompts import PromptRenderer, RenderedPrompt
from deployments.protocol import (
    APIError,
    ParsedRequest,
    bad_request,
    parse_chat,
    parse_completion,
    parse_json,
    short_int,
    slo_from_headers,
    with_header_slo,
)

# Bodies up to this size parse on the event loop (well under a millisecond); a larger one may take
# tens of milliseconds (a 4 MiB array of small values: hundreds), which would stall every stream.
INLINE_PARSE_BYTES = 64 * 1024
# Tokenizing is CPU work the ingress's reserved CPU share bounds anyway; two threads keep the event
# loop responsive while one long prompt is tokenized, without letting a burst of them take the box.
PREPARE_THREADS = 2


class Prepared(NamedTuple):
    parsed: ParsedRequest
    prompt: RenderedPrompt
    max_tokens: int


def check_content_type(value: str | None) -> None:
    """JSON bodies only (parameters such as ``charset`` allowed). Besides being what the API takes,
    this keeps web pages from driving a local server: a browser sends a cross-site POST without
    asking first only for form and text/plain bodies, never for application/json."""
    media_type = (value or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        shown = repr(value[:100]) if value else "none"
        raise APIError(415, f"Content-Type must be application/json, got {shown}", code="unsupported_media_type")


def too_large(limit: int) -> APIError:
    return APIError(413, f"the request body exceeds {limit} bytes (ingress.max_body_bytes)",
                    code="request_too_large")


def check_content_length(value: str | None, limit: int) -> None:
    """Refuse a body whose declared length is over ``limit`` before reading any of it."""
    if value is None:
        return  # chunked: read_body counts
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        raise bad_request(f"invalid Content-Length header {value[:40]!r}", code="invalid_header")
    if len(text) > 20 or int(text) > limit:
        raise too_large(limit)


async def read_body(chunks: AsyncIterable[bytes], limit: int) -> bytes:
    """The body, read until it ends or passes ``limit`` bytes (413): a client whose Content-Length
    lies, or that sends none, is stopped as soon as it is over."""
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) > limit:
            raise too_large(limit)
    return bytes(buf)


class RequestPreparer:
    """One ingress replica's edge checks and prompt rendering (``Ingress._prepare`` calls
    :meth:`prepare`)."""

    def __init__(self, cfg: AppConfig, renderer: PromptRenderer):
        self.cfg = cfg
        self.renderer = renderer
        self._pool = ThreadPoolExecutor(max_workers=PREPARE_THREADS, thread_name_prefix="ssjf-prepare")

    async def prepare(self, headers: Mapping[str, str], chunks: AsyncIterable[bytes], kind: str) -> Prepared:
        """``headers``: the request's (Starlette's are case-insensitive; plain dicts need lower-case
        names); ``chunks``: its body; ``kind``: ``"completion"`` or ``"chat"``."""
        check_content_type(headers.get("content-type"))
        limit = self.cfg.ingress.max_body_bytes
        check_content_length(headers.get("content-length"), limit)
        header_slo = slo_from_headers(headers)  # a bad x-slo-* header is refused before the body is read
        raw = await read_body(chunks, limit)
        if len(raw) <= INLINE_PARSE_BYTES:
            parsed = self.parse(raw, kind)
        else:
            parsed = await self._off_loop(self.parse, raw, kind)
        parsed = with_header_slo(parsed, header_slo)
        if self.renderer.tokenizer is None:
            # The approximate counter is a length division: not worth a thread hop (the replay
            # engine's benchmarks run thousands of requests a second through here).
            prompt = self.renderer.render(parsed)
        else:
            prompt = await self._off_loop(self.renderer.render, parsed)
        return self.fit(parsed, prompt)

    async def _off_loop(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def parse(self, raw: bytes, kind: str) -> ParsedRequest:
        """The body's JSON and fields, the model, and the options this engine can honour."""
        body = parse_json(raw)
        if kind == "completion":
            parsed = parse_completion(body)
        else:
            parsed = parse_chat(body, max_messages=self.cfg.ingress.max_messages)
        if not self.cfg.llm.accepts(parsed.model):
            raise APIError(404, f"the model {parsed.model!r} does not exist; served: {self.cfg.llm.served_models}",
                           type="not_found_error", param="model", code="model_not_found")
        engine = self.cfg.llm.engine_kind
        for key in ("replay_output_tokens", "replay_remaining_predictions"):
            if getattr(parsed, key) is not None and engine is not EngineKind.REPLAY:
                # Benchmark-only: silently ignoring it would let a benchmark believe it set the lengths.
                raise bad_request(f"{key!r} is read by the replay engine only; this cluster runs "
                                  f"the {engine.value!r} engine", param=key, code="unsupported")
        return parsed

    def fit(self, parsed: ParsedRequest, prompt: RenderedPrompt) -> Prepared:
        """The context-length checks, and ``max_tokens`` resolved."""
        param = "messages" if parsed.kind == "chat" else "prompt"
        if prompt.num_tokens < 1:
            raise bad_request("the prompt is empty (0 tokens)", param=param, code="invalid_prompt")
        context = self.renderer.context_length
        if prompt.num_tokens >= context:
            raise APIError(400, f"the prompt has {prompt.num_tokens} tokens; this model's context length is {context}",
                           param=param, code="context_length_exceeded")
        max_tokens = parsed.max_tokens
        if max_tokens is None:
            max_tokens = 16 if parsed.kind == "completion" else self.cfg.ingress.default_max_tokens
            max_tokens = min(max_tokens, context - prompt.num_tokens)
        elif prompt.num_tokens + max_tokens > context:
            raise APIError(400, f"prompt ({prompt.num_tokens} tokens) + max_tokens ({short_int(max_tokens)}) exceeds this "
                           f"model's context length ({context})", param="max_tokens", code="context_length_exceeded")
        return Prepared(parsed, prompt, max_tokens)
