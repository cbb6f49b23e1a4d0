"""GET /v1/models and GET /v1/models/{model}."""

from __future__ import annotations

from aiohttp import web

from pe_common.protocol import ModelCard, ModelList
from pe_server.negotiation import struct_response
from pe_server.routes.intake import check_model
from pe_server.state import STATE, ServerState

routes = web.RouteTableDef()


def model_card(state: ServerState, name: str) -> ModelCard:
    return ModelCard(
        id=name,
        created=state.created,
        owned_by="pe",
        root=state.model_name,
        max_model_len=state.backend.info.max_model_len,
    )


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return struct_response(
        request, ModelList(data=[model_card(state, n) for n in state.config.model_names])
    )


@routes.get("/v1/models/{model}")
async def retrieve_model(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name = check_model(state, request.match_info["model"])
    return struct_response(request, model_card(state, name))
