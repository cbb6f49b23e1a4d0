"""A small stand-in for ``vllm serve --enable-prompt-embeds`` (aiohttp, in a thread).

It records every ``/v1/completions`` body and answers with a scripted stream; a body whose
``max_tokens`` is a key of ``errors`` gets that status and vLLM's error envelope instead.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from aiohttp import web

MODEL = "upstream-tiny"
MAX_MODEL_LEN = 200
TOKEN_IDS = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]
ERRORS = {
    7: (400, "This model's maximum context length is 200 tokens.", "input_tokens"),
    9: (503, "Service Unavailable", None),
}
# max_tokens that makes the stream slow, so a client can leave in the middle.
SLOW_MAX_TOKENS = 150


class FakeUpstream:
    """``with FakeUpstream() as up: up.url, up.bodies, up.disconnects``."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.auth: list[str | None] = []  # the Authorization header of every request
        self.disconnects = 0
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def _stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def models(self, request: web.Request) -> web.Response:
        self.auth.append(request.headers.get("Authorization"))
        return web.json_response(
            {"object": "list", "data": [{"id": MODEL, "max_model_len": MAX_MODEL_LEN}]}
        )

    async def completions(self, request: web.Request) -> web.StreamResponse:
        self.auth.append(request.headers.get("Authorization"))
        body = await request.json()
        self.bodies.append(body)
        max_tokens = int(body.get("max_tokens") or 16)
        if max_tokens in ERRORS:
            status, message, param = ERRORS[max_tokens]
            error = {"message": message, "type": "BadRequestError", "param": param, "code": status}
            return web.json_response({"error": error}, status=status)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for index in range(int(body.get("n", 1))):
                await self._stream_choice(resp, body, index, max_tokens)
            await resp.write(b"data: [DONE]\n\n")
        except (asyncio.CancelledError, ConnectionError):
            self.disconnects += 1
            raise
        return resp

    async def _stream_choice(
        self, resp: web.StreamResponse, body: dict[str, Any], index: int, max_tokens: int
    ) -> None:
        ids = [TOKEN_IDS[(i + index) % len(TOKEN_IDS)] for i in range(max_tokens)]
        for step, token_id in enumerate(ids):
            last = step == len(ids) - 1
            choice: dict[str, Any] = {
                "index": index,
                "text": f"<{token_id}>",
                "token_ids": [token_id],
                "finish_reason": "length" if last else None,
                "stop_reason": None,
                "logprobs": None,
            }
            if body.get("logprobs") is not None:
                top = {f"token_id:{token_id}": -0.5, "token_id:3": -1.5}
                choice["logprobs"] = {
                    "tokens": [f"token_id:{token_id}"],
                    "token_logprobs": [-0.5],
                    "top_logprobs": [top],
                    "text_offset": [0],
                }
            chunk = {"id": "cmpl-x", "object": "text_completion", "model": MODEL,
                     "choices": [choice]}  # fmt: skip
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            if max_tokens >= SLOW_MAX_TOKENS:
                await asyncio.sleep(0.05)
