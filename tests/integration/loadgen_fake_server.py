"""A scripted fake OpenAI-compatible server for the load generator's tests (real HTTP on loopback).

Each request's behaviour comes from a :class:`Script` chosen by the request's last user turn (or
prompt): how many content chunks, the delay before each, an HTTP error, an error event or a dropped
connection mid-stream, a hang. It records every request body so tests can check what was sent.
Runs on its own event loop in a thread, so both async tests and click's CliRunner can use it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Script:
    chunks: int = 3
    first_delay_s: float = 0.0
    gaps_s: list[float] = field(default_factory=list)  # delay before chunk 2, 3, ... (missing: 0)
    status: int = 200
    error_after: int | None = None  # send an error event after this many chunks
    drop_after: int | None = None  # end the stream after this many chunks, without finish_reason or [DONE]
    usage_tokens: int | None = None  # completion_tokens reported in usage (default: chunks)
    send_usage: bool = True
    finish_reason: str = "stop"

    def delay_before(self, i: int) -> float:
        if i == 0:
            return self.first_delay_s
        return self.gaps_s[i - 1] if i - 1 < len(self.gaps_s) else 0.0


class FakeOpenAIServer:
    def __init__(self, models: list[dict] | None = None):
        self.models = models if models is not None else [{"id": "fake-model", "object": "model", "owned_by": "test"}]
        self.scripts: dict[str, Script] = {}
        self.default = Script()
        self.bodies: list[dict] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeOpenAIServer:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def serve():
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="fake-openai", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake server did not start")
        return self

    async def _start(self):
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_post("/v1/completions", self._complete)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    async def _shutdown(self):
        await self._runner.cleanup()
        # Handlers still sleeping on a scripted delay: cancel them so the loop closes cleanly.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def reset(self) -> None:
        self.scripts.clear()
        self.default = Script()
        self.bodies.clear()

    # -- handlers ----------------------------------------------------------------------------
    async def _models(self, request):
        return web.json_response({"object": "list", "data": self.models})

    async def _complete(self, request):
        body = await request.json()
        self.bodies.append(body)
        chat = request.path.endswith("/chat/completions")
        key = body["messages"][-1]["content"] if chat else body.get("prompt", "")
        script = self.scripts.get(key, self.default)
        if script.status != 200:
            return web.json_response(
                {"error": {"message": f"scripted failure {script.status}", "type": "server_error", "code": script.status}},
                status=script.status)
        if body.get("stream"):
            return await self._stream(request, body, script, chat)
        for i in range(script.chunks):
            await asyncio.sleep(script.delay_before(i))
        text = "".join(f"t{i} " for i in range(script.chunks))
        choice = {"index": 0, "finish_reason": script.finish_reason}
        choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        payload = {"id": "x", "object": "chat.completion" if chat else "text_completion", "model": body["model"],
                   "choices": [choice]}
        if script.send_usage:
            payload["usage"] = {"prompt_tokens": 1, "completion_tokens": script.usage_tokens or script.chunks}
        return web.json_response(payload)

    async def _stream(self, request, body, script: Script, chat: bool):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def send(obj):
            data = obj if isinstance(obj, str) else json.dumps(obj)
            await resp.write(f"data: {data}\n\n".encode())

        def chunk(text, finish=None):
            choice = {"index": 0, "finish_reason": finish}
            choice.update({"delta": {"content": text} if text is not None else {}} if chat else {"text": text or ""})
            return {"id": "x", "object": "chat.completion.chunk" if chat else "text_completion", "choices": [choice]}

        if chat:  # OpenAI servers open with a role-only chunk: not a token
            await send({"id": "x", "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
        await resp.write(b": keep-alive comment\n\n")
        for i in range(script.chunks):
            if script.error_after is not None and i == script.error_after:
                await send({"error": {"message": "scripted stream error", "type": "server_error"}})
                await resp.write_eof()
                return resp
            if script.drop_after is not None and i == script.drop_after:
                await resp.write_eof()
                return resp
            await asyncio.sleep(script.delay_before(i))
            await send(chunk(f"t{i} "))
        await send(chunk(None if chat else "", finish=script.finish_reason))
        if script.send_usage and (body.get("stream_options") or {}).get("include_usage"):
            await send({"id": "x", "choices": [],
                        "usage": {"prompt_tokens": 1, "completion_tokens": script.usage_tokens or script.chunks}})
        await send("[DONE]")
        await resp.write_eof()
        return resp
