"""Server-sent events: an incremental parser and the Stream / AsyncStream iterators.

A stream yields typed chunks until ``data: [DONE]``, raises :class:`~pe_client.errors.APIError`
on an ``error`` event, and closes its HTTP response when it ends, when it is closed, when its
``with`` block exits, or when the loop over it is left early (the generator is closed), so that
the server sees the disconnect and aborts the request.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

import httpx
import msgspec

from pe_client._closing import AsyncClosing, Closing
from pe_client.errors import APIConnectionError, APIError, APIResponseValidationError

ChunkT = TypeVar("ChunkT")

DONE = "[DONE]"


@dataclass(frozen=True)
class ServerSentEvent:
    """One event: the joined ``data`` lines and the optional ``event`` / ``id`` / ``retry``."""

    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Incremental ``text/event-stream`` parser (WHATWG rules) fed with arbitrary byte chunks."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Consume bytes; return the events completed by them."""
        self._buffer += chunk
        events: list[ServerSentEvent] = []
        for line in self._take_lines():
            event = self._decode_line(line)
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[ServerSentEvent]:
        """End of input: a trailing partial line ends, and so does a pending event."""
        events: list[ServerSentEvent] = []
        tail = self._buffer.rstrip(b"\r")
        self._buffer = b""
        for line in (tail, b"") if tail else (b"",):
            event = self._decode_line(line)
            if event is not None:
                events.append(event)
        return events

    def _take_lines(self) -> Iterator[bytes]:
        buffer = self._buffer
        start = 0
        while True:
            cut = _next_line_end(buffer, start)
            if cut is None:
                break
            end, after = cut
            yield buffer[start:end]
            start = after
        self._buffer = buffer[start:]

    def _decode_line(self, raw: bytes) -> ServerSentEvent | None:
        line = raw.decode("utf-8", errors="replace")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data and self._event is None:
            self._id = None
            self._retry = None
            return None
        event = ServerSentEvent("\n".join(self._data), self._event, self._id, self._retry)
        self._data = []
        self._event = None
        self._retry = None
        return event


def _next_line_end(buffer: bytes, start: int) -> tuple[int, int] | None:
    """(end of line, start of the next) for the first line break at or after ``start``."""
    lf = buffer.find(b"\n", start)
    cr = buffer.find(b"\r", start)
    if cr == -1 or (lf != -1 and lf < cr):
        return None if lf == -1 else (lf, lf + 1)
    if cr + 1 == len(buffer):
        return None  # a lone CR at the end may be the first half of CRLF: wait for more
    return (cr, cr + 2) if buffer[cr + 1 : cr + 2] == b"\n" else (cr, cr + 1)


class ChunkDecoder(Generic[ChunkT]):
    """Turns the bytes of a stream into typed chunks, up to ``[DONE]`` (which sets ``is_done``)."""

    def __init__(self, chunk_type: type[ChunkT], response: httpx.Response) -> None:
        self._decoder = msgspec.json.Decoder(chunk_type)
        self._response = response
        self._events = SSEDecoder()
        self.is_done = False

    def feed(self, raw: bytes) -> Iterator[ChunkT]:
        """The chunks completed by ``raw``, each decoded as it is taken."""
        return self._until_done(self._events.feed(raw))

    def flush(self) -> Iterator[ChunkT]:
        """The chunks left at the end of the body."""
        return self._until_done(self._events.flush())

    def _until_done(self, events: list[ServerSentEvent]) -> Iterator[ChunkT]:
        for event in events:
            chunk = self.decode(event)
            if chunk is None:
                self.is_done = True
                return
            yield chunk

    def decode(self, event: ServerSentEvent) -> ChunkT | None:
        """One event's chunk; ``None`` marks the end (``[DONE]``)."""
        if event.data.strip() == DONE:
            return None
        data = event.data.encode()
        if event.event == "error" or b'"error"' in data:
            self._raise_if_error(data)
        try:
            return self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise APIResponseValidationError(
                f"malformed stream chunk: {exc}", response=self._response
            ) from None

    def interrupted(self, exc: httpx.TransportError) -> APIConnectionError:
        """The error for a body cut off before ``[DONE]``."""
        return APIConnectionError(
            request=self._response.request, message=f"stream interrupted: {exc}"
        )

    def _raise_if_error(self, data: bytes) -> None:
        try:
            value = msgspec.json.decode(data)
        except msgspec.DecodeError:
            value = {"error": {"message": data.decode(errors="replace")[:500]}}
        info = value.get("error") if isinstance(value, Mapping) else None
        if not isinstance(info, Mapping):
            return
        message = info.get("message")
        raise APIError(
            message if isinstance(message, str) else "error event in stream",
            request=self._response.request,
            body=info,
            request_id=self._response.headers.get("x-request-id"),
        )


class BaseStream(Generic[ChunkT]):
    """The HTTP response and its chunk decoder; the shells below only read and close."""

    _iterator: object

    def __init__(self, chunk_type: type[ChunkT], response: httpx.Response) -> None:
        self.response = response
        self._chunks = ChunkDecoder(chunk_type, response)
        self._iterator = self._stream()

    def _stream(self) -> object:
        raise NotImplementedError


class Stream(BaseStream[ChunkT], Closing):
    """A synchronous stream of typed chunks; iterate it, ideally inside ``with``."""

    _iterator: Generator[ChunkT, None, None]

    def _stream(self) -> Generator[ChunkT, None, None]:
        try:
            for raw in self.response.iter_bytes():
                yield from self._chunks.feed(raw)
                if self._chunks.is_done:
                    return
            yield from self._chunks.flush()
        except httpx.TransportError as exc:
            raise self._chunks.interrupted(exc) from exc
        finally:
            self.response.close()

    def __iter__(self) -> Iterator[ChunkT]:
        # One iterator per stream (as in the OpenAI SDK): `next(iter(stream))` must not close it.
        return self

    def __next__(self) -> ChunkT:
        return next(self._iterator)

    def close(self) -> None:
        """Close the HTTP response (the server aborts a request that is still running)."""
        self._iterator.close()
        self.response.close()


class AsyncStream(BaseStream[ChunkT], AsyncClosing):
    """An asynchronous stream of typed chunks; iterate it, ideally inside ``async with``."""

    _iterator: AsyncGenerator[ChunkT, None]

    async def _stream(self) -> AsyncGenerator[ChunkT, None]:
        try:
            async for raw in self.response.aiter_bytes():
                for chunk in self._chunks.feed(raw):
                    yield chunk
                if self._chunks.is_done:
                    return
            for chunk in self._chunks.flush():
                yield chunk
        except httpx.TransportError as exc:
            raise self._chunks.interrupted(exc) from exc
        finally:
            await self.response.aclose()

    def __aiter__(self) -> AsyncIterator[ChunkT]:
        return self

    async def __anext__(self) -> ChunkT:
        return await self._iterator.__anext__()

    async def close(self) -> None:
        """Close the HTTP response (the server aborts a request that is still running)."""
        await self._iterator.aclose()
        await self.response.aclose()
