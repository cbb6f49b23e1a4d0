"""Operational routes: /health, /version, /metrics, /openapi.json."""

from __future__ import annotations

import functools

from aiohttp import web

from pe_common.protocol import encode_json, openapi_schema
from pe_server.errors import APIError
from pe_server.metrics import CONTENT_TYPE
from pe_server.state import PUBLIC, STATE
from pe_server.version import version_info

routes = web.RouteTableDef()


@routes.get("/health")
@PUBLIC
async def health(request: web.Request) -> web.Response:
    """200 while the engine serves; 503 when it is dead or the server is draining."""
    state = request.app[STATE]
    if state.is_draining:
        raise APIError.draining(state.config.retry_after)
    if not state.backend.is_healthy:
        raise APIError.engine_unavailable(state.config.retry_after)
    return web.Response(status=200)


@routes.get("/version")
@PUBLIC
async def version(request: web.Request) -> web.Response:
    return json_response(version_info())


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    if request.app[STATE].config.disable_fastapi_docs:  # vLLM's flag: the route is gone
        raise web.HTTPNotFound()
    return web.Response(body=openapi_bytes(), content_type="application/json")


def json_response(obj: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=encode_json(obj), content_type="application/json")


@functools.cache
def openapi_bytes() -> bytes:
    return encode_json(openapi_schema())
