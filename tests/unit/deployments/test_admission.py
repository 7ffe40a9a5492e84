"""Admission at the ingress (deployments.admission): at most ``limit`` POSTs in flight, counted before
the handler reads a body and held until the response ends; beyond it a 429 with Retry-After and an
OpenAI-style body, at once."""

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from deployments.admission import AdmissionGate, InFlightLimit


def make_app(gate: AdmissionGate, release: asyncio.Event, bodies_read: list):
    async def generate(request):
        bodies_read.append(await request.body())
        await release.wait()
        return JSONResponse({"ok": True})

    async def stream(request):
        async def chunks():
            yield b"data: 1\n\n"
            await release.wait()
            yield b"data: [DONE]\n\n"
        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def health(request):
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/v1/completions", generate, methods=["POST"]),
                            Route("/v1/chat/completions", stream, methods=["POST"]),
                            Route("/healthz", health)])
    app.add_middleware(InFlightLimit, gate=gate)
    return app


async def test_beyond_the_limit_a_post_is_refused_at_once_before_its_body_is_read():
    gate = AdmissionGate()
    rejected = []
    gate.configure(2, retry_after_s=1.5, on_reject=rejected.append)
    release, bodies = asyncio.Event(), []
    app = make_app(gate, release, bodies)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        held = [asyncio.create_task(client.post("/v1/completions", content=b"one")),
                asyncio.create_task(client.post("/v1/chat/completions", content=b"two"))]
        while gate.in_flight < 2:
            await asyncio.sleep(0.001)
        refused = await client.post("/v1/completions", content=b"three")
        assert refused.status_code == 429 and refused.headers["retry-after"] == "2"
        error = refused.json()["error"]
        assert error["code"] == "ingress_full" and error["type"] == "rate_limit_error" and error["param"] is None
        assert "ingress.max_in_flight" in error["message"]
        assert bodies == [b"one"] and rejected == ["/v1/completions"]  # the third body was never read
        assert (await client.get("/healthz")).status_code == 200  # probes always pass
        release.set()
        answers = await asyncio.gather(*held)
        assert [a.status_code for a in answers] == [200, 200]
        assert answers[1].text.endswith("data: [DONE]\n\n")  # a stream holds its place to its last byte
        assert gate.in_flight == 0
        assert (await client.post("/v1/completions", content=b"four")).status_code == 200


async def test_an_unconfigured_gate_admits_everything():
    gate = AdmissionGate()
    release, bodies = asyncio.Event(), []
    release.set()
    app = make_app(gate, release, bodies)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        answers = await asyncio.gather(*[client.post("/v1/completions", content=b"x") for _ in range(5)])
    assert [a.status_code for a in answers] == [200] * 5 and gate.in_flight == 0


async def test_a_handler_that_fails_still_gives_its_place_back():
    gate = AdmissionGate()
    gate.configure(1, retry_after_s=1.0)

    async def boom(request):
        raise RuntimeError("bug")

    app = Starlette(routes=[Route("/v1/completions", boom, methods=["POST"])])
    app.add_middleware(InFlightLimit, gate=gate)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.post("/v1/completions")).status_code == 500
        assert gate.in_flight == 0
        assert (await client.post("/v1/completions")).status_code == 500  # admitted again: not a 429
