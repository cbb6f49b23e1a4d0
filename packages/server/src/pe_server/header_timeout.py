"""A deadline for a request's head: slowloris connections are closed, no handler runs.

aiohttp has a keep-alive timeout and pe bounds body reads, but nothing bounds the time a client
may take to send the request line and headers: one byte a second holds a connection (and a file
descriptor) for as long as the client likes. :func:`guard_connections` wraps the protocol
factory of an :class:`aiohttp.web.AppRunner` so that a connection that has not delivered a
complete head within ``timeout`` seconds (counted from the connection, or from the first byte
of its next request on keep-alive) is closed.

Whether a head is complete is read from aiohttp's request handler (its request counter and
whether a request is being handled). Those are not public API: if an aiohttp version lacks
them, the guard logs once and stands aside, leaving the keep-alive timeout in charge.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("pe_server")
_REQUIRED = ("_request_count", "_request_in_progress")


class HeaderDeadline(asyncio.Protocol):
    """Forwards everything to aiohttp's handler; closes the transport at a missed deadline."""

    def __init__(self, inner: Any, timeout: float, on_timeout: Callable[[], None]) -> None:
        self._inner = inner
        self._timeout = timeout
        self._on_timeout = on_timeout
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._count = 0

    # -- asyncio.Protocol, forwarded -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._inner.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)
        count = self._inner._request_count
        if count != self._count:  # a complete head arrived
            self._count = count
            self._cancel()
        elif data and self._timer is None and not self._inner._request_in_progress:
            self._arm()  # the first bytes of the next request's head

    def eof_received(self) -> bool | None:
        result: bool | None = self._inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- the deadline --------------------------------------------------------------------------

    def _arm(self) -> None:
        self._cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._timeout, self._expire, self._count)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, count: int) -> None:
        self._timer = None
        if self._inner._request_count != count or self._inner._request_in_progress:
            return  # a head arrived, or a request is being served: not a stalled head
        if self._transport is not None and not self._transport.is_closing():
            self._on_timeout()
            self._transport.close()


class _GuardedFactory:
    """Stands in for the runner's ``web.Server``: builds guarded protocols, forwards the rest."""

    def __init__(self, server: web.Server, timeout: float, on_timeout: Callable[[], None]) -> None:
        self._server = server
        self._timeout = timeout
        self._on_timeout = on_timeout

    def __call__(self) -> asyncio.Protocol:
        return HeaderDeadline(self._server(), self._timeout, self._on_timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


def guard_connections(
    runner: web.AppRunner, timeout: float, on_timeout: Callable[[], None] = lambda: None
) -> bool:
    """After ``runner.setup()`` and before any site starts: every connection gets a head
    deadline. Returns False (and changes nothing) where this aiohttp cannot support it."""
    server = runner.server
    if server is None:
        raise RuntimeError("guard_connections needs a runner that has been set up")
    if not all(hasattr(RequestHandler, name) for name in _REQUIRED):  # slots of the class
        log.warning("this aiohttp version hides what the header timeout needs; it is off")
        return False
    runner._server = _GuardedFactory(server, timeout, on_timeout)  # type: ignore[assignment]
    return True
