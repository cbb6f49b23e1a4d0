"""A streamed generation: SSE chunks, a final error event on failure, abort when the client
leaves or stops reading."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING

from aiohttp import web

from pe_server.errors import APIError
from pe_server.generation import Generation
from pe_server.sse import EventStream
from pe_server.state import STREAM, ServerState

log = logging.getLogger("pe_server")

if TYPE_CHECKING:
    from pe_engine.outputs import RequestOutput
    from pe_engine.prompt import Prompt
    from pe_engine.sampling_params import SamplingParams


class StreamSession:
    """One SSE response around one :class:`Generation`.

    The response starts with the first event, so a failure before any output (the engine
    refusing the request) is still a plain JSON error with its status, as in vLLM; after
    that, errors become a final ``error`` event. ``is_ok`` turns False once an error event
    was sent; ``is_connected`` once a write failed (client gone, or it did not read within
    the write timeout: the engine requests are then aborted and nothing more is written).
    """

    def __init__(self, request: web.Request, state: ServerState) -> None:
        self.state = state
        self.stream = EventStream(request, state.config.stream_write_timeout)
        request[STREAM] = self.stream
        self.is_ok = True
        self.is_connected = True

    @asynccontextmanager
    async def generation(
        self,
        request_id: str,
        prompts: Sequence[Prompt],
        params: SamplingParams | Sequence[SamplingParams],
    ) -> AsyncIterator[Generation]:
        try:
            async with Generation(
                self.state.backend, self.state.metrics, request_id, prompts, params
            ) as gen:
                yield gen
        except ConnectionError:  # includes SlowReaderError; the engine requests were aborted
            self.is_connected = False
        except Exception as exc:
            if not self.stream.is_open:
                raise
            if not isinstance(exc, APIError):
                log.exception("stream %s failed", request_id)
                exc = APIError.internal()
            await self.send_error(exc)

    async def send_error(self, error: APIError) -> None:
        """The final error event of a stream that already began (then ``[DONE]``)."""
        self.is_ok = False
        try:
            await self.send(error.to_bytes())
        except ConnectionError:
            self.is_connected = False

    async def outputs(self, gen: Generation) -> AsyncIterator[tuple[int, RequestOutput]]:
        """The generation's outputs; an engine failure becomes a final error event."""
        try:
            async for item in gen.outputs():
                yield item
        except APIError as error:
            if not self.stream.is_open:
                raise
            await self.send_error(error)

    async def send(self, payload: bytes) -> None:
        if not self.stream.is_open:
            await self.stream.open()
        await self.stream.send(payload)

    async def finish(self) -> web.StreamResponse:
        if self.is_connected:
            with suppress(ConnectionError):
                if not self.stream.is_open:
                    await self.stream.open()
                await self.stream.send_done()
        return self.stream.response
