"""``/v1/embeds`` (pe extension): upload prompt embeddings once, reference them by id.

``POST`` decodes and validates the tensor exactly as an inline embeds item (same codec, limits
and errors) and stores the model-dtype copy; ``GET`` one or the caller's list, ``DELETE`` one.
Requests then name an object where they would carry its tensor (``{"id": "emb_..."}``); the
request builder resolves it (see :mod:`pe_server.embeds`).
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from pe_common.protocol import EmbedsDeleted, EmbedsList, RawEmbeds
from pe_common.protocol.common import RequestStruct
from pe_server.embeds import embeds_not_found, put_embeds, store_tenant, wire_object
from pe_server.errors import APIError
from pe_server.negotiation import struct_response
from pe_server.request_builder import PromptBuilder, check_context
from pe_server.routes.intake import decode_body
from pe_server.state import GENERATION, STATE

routes = web.RouteTableDef()
MAX_LIST_LIMIT = 100


class EmbedsUpload(RequestStruct, kw_only=True):
    """The upload body: one embeds item (raw bytes need ``dtype`` and ``shape``)."""

    data: Any = None  # base64 text (JSON) or bytes (msgpack); checked after decoding
    dtype: str | None = None
    shape: list[int] | None = None

    @property
    def payload(self) -> Any:
        if self.dtype is not None or self.shape is not None:
            if self.dtype is None or self.shape is None:
                raise APIError.bad_request(
                    "`dtype` and `shape` must be given together.",
                    code="invalid_parameter",
                    param="data",
                )
            return RawEmbeds(data=self.data, dtype=self.dtype, shape=self.shape)
        return self.data


def decode_upload(body: bytes, kind: str, *, limits: Any = None) -> EmbedsUpload:
    module: Any = msgspec.msgpack if kind == "msgpack" else msgspec.json
    try:
        upload = module.decode(body, type=EmbedsUpload)
    except msgspec.ValidationError as exc:
        raise APIError.bad_request(
            f"Invalid upload body: {str(exc)[:200]}", code="invalid_parameter", param="data"
        ) from None
    except msgspec.DecodeError:
        raise APIError.bad_request(
            "The request body could not be decoded.", code="invalid_json"
        ) from None
    if not isinstance(upload.data, (str, bytes)) or not upload.data:
        raise APIError.bad_request(
            "`data` must hold the tensor: base64 text, or bytes in a msgpack body.",
            code="missing_parameter",
            param="data",
        )
    return upload


@routes.post("/v1/embeds")
@GENERATION
async def create_embeds(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    upload = await decode_body(request, decode_upload)
    builder = PromptBuilder(state, request)
    builder.check_embeds_allowed(1)
    payload = upload.payload
    builder.precheck_embeds([payload], None)
    (tensor,) = await builder.decode_embeds([payload], param="data")
    check_context(state.backend.info.max_model_len, int(tensor.shape[0]), None)
    obj = put_embeds(request, tensor)
    return struct_response(request, wire_object(obj), status=201)


@routes.get("/v1/embeds")
async def list_embeds(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        limit = -1
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise APIError.bad_request(
            f"`limit` must be an integer between 1 and {MAX_LIST_LIMIT}.",
            code="invalid_parameter",
            param="limit",
        )
    after = request.query.get("after")
    objects, has_more = state.embeds_store.list(store_tenant(request), limit=limit, after=after)
    data = [wire_object(o) for o in objects]
    return struct_response(
        request,
        EmbedsList(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=has_more,
        ),
    )


@routes.get("/v1/embeds/{embeds_id}")
async def retrieve_embeds(request: web.Request) -> web.StreamResponse:
    from pe_engine.inputs.embeds_store import EmbedsNotFoundError

    state = request.app[STATE]
    embeds_id = request.match_info["embeds_id"]
    try:
        obj = state.embeds_store.get(embeds_id, store_tenant(request))
    except EmbedsNotFoundError:
        raise embeds_not_found(embeds_id, "id") from None
    return struct_response(request, wire_object(obj))


@routes.delete("/v1/embeds/{embeds_id}")
async def delete_embeds(request: web.Request) -> web.StreamResponse:
    from pe_engine.inputs.embeds_store import EmbedsNotFoundError

    state = request.app[STATE]
    embeds_id = request.match_info["embeds_id"]
    try:
        state.embeds_store.delete(embeds_id, store_tenant(request))
    except EmbedsNotFoundError:
        raise embeds_not_found(embeds_id, "id") from None
    return struct_response(request, EmbedsDeleted(id=embeds_id))
