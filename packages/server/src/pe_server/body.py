"""Reading request bodies under a size cap and a deadline."""

from __future__ import annotations

import asyncio

from aiohttp import web

from pe_server.errors import APIError

# Minimum upload rate assumed when computing the body deadline.
MIN_UPLOAD_BYTES_PER_S = 1_000_000


def body_deadline(base_timeout: float, num_bytes: int | None) -> float:
    return base_timeout + (num_bytes or 0) / MIN_UPLOAD_BYTES_PER_S


async def read_body(request: web.Request, limit: int, base_timeout: float) -> bytearray:
    """The whole body, or 413 past ``limit`` (chunked bodies too) / 408 past the deadline."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise APIError.request_too_large(limit)
    try:
        return await asyncio.wait_for(
            _read_capped(request, limit), body_deadline(base_timeout, declared or limit)
        )
    except asyncio.TimeoutError:
        raise APIError.request_timeout() from None


async def _read_capped(request: web.Request, limit: int) -> bytearray:
    body = bytearray()
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return body
        if len(body) + len(chunk) > limit:
            raise APIError.request_too_large(limit)
        body += chunk
