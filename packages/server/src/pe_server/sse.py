"""Server-sent events: ``data: {json}\\n\\n`` lines ending with ``data: [DONE]``."""

from __future__ import annotations

import asyncio

from aiohttp import web

DONE = b"data: [DONE]\n\n"


class SlowReaderError(ConnectionError):
    """The client did not take a stream chunk within the write timeout."""


class EventStream:
    """One SSE response. Every write runs under a timeout, so a client that stops reading
    cannot hold its engine request (and KV blocks) hostage: the write fails, the handler aborts.
    """

    def __init__(self, request: web.Request, write_timeout: float) -> None:
        self._request = request
        self._write_timeout = write_timeout
        self.num_bytes = 0
        self.response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            },
        )

    @property
    def is_open(self) -> bool:
        return self.response.prepared

    async def open(self) -> None:
        await self.response.prepare(self._request)

    async def send(self, payload: bytes) -> None:
        """Send one event whose data is ``payload`` (a JSON document)."""
        await self._write(b"data: " + payload + b"\n\n")

    async def send_done(self) -> None:
        await self._write(DONE)
        await self.response.write_eof()

    async def _write(self, data: bytes) -> None:
        self.num_bytes += len(data)
        try:
            await asyncio.wait_for(self.response.write(data), self._write_timeout)
        except asyncio.TimeoutError:
            raise SlowReaderError("stream write timed out") from None
