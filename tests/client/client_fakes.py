"""A scripted fake HTTP server (aiohttp, in a thread) and canned payloads. No torch."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Reply:
    """One scripted answer. ``sse`` streams those byte chunks; ``hold_open`` then waits."""

    status: int = 200
    body: object = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    sse: list[bytes] | None = None
    chunk_delay: float = 0.0
    hold_open: bool = False
    delay: float = 0.0


@dataclass
class Seen:
    """A request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class FakeServer:
    """Answers each request with the next scripted :class:`Reply` (the last one repeats)."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.requests: list[Seen] = []
        self.disconnected = threading.Event()
        self.stream_finished = threading.Event()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests = []
        self.disconnected.clear()
        self.stream_finished.clear()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Seen(request.method, request.path, dict(request.headers), body))
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.sse is not None:
            return await self._stream(request, reply)
        payload = reply.body
        if not isinstance(payload, bytes):
            payload = json.dumps(payload).encode() if payload is not None else b""
        return web.Response(
            status=reply.status,
            body=payload,
            headers={"Content-Type": reply.content_type, **reply.headers},
        )

    async def _stream(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        response = web.StreamResponse(
            status=reply.status, headers={"Content-Type": "text/event-stream", **reply.headers}
        )
        await response.prepare(request)
        try:
            for chunk in reply.sse or []:
                await response.write(chunk)
                await asyncio.sleep(reply.chunk_delay)
            while reply.hold_open:
                await response.write(b": keep-alive\n\n")
                await asyncio.sleep(0.02)
        except (ConnectionError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        self.stream_finished.set()
        return response

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            app = web.Application(client_max_size=64 * 2**20)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, handler_cancellation=True)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)

    def stop(self) -> None:
        async def shutdown() -> None:
            assert self._runner is not None
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _payload(
    id_: str, object_: str, choice: Mapping[str, object], *, model: str = "m", usage: int = 0
) -> dict[str, object]:
    """A response or chunk with one choice; ``usage`` > 0 adds usage with that many tokens out."""
    payload: dict[str, object] = {"id": id_, "object": object_, "created": 1, "model": model}
    payload["choices"] = [{"index": 0, **choice}]
    if usage:
        payload["usage"] = {
            "prompt_tokens": 3,
            "completion_tokens": usage,
            "total_tokens": 3 + usage,
        }
    return payload


def completion_json(text: str = "Hello", model: str = "m") -> dict[str, object]:
    choice = {"text": text, "finish_reason": "length", "logprobs": None}
    return _payload("cmpl-1", "text_completion", choice, model=model, usage=1)


def chat_json(text: str = "Hi there") -> dict[str, object]:
    message = {"role": "assistant", "content": text}
    choice = {"message": message, "finish_reason": "stop", "logprobs": None}
    return _payload("chatcmpl-1", "chat.completion", choice, usage=2)


def sse(*payloads: object, done: bool = True) -> list[bytes]:
    """SSE byte chunks: one ``data:`` event per payload, then ``[DONE]``."""
    chunks = [b"data: " + json.dumps(p).encode() + b"\n\n" for p in payloads]
    if done:
        chunks.append(b"data: [DONE]\n\n")
    return chunks


def completion_chunk(text: str, finish_reason: str | None = None) -> dict[str, object]:
    choice = {"text": text, "finish_reason": finish_reason, "logprobs": None}
    return _payload("cmpl-1", "text_completion", choice)


def chat_chunk(content: str, finish_reason: str | None = None) -> dict[str, object]:
    delta = {"role": "assistant", "content": content}
    choice = {"delta": delta, "finish_reason": finish_reason, "logprobs": None}
    return _payload("chatcmpl-1", "chat.completion.chunk", choice)
