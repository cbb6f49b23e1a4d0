"""The middleware chain, outermost first: access log, errors, auth, body checks, admission.

Everything here runs before a handler reads the body, so unknown routes, missing keys, wrong
content types, oversized declared lengths and a full server are all refused without reading it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.web_urldispatcher import SystemRoute

from pe_server.auth import bearer_token, digest
from pe_server.config import BYTES_IN_FLIGHT_FACTOR, SMALL_BODY_BYTES
from pe_server.embeds import release_pins
from pe_server.errors import APIError, error_response, to_api_error
from pe_server.state import BODY_KIND, BODY_LIMIT, REQUEST_ID, STATE, STREAM, policy_of

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
access_log = logging.getLogger("pe_server.access")
log = logging.getLogger("pe_server")

BODY_TYPES = {"application/json": "json", "application/msgpack": "msgpack"}
BODY_TYPES["application/x-msgpack"] = "msgpack"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
MAX_LOGGED_PATH = 200
CLIENT_GONE = 499  # nginx's code for "client closed the request"; never reaches the client


def new_request_id() -> str:
    return secrets.token_hex(12)


def route_name(request: web.Request) -> str:
    """A bounded label for metrics: the route's path template, never the raw URL."""
    if isinstance(request.match_info.route, SystemRoute):
        return "unmatched"
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One log line and one metric sample per request."""
    state = request.app[STATE]
    request[REQUEST_ID] = new_request_id()
    start = time.perf_counter()
    status, num_out = CLIENT_GONE, 0
    try:
        response = await handler(request)
        status = response.status
        stream = request.get(STREAM)
        num_out = stream.num_bytes if stream is not None else (response.content_length or 0)
        if not response.prepared:
            response.headers["X-Request-Id"] = request[REQUEST_ID]
        return response
    finally:
        state.metrics.requests.labels(route_name(request), str(status)).inc()
        access_log.info(
            "%s %s %s %d in=%d out=%d %.1fms",
            request[REQUEST_ID],
            request.method,
            request.rel_url.raw_path[:MAX_LOGGED_PATH],
            status,
            request.content_length or 0,
            num_out,
            (time.perf_counter() - start) * 1000,
        )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turns every failure into the OpenAI envelope; nothing internal reaches the body."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = to_api_error(exc)
    except asyncio.CancelledError:
        raise
    except ConnectionError:  # the client is gone: nothing can be sent, nothing to log
        return web.Response(status=CLIENT_GONE)
    except Exception as exc:
        error = to_api_error(exc, request.get(REQUEST_ID))
    stream = request.get(STREAM)
    if stream is not None and stream.is_open:
        return stream.response  # the stream already reported the error itself
    return error_response(error)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Deny by default: every route but the public ones needs the key (decided on the route)."""
    state = request.app[STATE]
    if not state.auth.is_enabled:
        check_loopback_host(request, state.config.is_loopback)
    elif not policy_of(request).is_public and not state.auth.is_authorized(
        request.headers.get("Authorization")
    ):
        raise APIError.unauthorized()
    return await handler(request)


def check_loopback_host(request: web.Request, is_loopback: bool) -> None:
    """Keyless loopback servers answer only loopback Host names (DNS rebinding)."""
    if not is_loopback:
        return
    try:
        host = request.url.host
    except ValueError:
        host = None
    if host not in LOOPBACK_HOSTS:
        raise APIError.bad_request("Host header not allowed.", code="invalid_host")


@web.middleware
async def body_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Content-Encoding, Content-Type and declared Content-Length, before any body byte is read."""
    policy = policy_of(request)
    if not policy.has_body or request.method != "POST":
        return await handler(request)
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise APIError.unsupported_encoding()
    kind = BODY_TYPES.get(request.content_type)
    if kind is None:
        raise APIError.unsupported_media_type()
    config = request.app[STATE].config
    limit = config.max_body_bytes if policy.is_generation else SMALL_BODY_BYTES
    if request.content_length is not None and request.content_length > limit:
        raise APIError.request_too_large(limit)
    request[BODY_LIMIT] = limit
    request[BODY_KIND] = kind
    return await handler(request)


@web.middleware
async def admission_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A slot and a bytes reservation now, or 503 with Retry-After; never a queue."""
    policy = policy_of(request)
    if not policy.is_admitted:
        return await handler(request)
    state = request.app[STATE]
    retry_after = state.config.retry_after
    if state.is_draining:
        state.metrics.rejections.labels("draining").inc()
        raise APIError.draining(retry_after)
    if policy.is_generation and not state.backend.is_healthy:
        state.metrics.rejections.labels("engine_unavailable").inc()
        raise APIError.engine_unavailable(retry_after)
    tenant = tenant_of(request, state.auth.is_enabled)
    if state.admission.is_over_quota(tenant):
        state.metrics.rejections.labels("quota").inc()
        raise APIError.rate_limited(retry_after)
    declared = request.content_length
    body_bytes = declared if declared is not None else request.get(BODY_LIMIT, SMALL_BODY_BYTES)
    ticket = state.admission.try_acquire(BYTES_IN_FLIGHT_FACTOR * body_bytes, tenant)
    if ticket is None:
        state.metrics.rejections.labels("capacity").inc()
        raise APIError.overloaded(retry_after)
    try:
        return await handler(request)
    finally:
        state.admission.release(ticket)
        release_pins(request)  # the stored embeds the request named


def tenant_of(request: web.Request, by_key: bool) -> str:
    """Whose quota a request counts against: a digest of its (already checked) API key, or
    its peer address on a keyless server. Never the raw key: the table is kept in memory."""
    if by_key:
        return digest(bearer_token(request.headers.get("Authorization"))).hex()[:32]
    return request.remote or ""


MIDDLEWARES = (
    access_log_middleware,
    error_middleware,
    auth_middleware,
    body_middleware,
    admission_middleware,
)
