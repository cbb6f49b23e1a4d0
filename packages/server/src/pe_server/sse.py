"""Server-sent events: ``data: {json}\\n\\n`` lines ending with ``data: [DONE]``."""

from __future__ import annotations

import asyncio

from aiohttp import web

DONE = b"data: [DONE]\n\n"
# The most bytes chunked transfer encoding adds to one write (hex size line and CRLFs).
CHUNK_FRAMING = 32


class SlowReaderError(ConnectionError):
    """The client did not take a stream chunk within the write timeout."""


class EventStream:
    """One SSE response. Every write that could wait runs under a timeout, so a client that
    stops reading cannot hold its engine request (and KV blocks) hostage: the write fails, the
    handler aborts.
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
        if self._fits_without_waiting(len(data)):
            await self.response.write(data)
            return
        try:
            await asyncio.wait_for(self.response.write(data), self._write_timeout)
        except asyncio.TimeoutError:
            raise SlowReaderError("stream write timed out") from None

    def _fits_without_waiting(self, size: int) -> bool:
        """True when the socket's buffer takes ``size`` more bytes (plus chunk framing) below
        its high-water mark: the transport then cannot pause and aiohttp's write returns
        without waiting, so it needs no timeout. Skipping the timer matters: ``wait_for``
        costs a task and a timer per chunk, a fifth of the event loop's time in a burst."""
        transport = self._request.transport
        protocol = self._request.protocol
        if transport is None or transport.is_closing() or protocol.writing_paused:
            return False
        _, high = transport.get_write_buffer_limits()
        return transport.get_write_buffer_size() + size + CHUNK_FRAMING <= high
