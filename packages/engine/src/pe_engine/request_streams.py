"""Per-request output streams: how the engine thread hands deltas to the consumers' event loops.

:class:`StreamRegistry` is the one table both sides share (the consumers open, close and abort;
the engine thread delivers and, when it dies, fails every stream), behind one lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import OrderedDict, deque

from pe_engine.outputs import RequestOutput, merge_delta

# Ids of ended requests remembered, so that a late abort of one is not sent to the engine.
NUM_ENDED_REMEMBERED = 4096

StreamItem = RequestOutput | BaseException


class RequestStream:
    """One request's deltas on their way from the engine thread to the consumer's event loop:
    a deque and one future to wake the consumer (lighter than an asyncio.Queue, which costs a
    third of the event loop's time when 64 requests stream). Deltas a slow consumer has not
    taken yet are merged into one, so it never holds more than one output per request."""

    __slots__ = ("is_aborted", "items", "loop", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: deque[StreamItem] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.is_aborted = False  # its one abort was submitted

    def put(self, item: StreamItem) -> None:
        """On the consumer's loop."""
        last = self.items[-1] if self.items else None
        if isinstance(item, RequestOutput) and isinstance(last, RequestOutput):
            merge_delta(last, item)
            return
        self.items.append(item)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def get(self) -> StreamItem:
        while not self.items:
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.items.popleft()


class StreamRegistry:
    """The open streams by request id, and the ids of recently ended requests (so that each
    request is aborted at most once, and never after its stream ended)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[str, RequestStream] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()

    def open(self, request_id: str) -> RequestStream:
        """A stream on the running event loop; an id may be in flight only once at a time."""
        stream = RequestStream(asyncio.get_running_loop())
        with self._lock:
            if request_id in self._streams:
                raise ValueError(f"request id {request_id!r} is already running")
            self._streams[request_id] = stream
            self._ended.pop(request_id, None)
        return stream

    def close(self, request_id: str, stream: RequestStream) -> bool:
        """End the request's stream; returns whether it was aborted already."""
        with self._lock:
            self._streams.pop(request_id, None)
            is_aborted, stream.is_aborted = stream.is_aborted, True
            self._ended[request_id] = None
            if len(self._ended) > NUM_ENDED_REMEMBERED:
                self._ended.popitem(last=False)
        return is_aborted

    def claim_abort(self, request_id: str) -> bool:
        """Whether an abort of ``request_id`` is due now (False for an ended stream or one
        aborted before); a stream it is due for counts as aborted from here on."""
        with self._lock:
            if request_id in self._ended:
                return False
            stream = self._streams.get(request_id)
            if stream is not None:
                if stream.is_aborted:
                    return False
                stream.is_aborted = True
        return True

    def deliver(self, items: list[tuple[str, StreamItem]]) -> None:
        """Hand a step's outputs to their streams: one wake-up per event loop, not one per
        request (each wake-up is a write to the loop's self-pipe and a turn of the loop)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestStream, StreamItem]]] = {}
        with self._lock:
            for request_id, item in items:
                stream = self._streams.get(request_id)
                if stream is not None:
                    by_loop.setdefault(stream.loop, []).append((stream, item))
        for loop, batch in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the consumer's loop is closed
                loop.call_soon_threadsafe(_put_all, batch)

    def fail_all(self, exc: BaseException) -> None:
        """Wake every stream with ``exc`` on its own loop, without the delivery path (it may be
        what failed); a stream whose loop is gone is skipped, the others still fail."""
        with self._lock:
            streams = list(self._streams.values())
        for stream in streams:
            with contextlib.suppress(Exception):  # e.g. RuntimeError: the loop is closed
                stream.loop.call_soon_threadsafe(stream.put, exc)


def _put_all(batch: list[tuple[RequestStream, StreamItem]]) -> None:
    for stream, item in batch:
        stream.put(item)
