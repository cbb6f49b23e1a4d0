"""Response body format: JSON or msgpack, following the request unless Accept says otherwise."""

from __future__ import annotations

from aiohttp import web

from pe_common.protocol import encode_json, encode_msgpack
from pe_server.state import BODY_KIND

JSON = "application/json"
MSGPACK = "application/msgpack"


def wants_msgpack(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "").lower()
    if "msgpack" in accept:
        return True
    if JSON in accept:
        return False
    return request.get(BODY_KIND) == "msgpack"


def struct_response(request: web.Request, obj: object, status: int = 200) -> web.Response:
    if wants_msgpack(request):
        return web.Response(status=status, body=encode_msgpack(obj), content_type=MSGPACK)
    return web.Response(status=status, body=encode_json(obj), content_type=JSON)
