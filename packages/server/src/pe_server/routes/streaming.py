"""A streamed generation: SSE chunks, a final error event on failure, abort when the client
leaves or stops reading."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from pe_engine.outputs import extend_logprobs
from pe_server.errors import APIError, to_api_error
from pe_server.generation import Generation
from pe_server.sse import EventStream
from pe_server.state import STREAM, ServerState

if TYPE_CHECKING:
    from pe_engine.outputs import CompletionOutput, Logprob, RequestOutput
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
                raise  # the error middleware answers it with its status
            await self.send_error(to_api_error(exc, request_id))

    async def send_error(self, error: APIError) -> None:
        """The final error event of a stream that already began (then ``[DONE]``)."""
        self.is_ok = False
        try:
            await self.send(error.to_bytes())
        except ConnectionError:
            self.is_connected = False

    async def outputs(self, gen: Generation) -> AsyncIterator[tuple[int, RequestOutput]]:
        """The generation's outputs; a failure after the stream began becomes its final error
        event (before, the error middleware answers it with its status)."""
        try:
            async for item in gen.outputs():
                yield item
        except Exception as exc:
            if not self.stream.is_open:
                raise
            await self.send_error(to_api_error(exc))

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


@dataclass
class PendingChunk:
    """One branch's output not sent yet. A chunk goes out once there is something to show
    (text, a finish reason); until then the ids and logprobs of tokens that showed no text
    (held back for a stop string, half a character) wait for it."""

    is_started: bool = False  # a chunk of this branch was sent
    is_done: bool = False  # its last chunk, with the finish reason, was sent
    num_chars: int = 0  # text characters sent so far
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None

    def add(self, out: CompletionOutput) -> None:
        self.text += out.text
        self.token_ids.extend(out.token_ids)
        self.logprobs = extend_logprobs(self.logprobs, out.logprobs)
        self.finish_reason, self.stop_reason = out.finish_reason, out.stop_reason

    def take(self) -> tuple[str, list[int], list[dict[int, Logprob]] | None]:
        """What the next chunk sends: the text, token ids and logprobs gathered since the last."""
        taken = (self.text, self.token_ids, self.logprobs)
        self.is_started = True
        self.is_done = self.is_finished
        self.num_chars += len(self.text)
        self.text, self.token_ids = "", []
        self.logprobs = None if self.logprobs is None else []
        return taken
