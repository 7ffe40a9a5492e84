"""The OpenAI-compatible HTTP ingress (FastAPI under Serve): the data flow of one request.

1. Parse and validate at the edge (bad input: a 4xx with an OpenAI-style body).
2. Render the prompt and count its tokens; check the context length.
3. Ask the proxy pool for the predicted output length (bounded wait, heuristic fallback).
4. ``enqueue`` the request's metadata at the router actor; it answers when the policy dispatches
   it, with the replica id (queue full: 429 with Retry-After; router restarting: retry; ``slo`` policy
   shedding a request predicted to miss its SLO: 503 ``slo_unattainable``, before any output).
5. Call that replica (the LLM deployment's request router pins the call there) and stream.
   A replica that dies or bounces the call before output is produced: ask the router again.
   ``srpt``: a replica whose run the router preempted ends the stream with ``Preempted``; the
   request waits for its next dispatch (step 4 again: the enqueue joins its place in the queue,
   bounded by the request deadline only, like queueing) and resumes there from the tokens it has,
   so the client sees one stream (text continued, usage counting every token once).

``router.mode: serve-default`` (the baseline) skips steps 3 and 4: no prediction, no router; the
call goes through Serve's default request router, which queues it (oldest first) until a replica
has a free place. Its queue wait is then the wait for the replica's ``Started``.

No ``from __future__ import annotations`` here: FastAPI must resolve the endpoint annotations.
"""

import asyncio
import dataclasses
import logging
import math
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from deployments.admission import AdmissionGate, InFlightLimit
from deployments.auth import ApiKeyAuth, refuse_serve_hints
from deployments.config import AppConfig, EngineKind, RoutingMode
from deployments.deadlines import Deadline, RunDeadlines, timeout_error
from deployments.engines.base import Delta, FinishReason, GenerationRequest, Misrouted, Preempted, Started
from deployments.metrics import IngressMetrics, MetricsPublisher, get_metrics_store
from deployments.predictors import heuristic_predictor
from deployments.prepare import Prepared, RequestPreparer
from deployments.prompts import PromptRenderer
from deployments.protocol import (
    CHAT_BODY_SCHEMA,
    COMPLETION_BODY_SCHEMA,
    SSE_DONE,
    APIError,
    StopMatcher,
    completion_response,
    openapi_body,
    sse,
    stream_chunk,
    usage,
)
from proxy_model.predictor import text_for
from router.actor import BatchedEnqueuer, Reporter, RouterClient
from router.messages import Cancelled, Dispatched, NoReplica, QueueFull, Report, Shed
from router.policies import Policy
from router.request import RequestMeta

logger = logging.getLogger("ray.serve")

app = FastAPI(title="ssjf-serve", docs_url=None, redoc_url=None)
# Admission counts a request before anything reads its body (deployments/admission.py); each
# ingress replica sets its limit (ingress.max_in_flight) in Ingress.__init__.
ADMISSION = AdmissionGate()
app.add_middleware(InFlightLimit, gate=ADMISSION)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException):
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(APIError(exc.status_code, str(exc.detail), type=kind).body(), status_code=exc.status_code)


@app.exception_handler(Exception)
async def _unhandled_error(request: Request, exc: Exception):
    # An OpenAI-shaped 500 that tells nothing of the internals (actor names, node addresses); the
    # replica's log keeps the exception.
    logger.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(APIError(500, "internal server error", type="server_error", code="internal_error").body(),
                        status_code=500)


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


class _Retry(Exception):
    """The call never ran (its replica died, vanished or bounced it): dispatch again."""

    def __init__(self, reason: str, drop_replica: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.drop_replica = drop_replica  # tell the router to stop choosing this replica


def _replica_gone(error: BaseException) -> bool:
    import ray.exceptions as rex
    from ray.serve.exceptions import ReplicaUnavailableError

    return isinstance(error, (rex.RayActorError, rex.ActorUnavailableError, ReplicaUnavailableError))


def _as_retry(error: Exception) -> _Retry | None:
    """The retry a failed call asks for (the call never ran, or its replica died); None: not retryable."""
    if isinstance(error, _Retry):
        return error
    if _replica_gone(error):
        return _Retry("replica_died", drop_replica=True)
    return None


def _as_error(error: Exception) -> APIError:
    """The client's error for a call that failed and is not retried. An :class:`APIError` stays as it
    is; Serve's backpressure (this ingress's queue of LLM calls is full) is a 503; anything else is
    the engine failing on the replica (a RayTaskError carrying its exception), a 500."""
    if isinstance(error, APIError):
        return error
    from ray.serve.exceptions import BackPressureError

    if isinstance(error, BackPressureError):
        return APIError(503, "too many calls are waiting for the LLM replicas; retry later", type="server_error",
                        code="llm_busy", headers={"Retry-After": "1"})
    cause = getattr(error, "cause", None) or error
    logger.warning("a replica failed a request: %r", error)
    return APIError(500, f"the engine failed while generating this request ({type(cause).__name__})",
                    type="server_error", code="engine_error")


def shed_error(meta: RequestMeta, reason: str) -> APIError:
    """The 503 of a request the ``slo`` policy shed: predicted to miss its SLO even if started now."""
    asked = ", ".join(f"{name} {value * 1000:g} ms" for name, value in
                      (("TTFT", meta.slo_ttft_s), ("JCT", meta.slo_jct_s)) if value is not None)
    return APIError(503, f"this request cannot meet its latency objective ({asked or 'none given'}) at the "
                    f"current load: the router's slo policy shed it unrun ({reason})",
                    type="slo_unattainable", code="slo_unattainable")


def _internal_error(error: Exception) -> APIError:
    return APIError(500, f"internal error while serving this request ({type(error).__name__})",
                    type="server_error", code="internal_error")


class _ServeLLMStatus:
    """serve-default's view of the LLM replicas: how many Serve's controller reports running
    (``serve.status()``, a blocking controller call, run in a thread), read at most once per
    ``max_age_s`` so that frequent probes do not load the controller."""

    def __init__(self, max_age_s: float = 1.0, timeout_s: float = 2.0):
        self.max_age_s = max_age_s
        self.timeout_s = timeout_s
        self._value: int | None = None
        self._at = -math.inf

    async def running_replicas(self) -> int:
        if self._value is not None and time.monotonic() - self._at < self.max_age_s:
            return self._value
        context = serve.get_replica_context()
        status = await asyncio.wait_for(asyncio.to_thread(serve.status), timeout=self.timeout_s)
        llm = status.applications[context.app_name].deployments["llm"]
        self._value = int(llm.replica_states.get("RUNNING", 0))
        self._at = time.monotonic()
        return self._value


@dataclasses.dataclass(frozen=True)
class Restart:
    """A non-streaming request starts over on another replica (its replica died): drop its output so far."""


class _Run:
    """One request's trip through router and replica, as events: :class:`Started`, then
    :class:`Delta` s; a :class:`Restart` when a non-streaming request restarts after its replica died."""

    def __init__(self, ingress: "Ingress", meta: RequestMeta, request: GenerationRequest, restart_after_output: bool):
        self.ingress = ingress
        self.meta = meta
        self.request = request
        self.restart_after_output = restart_after_output
        self.finished = False
        self.replica_id: str | None = None
        # No router (serve-default): Serve's request router queues the call itself, and the replica's
        # Started is the dispatch (the ingress is the only enqueuer in central mode).
        self.central = ingress.enqueuer is not None
        self.dispatched_at: float | None = None
        self.called_at: float | None = None  # the call left the ingress
        self.started_at: float | None = None
        self.router_s = 0.0  # time inside router calls (queue wait included): the benchmark reads it
        self.num_retries = 0
        # srpt: output streamed so far, what a resumed dispatch goes on from after a preemption.
        self.num_preemptions = 0
        self.out_tokens = 0
        self.out_text: list[str] = []
        self.deadlines = RunDeadlines.from_settings(ingress.cfg.ingress, meta.arrival_at, time.time(), time.monotonic)

    async def _wait(self, awaitable, started: bool | None):
        """Await ``awaitable`` within the deadline that applies now (:meth:`RunDeadlines.next_wait`):
        past it, a :class:`_Retry` for a first chunk or first token (the call is abandoned, the request
        dispatched again), else the 504 that ends the request. ``started``: as ``next_wait``'s."""
        d = self.deadlines
        at, kind = d.next_wait(started)
        if at is None:
            return await awaitable
        timeout = asyncio.timeout(max(0.0, at - d.now()))
        try:
            async with timeout:
                return await awaitable
        except TimeoutError:
            if not timeout.expired():
                raise  # not ours: the awaited call's own
            if kind is Deadline.FIRST_CHUNK:
                raise _Retry(kind.value) from None
            if kind is Deadline.FIRST_TOKEN:
                # Nothing came from this replica since the dispatch: try another, and have the router
                # stop choosing this one (until its next heartbeat; a replica whose engine hangs stops
                # heartbeating once its watchdog trips, and then stays dropped).
                raise _Retry(kind.value, drop_replica=True) from None
            raise timeout_error(kind, d.limit_s(kind)) from None

    async def _dispatch(self, requeue: bool) -> Dispatched:
        ing = self.ingress
        deadline = time.time() + ing.cfg.ingress.router_timeout_s
        delay = 0.05
        while True:
            try:
                t0 = time.perf_counter()
                try:
                    answer = await ing.enqueuer.enqueue(self.meta, requeue)
                finally:
                    self.router_s += time.perf_counter() - t0
            except Exception as e:
                if not RouterClient.is_actor_failure(e):
                    raise
                # The router died: its restart forgot us. Enqueue again (same id and arrival time).
                ing.metrics.retries.labels("router_restart").inc()
                ing.router.reset()
                if time.time() > deadline:
                    raise APIError(503, "the router is unavailable; retry later", type="server_error",
                                   code="router_unavailable", headers={"Retry-After": "1"}) from None
                await asyncio.sleep(delay)
                delay = min(2 * delay, 1.0)
                continue
            if isinstance(answer, Dispatched):
                return answer
            if isinstance(answer, QueueFull):
                retry_after = max(1, math.ceil(answer.retry_after_s))
                raise APIError(429, "the server is at capacity: too many requests are waiting; retry later",
                               type="rate_limit_error", code="queue_full", headers={"Retry-After": str(retry_after)})
            if isinstance(answer, NoReplica):
                raise APIError(503, "no LLM replica is available (all were lost or none has started); retry later",
                               type="server_error", code="no_replica",
                               headers={"Retry-After": str(max(1, math.ceil(answer.retry_after_s)))})
            if isinstance(answer, Shed):
                # The slo policy dropped it unrun. A 503 before any output (a stream too: its headers are
                # not sent yet), with no Retry-After: the same request later is only later for its SLO.
                ing.metrics.slo_shed.inc()
                raise shed_error(self.meta, answer.reason)
            if isinstance(answer, Cancelled):  # our place was dropped (e.g. its replica vanished): ask again
                requeue = False
                continue
            raise RuntimeError(f"unexpected router answer {answer!r}")

    async def events(self):
        """Every wait is bounded (:mod:`deployments.deadlines`); every failure ends as an
        :class:`APIError` (or a retry); whatever ends the run, its call is cancelled (the replica's
        slot frees) and the router told (our cancel names no attempt: it applies in any state)."""
        attempt = 0
        requeue = False  # the last dispatch never ran: the router forgets that run first
        started = False
        gen = None
        try:
            while True:
                if self.central:
                    dispatched = await self._wait(self._dispatch(requeue=requeue), None)
                    gen = self._call(dispatched)
                    self.deadlines.dispatched()
                else:
                    gen = self._call_serve(attempt)
                produced = False
                preempted: Preempted | None = None
                try:
                    await self._first_chunk(gen)
                    if not started:
                        started = True
                        self.started_at = time.time()
                        yield Started(self.replica_id)
                    while True:
                        try:
                            delta: Delta = await self._wait(gen.__anext__(), True)
                        except StopAsyncIteration:
                            break
                        if isinstance(delta, Preempted):
                            preempted = delta
                            break
                        self.deadlines.output()
                        produced = produced or delta.num_tokens > 0
                        self.out_tokens += delta.num_tokens
                        self.out_text.append(delta.text)
                        if delta.finish_reason is not None:
                            # Set before the yield: the consumer may close us right after it.
                            self.finished = True
                            yield delta
                            return
                        yield delta
                    if preempted is None:
                        raise _Retry("stream_ended_early")
                except Exception as e:
                    retry = _as_retry(e)
                    if retry is None:
                        raise _as_error(e) from (None if isinstance(e, APIError) else e)
                    gen.cancel()
                    gen = None
                    attempt += 1
                    requeue = True
                    self._count_retry(retry, produced, attempt)
                    if produced:
                        self._restart()
                        yield Restart()
                    continue
                # Preempted (srpt): the replica stopped the run and reported nothing for it; the router
                # has the request queued again. Wait for its next dispatch (only the request deadline
                # runs meanwhile, as for any queued request) and resume there.
                gen = None
                requeue = False
                self._resume(preempted)
        finally:
            if not self.finished:
                if gen is not None:
                    gen.cancel()
                if self.central:
                    self.ingress.reporter.report(Report.cancel(self.meta.request_id))

    def _resume(self, preempted: Preempted) -> None:
        """The next dispatch goes on from the output streamed so far (the replica's count and token
        ids; the text the client got)."""
        self.num_preemptions += 1
        self.ingress.metrics.preemptions.inc()
        self.ingress.metrics.preempted_tokens.inc(preempted.tokens_done)
        if preempted.tokens_done != self.out_tokens:  # never expected: both count the deltas streamed
            logger.warning("request %s preempted after %d tokens by its replica's count, %d streamed",
                           self.meta.request_id, preempted.tokens_done, self.out_tokens)
        self.request = dataclasses.replace(self.request, resume_tokens=preempted.tokens_done,
                                           resume_text="".join(self.out_text),
                                           resume_token_ids=preempted.resume_token_ids)

    def _restart(self) -> None:
        """A non-streaming request starts over: from no output at all (the collector drops its output)."""
        self.out_tokens = 0
        self.out_text = []
        self.request = dataclasses.replace(self.request, resume_tokens=0, resume_text="", resume_token_ids=None)

    def _call(self, dispatched: Dispatched):
        """Start the stream on the dispatched replica (the LLM deployment's request router pins it there)."""
        self.replica_id = dispatched.replica_id
        self.dispatched_at = self.called_at = time.time()
        # The run names its dispatch: the replica's reports and heartbeats carry the attempt.
        changes = {"attempt": dispatched.attempt}
        if dispatched.batch_id is not None:
            changes["batch_id"] = dispatched.batch_id
        request = dataclasses.replace(self.request, **changes)
        return self.ingress.llm.generate.remote(request, target_replica_id=dispatched.replica_id)

    def _call_serve(self, attempt: int):
        """serve-default: start the stream wherever Serve's default request router sends it."""
        self.replica_id = None
        self.called_at = time.time()
        return self.ingress.llm.generate.remote(dataclasses.replace(self.request, attempt=attempt))

    async def _first_chunk(self, gen) -> None:
        """Wait for the replica's first chunk (its Started); :class:`_Retry` if it is late or bounced.
        serve-default: the call waits in Serve's queue until then, bounded by the request deadline
        only (a queue is no fault); the first-token clock starts at the Started."""
        try:
            first = await self._wait(gen.__anext__(), False if self.central else None)
        except StopAsyncIteration:
            raise _Retry("stream_ended_early") from None
        if not self.central and isinstance(first, Started):
            self.replica_id = first.replica_id
            self.dispatched_at = time.time()
            self.deadlines.dispatched()
        if isinstance(first, Misrouted):
            # Serve has not listed the pinned replica for ingress.pin_grace_s: it is gone (a lost
            # node) or not yet visible here. Either way the router should stop choosing it until
            # it heartbeats again (every llm.heartbeat_s), or every retry lands on it and the
            # request fails before replica_timeout_s drops it.
            raise _Retry("misrouted", drop_replica=True)

    def _count_retry(self, retry: _Retry, produced: bool, attempt: int) -> None:
        """Record a failed try (``attempt`` counts it); raises the client's error when no retry is allowed."""
        ing = self.ingress
        cfg = ing.cfg.ingress
        if retry.drop_replica and self.central and self.replica_id is not None:
            ing.reporter.report(Report.remove_replica(self.replica_id))
        ing.metrics.retries.labels(retry.reason).inc()
        if produced and not self.restart_after_output:
            raise APIError(502, f"the replica serving this request failed mid-stream ({retry.reason})",
                           type="server_error", code="replica_failed") from None
        self.num_retries = attempt
        if attempt > cfg.max_retries and retry.reason == Deadline.FIRST_TOKEN.value:
            raise timeout_error(Deadline.FIRST_TOKEN, cfg.first_token_timeout_s,
                                f"{attempt} tries; ingress.max_retries={cfg.max_retries}") from None
        if attempt > cfg.max_retries:
            raise APIError(503, f"no replica could serve this request ({retry.reason}, "
                           f"{attempt} tries; ingress.max_retries={cfg.max_retries})",
                           type="server_error", code="replica_failed",
                           headers={"Retry-After": "1"}) from None


@serve.deployment(name="ingress")
@serve.ingress(app)
class Ingress:
    async def __init__(self, config: dict, proxy, llm):
        self.cfg = AppConfig.from_dict(config)
        self._init_access()  # first: a replica that must not serve fails before it starts anything
        self.proxy = proxy
        self.llm = llm.options(stream=True)
        self.renderer = await asyncio.to_thread(PromptRenderer.from_config, self.cfg)
        self.preparer = RequestPreparer(self.cfg, self.renderer)
        r = self.cfg.router
        self.central = self.cfg.routing_mode is RoutingMode.CENTRAL
        # serve-default: no router actor is created (nor its client, enqueuer, reporter).
        self.router: RouterClient | None = None
        self.enqueuer: BatchedEnqueuer | None = None
        self.reporter: Reporter | None = None
        if self.central:
            self.router = RouterClient(
                self.cfg.router_actor_name, r.namespace, self.cfg.scheduler_config().to_dict(),
                max_restarts=r.max_restarts,
                actor_kwargs=dict(retry_after_s=r.retry_after_s, replica_timeout_s=r.replica_timeout_s,
                                  lease_s=r.lease_s, orphan_timeout_s=r.orphan_timeout_s),
                resources=r.resources,
            )
            await self.router.handle.ping.remote()  # create it now, so replicas find it at once
            # Submit again what waits after a pause of this replica well short of the router's lease,
            # so a router that dropped us as a client (router.lease_s) never leaves a request waiting.
            self.enqueuer = BatchedEnqueuer(self.router, resubmit_after_s=min(5.0, r.lease_s / 2))
            self.reporter = Reporter(self.router)
        self._llm_status = _ServeLLMStatus()
        self.fallback = heuristic_predictor()
        self.metrics = IngressMetrics()
        ADMISSION.configure(self.cfg.ingress.max_in_flight, self.cfg.router.retry_after_s, on_reject=self._rejected)
        self.publisher = MetricsPublisher(self.metrics, self._metrics_store, self.cfg.ingress.metrics_push_s,
                                          source=self._replica_id())
        self.publisher.start()
        self.engine = self.cfg.llm.engine_kind
        # srpt with a remaining-length model on the replicas: it reads the request's proxy text.
        self.send_proxy_text = (self.central and self.cfg.llm.remaining_predictor is not None
                                and self.cfg.scheduler_config().policy is Policy.SRPT)

    # ---- endpoints ---------------------------------------------------------------------------
    # The bodies' schemas are documented for OpenAPI clients and fuzzers; the handlers parse the raw
    # body themselves (deployments/prepare.py), so errors stay OpenAI-shaped (never FastAPI's 422).
    @app.post("/v1/completions", openapi_extra=openapi_body(COMPLETION_BODY_SCHEMA))
    async def completions(self, request: Request):
        if (denied := self._deny(request, "completions")) is not None:
            return denied
        return await self._handle(request, "completion")

    @app.post("/v1/chat/completions", openapi_extra=openapi_body(CHAT_BODY_SCHEMA))
    async def chat_completions(self, request: Request):
        if (denied := self._deny(request, "chat")) is not None:
            return denied
        return await self._handle(request, "chat")

    @app.get("/v1/models")
    async def models(self, request: Request):
        if (denied := self._deny(request, "models")) is not None:
            return denied
        self.metrics.requests.labels("models", "200").inc()
        owned_by = "ssjf-serve (replay engine, emulated)" if self.engine is EngineKind.REPLAY else "ssjf-serve"
        data = [{"id": name, "object": "model", "created": 0, "owned_by": owned_by, "engine": self.engine.value,
                 "max_model_len": self.renderer.context_length} for name in self.cfg.llm.served_models]
        return {"object": "list", "data": data}

    @app.get("/healthz")
    async def healthz(self):
        if not self.central:
            return await self._serve_healthz()
        try:
            snap = await asyncio.wait_for(self.router.handle.snapshot.remote(), timeout=2.0)
        except Exception as e:
            self.router.reset()
            # The error names actors and node addresses: the log gets it, the (unauthenticated) probe not.
            logger.warning("healthz: the router actor did not answer: %r", e)
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return {"status": "ok", "num_replicas": len(snap["replicas"]), "num_queued": snap["num_queued"],
                "num_running": snap["num_running"]}

    @app.get("/metrics")
    async def metrics_endpoint(self, request: Request):
        if self.cfg.ingress.protect_metrics:
            try:
                self.auth.check(request.headers.get("authorization"))
            except APIError as e:
                self.metrics.requests.labels("metrics", str(e.status)).inc()
                return error_response(e)
        try:
            if self.central:  # serve-default has no router, and no router gauges
                snap = await asyncio.wait_for(self.router.handle.snapshot.remote(), timeout=1.0)
                self.metrics.observe_router(snap)
        except Exception:
            pass  # the counters matter more than the router's gauges
        # Every ingress replica's counters summed (deployments/metrics.py): Serve spreads scrapes over
        # the replicas, and one replica's own counts would seem to jump back between scrapes.
        total = await self.publisher.total()
        if total is None:  # no numbers beat wrong ones: Prometheus marks the scrape failed
            return error_response(APIError(503, "metrics are unavailable right now; retry", type="server_error",
                                           code="metrics_unavailable"))
        body, content_type = self.metrics.render(total)
        return Response(content=body, media_type=content_type)

    async def _serve_healthz(self):
        """serve-default: the LLM replicas Serve's controller reports running (there is no router to ask)."""
        try:
            num_replicas = await self._llm_status.running_replicas()
        except Exception as e:
            logger.warning("healthz: Serve's controller did not answer: %r", e)
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return {"status": "ok", "mode": RoutingMode.SERVE_DEFAULT.value, "num_replicas": num_replicas}

    def _rejected(self, path: str) -> None:
        """Count a request refused at admission (ingress.max_in_flight) under its endpoint."""
        self.metrics.requests.labels("chat" if path.endswith("/chat/completions") else "completions", "429").inc()

    # ---- access control (deployments/auth.py) ------------------------------------------------
    def _init_access(self) -> None:
        ing = self.cfg.ingress
        self.auth = ApiKeyAuth.from_settings(ing.api_keys, ing.api_keys_env, ing.require_api_key)
        if self.auth.enabled:
            logger.info("ingress: API key required (%d key(s) configured)", self.auth.num_keys)
        else:
            logger.warning("ingress: no API key configured: anyone who reaches this port may use the API "
                           "(set %s or ingress.api_keys; ingress.require_api_key refuses to start without)",
                           ing.api_keys_env or "ingress.api_keys_env")

    def _deny(self, request: Request, endpoint: str) -> JSONResponse | None:
        """The answer to a request that may not go on (no or a wrong API key: 401; a Serve proxy hint
        header: 400), counted; None when it may."""
        try:
            self.auth.check(request.headers.get("authorization"))
            if not self.cfg.ingress.accept_serve_hint_headers:
                refuse_serve_hints(request.headers)
        except APIError as e:
            self.metrics.requests.labels(endpoint, str(e.status)).inc()
            return error_response(e)
        return None

    def _metrics_store(self):
        r = self.cfg.router
        return get_metrics_store(self.cfg.metrics_actor_name, r.namespace, orphan_timeout_s=r.orphan_timeout_s,
                                 resources=r.resources)

    @staticmethod
    def _replica_id() -> str | None:
        try:
            return serve.get_replica_context().replica_id.unique_id
        except Exception:  # not in a replica (unit tests): the publisher picks a random id
            return None

    # ---- one request -------------------------------------------------------------------------
    async def _predict(self, conversation, model: str) -> float:
        """The proxy pool's prediction within ``proxy.timeout_s`` (the one prediction deadline), else the
        heuristic's. Every prediction that is not the proxy model's own is counted by reason."""
        try:
            answer = await asyncio.wait_for(self.proxy.predict.remote(conversation, model),
                                            timeout=self.cfg.proxy.timeout_s)
        except asyncio.TimeoutError:
            reason = "timeout"
        except Exception as e:  # a failed proxy must never block serving
            reason = "error"
            logger.debug("proxy prediction failed (%r): heuristic fallback", e)
        else:
            if answer.fallback is not None:  # the pool answered, but not with its model (busy, ...)
                self.metrics.proxy_fallbacks.labels(answer.fallback).inc()
            return answer.tokens
        self.metrics.proxy_fallbacks.labels(reason).inc()
        return float(self.fallback.predict([text_for(self.fallback, conversation)], [model])[0])

    async def _prepare(self, request: Request, kind: str) -> Prepared:
        """Headers and body to a validated request with its prompt counted (deployments/prepare.py)."""
        try:
            return await self.preparer.prepare(request.headers, request.stream(), kind)
        except ClientDisconnect:
            raise APIError(499, "the client went away before its request body arrived",
                           code="client_disconnected") from None

    async def _handle(self, request: Request, kind: str):
        t0 = time.time()
        endpoint = "chat" if kind == "chat" else "completions"
        try:
            parsed, prompt, max_tokens = await self._prepare(request, kind)
        except APIError as e:
            self.metrics.requests.labels(endpoint, str(e.status)).inc()
            return error_response(e)
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        # serve-default orders nothing by length: no prediction (0 stands in; no router reads it).
        predicted = await self._predict(parsed.conversation, parsed.model) if self.central else 0.0
        meta = RequestMeta(rid, parsed.model, prompt.num_tokens, predicted, max_tokens, t0,
                           slo_ttft_s=parsed.slo_ttft_s, slo_jct_s=parsed.slo_jct_s)
        request = GenerationRequest(
            request_id=rid, prompt=prompt.text, max_tokens=max_tokens, num_prompt_tokens=prompt.num_tokens,
            prompt_token_ids=tuple(prompt.token_ids) if prompt.token_ids else None, temperature=parsed.temperature,
            top_p=parsed.top_p, seed=parsed.seed, replay_output_tokens=parsed.replay_output_tokens, meta=meta,
            replay_remaining_predictions=parsed.replay_remaining_predictions,
            proxy_text=text_for(self.fallback, parsed.conversation) if self.send_proxy_text else None)
        run = _Run(self, meta, request, restart_after_output=not parsed.stream)
        events = run.events()
        try:
            await events.__anext__()  # Started: dispatched and running
        except APIError as e:
            await events.aclose()
            self.metrics.requests.labels(endpoint, str(e.status)).inc()
            return error_response(e)
        self.metrics.queue_wait.observe(run.dispatched_at - t0)
        headers = {"x-ssjf-request-id": rid, "x-replica-id": run.replica_id or "",
                   # Where the time to start went: router calls, then routing the call to its start
                   # (serve-default: Serve's queue and routing, no router calls).
                   "x-ssjf-router-ms": f"{run.router_s * 1e3:.3f}",
                   "x-ssjf-start-ms": f"{(run.started_at - run.called_at) * 1e3:.3f}"}
        if self.central:
            self.metrics.predicted.observe(predicted)
            headers["x-predicted-tokens"] = f"{predicted:.1f}"
        if parsed.stream:
            return StreamingResponse(self._sse(parsed, rid, prompt.num_tokens, run, events, t0, endpoint),
                                     media_type="text/event-stream", headers=headers)
        return await self._collect(parsed, rid, prompt.num_tokens, run, events, t0, endpoint, headers)

    async def _collect(self, parsed, rid, num_prompt, run, events, t0, endpoint, headers):
        parts: list[str] = []
        num_out = 0
        finish = None
        stop = StopMatcher(parsed.stop)
        try:
            async for event in events:
                if isinstance(event, Restart):
                    parts, num_out, stop = [], 0, StopMatcher(parsed.stop)
                    continue
                num_out += event.num_tokens
                parts.append(stop.feed(event.text))
                if stop.stopped:
                    finish = FinishReason.STOP
                    break
                if event.finish_reason is not None:
                    parts.append(stop.flush())
                    finish = event.finish_reason
                    break
        except APIError as e:
            self.metrics.requests.labels(endpoint, str(e.status)).inc()
            return error_response(e)
        except asyncio.CancelledError:
            self.metrics.requests.labels(endpoint, "499").inc()  # the client went away
            raise
        except Exception as e:  # a fault of ours: still an answer, and counted as what it is
            logger.exception("request %s failed", rid)
            self.metrics.requests.labels(endpoint, "500").inc()
            return error_response(_internal_error(e))
        finally:
            await events.aclose()
        self.metrics.requests.labels(endpoint, "200").inc()
        self.metrics.e2e.observe(time.time() - t0)
        body = completion_response(rid, parsed.model, parsed.kind, "".join(parts), (finish or FinishReason.STOP).value,
                                   num_prompt, num_out)
        return JSONResponse(body, headers=headers)

    async def _sse(self, parsed, rid, num_prompt, run, events, t0, endpoint):
        created = int(time.time())
        model, kind = parsed.model, parsed.kind
        stop = StopMatcher(parsed.stop)
        num_out = 0
        finish = None
        first_token = True
        status = "200"
        try:
            if kind == "chat":
                yield sse(stream_chunk(rid, model, kind, created, role=True))
            async for delta in events:  # a stream never restarts: deltas only
                num_out += delta.num_tokens
                text = stop.feed(delta.text)
                if stop.stopped:
                    finish = FinishReason.STOP
                elif delta.finish_reason is not None:
                    text += stop.flush()
                    finish = delta.finish_reason
                if text:
                    if first_token:
                        first_token = False
                        self.metrics.ttft.observe(time.time() - t0)
                    yield sse(stream_chunk(rid, model, kind, created, text=text))
                if finish is not None:
                    break
            yield sse(stream_chunk(rid, model, kind, created, finish_reason=(finish or FinishReason.STOP).value))
            if parsed.include_usage:
                yield sse(stream_chunk(rid, model, kind, created, usage_dict=usage(num_prompt, num_out), no_choices=True))
            yield SSE_DONE
            self.metrics.e2e.observe(time.time() - t0)
        except Exception as e:  # headers are gone: the error travels in the stream, then [DONE]
            if not isinstance(e, APIError):  # a fault of ours (the run turns call failures into APIError)
                logger.exception("stream %s failed", rid)
                e = _internal_error(e)
            status = str(e.status)
            yield sse(e.body())
            yield SSE_DONE
        except asyncio.CancelledError:
            status = "499"  # the client went away
            raise
        finally:
            self.metrics.requests.labels(endpoint, status).inc()
            await events.aclose()
