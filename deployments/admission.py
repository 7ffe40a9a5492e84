"""Admission at the ingress: at most ``ingress.max_in_flight`` generation requests per ingress replica.

The router caps its queue (``router.max_queued``), but a request reaches the router only after the
ingress has read its body, rendered and counted its prompt and asked the proxy pool: a flood would
pile up in the ingress first, all of it in memory. :class:`InFlightLimit` is an ASGI middleware
that counts each POST before anything reads its body and holds the count until the response's last
byte (a stream's too, or the client's disconnect); beyond the limit it answers 429 with
Retry-After and an OpenAI-style body (code ``ingress_full``) at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from starlette.responses import JSONResponse

from deployments.protocol import APIError


class AdmissionGate:
    """The count of requests in flight against ``limit`` (None: not configured yet, admit all).

    One per ingress replica process, shared by the middleware (built by Starlette on the first
    request) and the :class:`~deployments.ingress.Ingress` that configures it."""

    def __init__(self):
        self.limit: int | None = None
        self.retry_after_s = 1.0
        self.in_flight = 0
        self.on_reject: Callable[[str], None] = lambda path: None

    def configure(self, limit: int, retry_after_s: float, on_reject: Callable[[str], None] | None = None) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        if on_reject is not None:
            self.on_reject = on_reject

    def try_enter(self) -> bool:
        if self.limit is not None and self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)

    def rejection(self) -> APIError:
        return APIError(429, f"this server is at capacity ({self.limit} requests in flight on this ingress "
                             "replica, ingress.max_in_flight); retry later", type="rate_limit_error",
                        code="ingress_full", headers={"Retry-After": str(max(1, math.ceil(self.retry_after_s)))})


class InFlightLimit:
    """ASGI middleware: POST requests (the generation endpoints) pass through ``gate``; others always pass."""

    def __init__(self, app, gate: AdmissionGate):
        self.app = app
        self.gate = gate

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        if not self.gate.try_enter():
            error = self.gate.rejection()
            self.gate.on_reject(scope.get("path", ""))
            response = JSONResponse(error.body(), status_code=error.status, headers=error.headers)
            return await response(scope, receive, send)
        try:
            return await self.app(scope, receive, send)
        finally:
            self.gate.leave()
