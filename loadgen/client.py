"""Async HTTP client for an OpenAI-compatible server: open-loop sending, per-request metrics.

Open loop: each planned request is sent at its workload arrival time whether or not earlier ones
have answered, so a slow server cannot lower the offered load (a closed loop would hide queueing,
the very thing SSJF reorders). Every planned request ends as exactly one :class:`RequestRecord`
with status ok, error or timeout; nothing is dropped, not even on Ctrl-C.

Times are seconds on a monotonic clock relative to the run's start (``*_at``); durations ``*_s``:
TTFT = first content chunk - send; JCT = end of answer - send; TPOT = (last token - first token) /
(tokens - 1); max gap = the longest pause between two content chunks of one answer.
"""

from __future__ import annotations

import asyncio
import enum
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import httpx

from router.policies import parse_enum

MAX_ERROR_CHARS = 500
SLO_TTFT_HEADER = "x-slo-ttft-ms"
SLO_JCT_HEADER = "x-slo-jct-ms"
SHED_CODE = "slo_unattainable"  # the error code of a request the server shed for its SLO (HTTP 503)


def _milliseconds(seconds: float) -> str:
    """A plain decimal (no exponent: the ingress takes digits and one point only), to the nanosecond."""
    return f"{seconds * 1000:.6f}".rstrip("0").rstrip(".")


class Endpoint(enum.Enum):
    """Which OpenAI API the requests use: chat (messages) or completions (the last user turn as prompt)."""

    CHAT = "chat"
    COMPLETIONS = "completions"

    @classmethod
    def parse(cls, name) -> Endpoint:
        return parse_enum(cls, name, "endpoint")

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self is Endpoint.CHAT else "/v1/completions"


class RecordStatus(enum.Enum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"


@dataclass
class ClientConfig:
    url: str = field(metadata={"help": "Base URL of the server, e.g. http://127.0.0.1:8000 (a trailing /v1 is accepted)."})
    endpoint: Endpoint | str = field(default=Endpoint.CHAT, metadata={"help": "chat or completions."})
    stream: bool = field(default=True, metadata={"help": "Stream answers (SSE); without it TTFT and TPOT are unknown."})
    timeout_s: float = field(default=600.0, metadata={"help": "Per-request limit from send to the end of the answer."})
    connect_timeout_s: float = field(default=10.0, metadata={"help": "Limit on opening one TCP connection."})
    max_concurrency: int | None = field(default=None, metadata={"help": "Cap on requests in flight; past it a request waits in the client (recorded as send lag). None: no cap."})
    include_usage: bool = field(default=True, metadata={"help": "Ask for the usage chunk when streaming (stream_options.include_usage)."})
    api_key: str | None = field(default=None, repr=False, metadata={"help": "Sent as Authorization: Bearer KEY (a cluster with ingress API keys on answers 401 without it)."})

    def __post_init__(self):
        self.endpoint = Endpoint.parse(self.endpoint)
        url = self.url.strip().rstrip("/")
        if not (url.startswith("http://") or url.startswith("https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        if url.endswith("/v1"):
            url = url[: -len("/v1")]
        self.url = url
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if not self.connect_timeout_s > 0:
            raise ValueError(f"connect_timeout_s must be > 0, got {self.connect_timeout_s}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1 or None, got {self.max_concurrency}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["endpoint"] = self.endpoint.value
        if d["api_key"] is not None:
            d["api_key"] = "<redacted>"  # to_dict goes into config.json beside the results
        return d


@dataclass(frozen=True)
class PlannedRequest:
    """One request of the workload, ready to send at ``scheduled_at`` seconds after the run starts."""

    request_id: str
    scheduled_at: float
    model: str
    messages: tuple = ()
    prompt: str = ""
    max_tokens: int | None = None
    replay_output_tokens: int | None = None
    prompt_id: str = ""
    temperature: float | None = None
    num_prompt_tokens: int | None = None
    expected_output_tokens: int | None = None
    replay_remaining_predictions: tuple[float, ...] | None = None
    # Latency objectives sent as the x-slo-ttft-ms / x-slo-jct-ms headers (seconds here; None: not sent).
    slo_ttft_s: float | None = None
    slo_jct_s: float | None = None

    def __post_init__(self):
        for name in ("slo_ttft_s", "slo_jct_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:  # also NaN
                raise ValueError(f"{self.request_id}: {name} must be > 0 seconds or None, got {value}")

    def headers(self) -> dict[str, str] | None:
        """The request's own headers: its SLOs in milliseconds, as the ingress (and llm-d) read them."""
        out = {}
        for name, value in ((SLO_TTFT_HEADER, self.slo_ttft_s), (SLO_JCT_HEADER, self.slo_jct_s)):
            if value is not None:
                out[name] = _milliseconds(value)
        return out or None

    def body(self, endpoint: Endpoint, stream: bool, include_usage: bool = True) -> dict:
        body: dict = {"model": self.model, "stream": stream}
        if endpoint is Endpoint.CHAT:
            body["messages"] = [dict(m) for m in self.messages] or [{"role": "user", "content": self.prompt}]
        else:
            body["prompt"] = self.prompt
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if stream and include_usage:
            body["stream_options"] = {"include_usage": True}
        if self.replay_output_tokens is not None:
            # Benchmark-only field: read by the replay engine alone (router and proxy never see it).
            body["replay_output_tokens"] = self.replay_output_tokens
        if self.replay_remaining_predictions is not None:
            # Benchmark-only, replay engine alone: the EMULATED re-predictions at its progress points (srpt).
            body["replay_remaining_predictions"] = list(self.replay_remaining_predictions)
        return body


@dataclass
class RequestRecord:
    """What the client saw of one request: ``*_at`` times, ``*_s`` durations, ``num_*`` counts.

    The one definition of the per-request record: ``loadgen.results.RECORD_SCHEMA`` (the columns of
    ``records.parquet``) is derived from these fields and their annotations.
    """

    request_id: str
    prompt_id: str
    model: str
    status: str = RecordStatus.ERROR.value
    error: str | None = "not sent"
    http_status: int | None = None
    error_code: str | None = None  # the OpenAI error body's ``code`` (e.g. slo_unattainable: shed, HTTP 503)
    finish_reason: str | None = None
    scheduled_at: float = math.nan
    sent_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    done_at: float | None = None
    send_lag_s: float | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    max_gap_s: float | None = None
    jct_s: float | None = None
    num_output_tokens: int | None = None
    num_chunks: int = 0
    num_output_chars: int = 0
    num_prompt_tokens: int | None = None
    expected_output_tokens: int | None = None
    slo_ttft_s: float | None = None  # the objectives the request carried (None: none)
    slo_jct_s: float | None = None

    @classmethod
    def planned(cls, req: PlannedRequest) -> RequestRecord:
        return cls(
            request_id=req.request_id, prompt_id=req.prompt_id, model=req.model,
            scheduled_at=req.scheduled_at, num_prompt_tokens=req.num_prompt_tokens,
            expected_output_tokens=req.expected_output_tokens, slo_ttft_s=req.slo_ttft_s, slo_jct_s=req.slo_jct_s,
        )

    def fail(self, status: RecordStatus, error: str) -> None:
        self.status = status.value
        self.error = error[:MAX_ERROR_CHARS]

    def finish_metrics(self) -> None:
        """Derive the durations from the timestamps (called once the answer ended, however it ended)."""
        if self.sent_at is None:
            return
        self.send_lag_s = self.sent_at - self.scheduled_at
        if self.done_at is not None:
            self.jct_s = self.done_at - self.sent_at
        if self.first_token_at is not None:
            self.ttft_s = self.first_token_at - self.sent_at
        tokens = self.num_output_tokens
        if tokens is None and self.num_chunks:
            tokens = self.num_output_tokens = self.num_chunks
        if self.first_token_at is not None and self.last_token_at is not None and tokens and tokens > 1:
            self.tpot_s = (self.last_token_at - self.first_token_at) / (tokens - 1)

    def to_dict(self) -> dict:
        return asdict(self)


_SSE_EOL = re.compile(r"\r\n|\r|\n")


async def sse_lines(chunks):
    """The lines of an event stream, split where SSE ends a line (CRLF, LF or CR) and nowhere else.
    httpx's ``aiter_lines`` splits like ``str.splitlines``, also at U+2028, U+2029 and U+0085, which
    a server may send raw inside a data line's JSON (``ensure_ascii=False``), cutting an event in two."""
    pending = ""
    async for text in chunks:
        pending += text
        # A CR at the very end may be the first half of a CRLF: keep it until the next chunk.
        held = "\r" if pending.endswith("\r") else ""
        lines = _SSE_EOL.split(pending[: len(pending) - len(held)])
        pending = lines.pop() + held
        for line in lines:
            yield line
    if pending:
        lines = _SSE_EOL.split(pending)
        if lines[-1] == "":
            lines.pop()  # the stream ended with a line end
        for line in lines:
            yield line


class _StreamState:
    """Folds SSE ``data:`` payloads of one streamed answer into its record."""

    def __init__(self, record: RequestRecord, endpoint: Endpoint):
        self.record = record
        self.endpoint = endpoint
        self.done = False
        self.error: str | None = None
        self.error_code: str | None = None

    def on_data(self, data: str, at: float) -> None:
        if data == "[DONE]":
            self.done = True
            return
        payload = json.loads(data)
        if "error" in payload:
            self.error = _error_message(payload)
            self.error_code = _error_code(payload)
            return
        usage = payload.get("usage")
        if usage and usage.get("completion_tokens") is not None:
            self.record.num_output_tokens = int(usage["completion_tokens"])
        for choice in payload.get("choices") or ():
            text = _choice_text(choice, self.endpoint, streaming=True)
            if text:
                self._on_content(text, at)
            if choice.get("finish_reason"):
                self.record.finish_reason = choice["finish_reason"]

    def _on_content(self, text: str, at: float) -> None:
        rec = self.record
        if rec.first_token_at is None:
            rec.first_token_at = at
        else:
            gap = at - rec.last_token_at
            rec.max_gap_s = gap if rec.max_gap_s is None else max(rec.max_gap_s, gap)
        rec.last_token_at = at
        rec.num_chunks += 1
        rec.num_output_chars += len(text)


def _choice_text(choice: dict, endpoint: Endpoint, streaming: bool) -> str:
    if endpoint is Endpoint.CHAT:
        part = choice.get("delta" if streaming else "message") or {}
        return part.get("content") or ""
    return choice.get("text") or ""


def _error_code(payload) -> str | None:
    err = payload.get("error") if isinstance(payload, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    return None if code is None else str(code)[:100]


def _error_message(payload) -> str:
    err = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err if err is not None else payload)


class LoadClient:
    """Sends planned requests to one server and measures them. Use as ``async with LoadClient(cfg) as c``."""

    def __init__(self, config: ClientConfig, *, clock: Callable[[], float] = time.perf_counter,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.config = config
        self._clock = clock
        # No pool limit unless a cap is asked for: a pool wait would be hidden client-side queueing.
        limits = httpx.Limits(max_connections=config.max_concurrency, max_keepalive_connections=config.max_concurrency or 256)
        timeout = httpx.Timeout(connect=config.connect_timeout_s, read=None, write=None, pool=None)
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else None
        self._http = httpx.AsyncClient(base_url=config.url, limits=limits, timeout=timeout, transport=transport,
                                       headers=headers)
        self._sem = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None

    async def __aenter__(self) -> LoadClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def list_models(self) -> list[dict]:
        """``GET /v1/models`` -> its ``data`` entries (raises httpx.HTTPError when unreachable)."""
        resp = await self._http.get("/v1/models", timeout=self.config.connect_timeout_s)
        resp.raise_for_status()
        return list(resp.json().get("data") or [])

    async def send(self, req: PlannedRequest, t0: float, record: RequestRecord | None = None) -> RequestRecord:
        """Send one request now and fill its record; never raises except on cancellation (record filled first)."""
        rec = record if record is not None else RequestRecord.planned(req)
        if self._sem is not None:
            async with self._sem:
                await self._send(req, t0, rec)
        else:
            await self._send(req, t0, rec)
        return rec

    async def _send(self, req: PlannedRequest, t0: float, rec: RequestRecord) -> None:
        cfg = self.config
        rec.sent_at = self._clock() - t0
        rec.status, rec.error = RecordStatus.OK.value, None
        try:
            exchange = self._stream(req, t0, rec) if cfg.stream else self._unary(req, rec)
            await asyncio.wait_for(exchange, cfg.timeout_s)  # (asyncio.timeout needs Python 3.11)
        except asyncio.TimeoutError:
            rec.fail(RecordStatus.TIMEOUT, f"no complete answer within {cfg.timeout_s:g} s")
        except httpx.TimeoutException as exc:
            rec.fail(RecordStatus.TIMEOUT, f"{type(exc).__name__}: {exc}")
        except asyncio.CancelledError:
            rec.fail(RecordStatus.ERROR, "cancelled: run interrupted")
            raise
        except httpx.HTTPError as exc:
            rec.fail(RecordStatus.ERROR, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        except (ValueError, KeyError, TypeError) as exc:
            rec.fail(RecordStatus.ERROR, f"bad answer: {type(exc).__name__}: {exc}")
        finally:
            rec.done_at = self._clock() - t0
            rec.finish_metrics()

    async def _stream(self, req: PlannedRequest, t0: float, rec: RequestRecord) -> None:
        body = req.body(self.config.endpoint, True, self.config.include_usage)
        async with self._http.stream("POST", self.config.endpoint.path, json=body, headers=req.headers()) as resp:
            rec.http_status = resp.status_code
            if resp.status_code != 200:
                await resp.aread()
                _http_fail(rec, resp)
                return
            state = _StreamState(rec, self.config.endpoint)
            async for line in sse_lines(resp.aiter_text()):
                at = self._clock() - t0
                if not line.startswith("data:"):
                    continue  # blank separators, comments (": ping"), "event:" lines
                state.on_data(line[len("data:"):].strip(), at)
                if state.error is not None:
                    rec.error_code = state.error_code
                    rec.fail(RecordStatus.ERROR, f"error in stream: {state.error}")
                    return
                if state.done:
                    return
            if rec.finish_reason is None:
                rec.fail(RecordStatus.ERROR, "stream ended before [DONE] or a finish_reason")

    async def _unary(self, req: PlannedRequest, rec: RequestRecord) -> None:
        body = req.body(self.config.endpoint, False)
        resp = await self._http.post(self.config.endpoint.path, json=body, headers=req.headers())
        rec.http_status = resp.status_code
        if resp.status_code != 200:
            _http_fail(rec, resp)
            return
        payload = resp.json()
        if "error" in payload:
            rec.error_code = _error_code(payload)
            rec.fail(RecordStatus.ERROR, f"error in answer: {_error_message(payload)}")
            return
        choices = payload.get("choices") or []
        if not choices:
            rec.fail(RecordStatus.ERROR, "answer has no choices")
            return
        text = _choice_text(choices[0], self.config.endpoint, streaming=False)
        rec.num_output_chars = len(text)
        rec.finish_reason = choices[0].get("finish_reason")
        usage = payload.get("usage") or {}
        if usage.get("completion_tokens") is not None:
            rec.num_output_tokens = int(usage["completion_tokens"])


def _http_error_text(resp: httpx.Response) -> str:
    try:
        return _error_message(resp.json())
    except ValueError:
        return resp.text.strip() or resp.reason_phrase


def _http_fail(rec: RequestRecord, resp: httpx.Response) -> None:
    """A non-200 answer: the record keeps its status, error text and code (a shed request: 503
    ``slo_unattainable``)."""
    try:
        rec.error_code = _error_code(resp.json())
    except ValueError:
        rec.error_code = None
    rec.fail(RecordStatus.ERROR, f"HTTP {resp.status_code}: {_http_error_text(resp)}")


async def run_open_loop(client: LoadClient, planned: Sequence[PlannedRequest], *,
                        on_sent: Callable[[RequestRecord], None] | None = None,
                        on_done: Callable[[RequestRecord], None] | None = None) -> list[RequestRecord]:
    """Send every request at its ``scheduled_at`` (never waiting on earlier answers); one record each.

    Records come back in arrival order. To keep the records of an interrupted run, use
    :class:`OpenLoopRun` directly: its ``records`` stay readable after a cancellation.
    """
    run = OpenLoopRun(client, planned, on_sent=on_sent, on_done=on_done)
    await run.run()
    return run.records


class OpenLoopRun:
    """An open-loop run whose ``records`` (one per planned request) stay readable after an interruption."""

    def __init__(self, client: LoadClient, planned: Sequence[PlannedRequest], *,
                 on_sent: Callable[[RequestRecord], None] | None = None,
                 on_done: Callable[[RequestRecord], None] | None = None):
        self.client = client
        self.planned = sorted(planned, key=lambda r: (r.scheduled_at, r.request_id))
        self.records = [RequestRecord.planned(r) for r in self.planned]
        self.on_sent = on_sent
        self.on_done = on_done
        self.started_at_unix: float | None = None
        self.elapsed_s: float | None = None

    async def run(self) -> None:
        clock = self.client._clock
        t0 = clock()
        self.started_at_unix = time.time()
        tasks: list[asyncio.Task] = []
        try:
            for req, rec in zip(self.planned, self.records, strict=True):
                delay = t0 + req.scheduled_at - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(self._one(req, rec, t0)))
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            self.elapsed_s = clock() - t0

    async def _one(self, req: PlannedRequest, rec: RequestRecord, t0: float) -> None:
        if self.on_sent is not None:
            self.on_sent(rec)
        try:
            await self.client.send(req, t0, rec)
        finally:
            if self.on_done is not None:
                self.on_done(rec)


def is_replay_server(models: Sequence[dict]) -> bool:
    """True when ``/v1/models`` says the server runs the replay engine.

    Recognised markers on any entry: ``"engine": "replay"``, or ``owned_by`` containing "replay".
    """
    for entry in models:
        if str(entry.get("engine", "")).lower() == "replay" or "replay" in str(entry.get("owned_by", "")).lower():
            return True
    return False


def default_model(models: Sequence[dict]) -> str | None:
    """The first concrete model id of ``/v1/models`` ("*" means "any name" and is skipped)."""
    for entry in models:
        model_id = entry.get("id")
        if model_id and model_id != "*":
            return str(model_id)
    return None


def plan_requests(workload, *, model: str | None, model_from_dataset: bool = False, replay_lengths: bool = False,
                  max_tokens: int | None = None, temperature: float | None = None,
                  replay_remaining=None, slo_ttft_s: float | None = None,
                  slo_jct_s: float | None = None) -> list[PlannedRequest]:
    """Turn a workload table (``loadgen.workload.build_workload`` columns) into planned requests.

    ``model_from_dataset`` sends each row's ``model`` (the LLM that wrote the reference reply);
    ``replay_lengths`` sends the row's true ``output_tokens`` as ``replay_output_tokens``.
    ``max_tokens`` overrides the row's ``max_tokens`` column (None: the row's, if any);
    ``temperature`` is sent with every request (None: not sent, the server's default).
    ``replay_remaining`` (``loadgen.repredict_sim.Checkpoints`` over the rows, with ``replay_lengths``):
    each row's EMULATED re-predictions, sent as ``replay_remaining_predictions`` (srpt on replay replicas).
    SLOs: a row's ``slo_ttft_s`` / ``slo_jct_s`` columns where present and not null, else ``slo_ttft_s`` /
    ``slo_jct_s`` given here (None: none), sent as the ``x-slo-ttft-ms`` / ``x-slo-jct-ms`` headers.
    """
    names = set(workload.column_names)
    missing = {"request_id", "arrival_s"} - names
    if not names & {"messages", "prompt"}:
        missing.add("messages or prompt")
    if model_from_dataset and "model" not in names:
        missing.add("model (for model-from-dataset)")
    if replay_lengths and "output_tokens" not in names:
        missing.add("output_tokens (for replay lengths)")
    if missing:
        raise ValueError(f"workload lacks column(s) {sorted(missing)}; it has {sorted(names)}")
    if not model_from_dataset and not model:
        raise ValueError("no model name: give a model or use model_from_dataset")
    rows = workload.to_pylist()
    planned = []
    for j, row in enumerate(rows):
        messages = tuple(dict(m) for m in (row.get("messages") or ()))
        prompt = row.get("prompt")
        if prompt is None:
            prompt = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        truth = row.get("output_tokens")
        row_ttft, row_jct = row.get("slo_ttft_s"), row.get("slo_jct_s")
        planned.append(PlannedRequest(
            request_id=str(row["request_id"]),
            scheduled_at=float(row["arrival_s"]),
            model=str(row["model"]) if model_from_dataset else model,
            messages=messages,
            prompt=prompt,
            max_tokens=max_tokens if max_tokens is not None else row.get("max_tokens"),
            replay_output_tokens=int(truth) if replay_lengths and truth is not None else None,
            prompt_id=str(row.get("prompt_id") or ""),
            num_prompt_tokens=row.get("num_prompt_tokens"),
            expected_output_tokens=int(truth) if truth is not None else None,
            temperature=temperature,
            replay_remaining_predictions=(tuple(replay_remaining.of(j).tolist())
                                          if replay_lengths and replay_remaining is not None else None),
            slo_ttft_s=_slo_value(row_ttft, slo_ttft_s),
            slo_jct_s=_slo_value(row_jct, slo_jct_s),
        ))
    return planned


def _slo_value(row_value, default: float | None) -> float | None:
    """A row's SLO (seconds) unless null or NaN, else ``default``."""
    if row_value is None or (isinstance(row_value, float) and math.isnan(row_value)):
        return default
    return float(row_value)
