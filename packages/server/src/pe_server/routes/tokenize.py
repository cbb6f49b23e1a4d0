"""POST /tokenize (a prompt or chat messages) and POST /detokenize."""

from __future__ import annotations

from aiohttp import web

from pe_common.protocol import (
    DetokenizeResponse,
    TokenizeResponse,
    decode_detokenize_request,
    decode_tokenize_request,
)
from pe_server.negotiation import struct_response
from pe_server.request_builder import ChatOptions
from pe_server.routes.chat_messages import collect_chat_input
from pe_server.routes.intake import take_in
from pe_server.state import SMALL_BODY

routes = web.RouteTableDef()


@routes.post("/tokenize")
@SMALL_BODY
async def tokenize(request: web.Request) -> web.Response:
    intake = await take_in(request, decode_tokenize_request)
    state, req, builder = intake.state, intake.req, intake.builder
    tokenizer = state.backend.tokenizer
    if req.messages is not None:
        options = ChatOptions.of(req)
        builder.check_chat_options(options)
        chat = collect_chat_input(req.messages)
        builder.check_embeds_allowed(len(chat.payloads), chat=True)
        tensors = await builder.decode_embeds(chat.payloads)
        prompt = await builder.chat_prompt(chat.messages(tensors), options)
        ids = list(prompt.token_ids)
    else:
        text = req.prompt or ""
        add_special = req.effective_add_special_tokens
        ids = await builder.run(
            lambda: list(tokenizer.encode(text, add_special_tokens=add_special))
        )
    token_strs = tokenizer.convert_ids_to_tokens(ids) if req.return_token_strs else None
    return struct_response(
        request,
        TokenizeResponse(
            count=len(ids),
            max_model_len=state.backend.info.max_model_len,
            tokens=ids,
            token_strs=token_strs,
        ),
    )


@routes.post("/detokenize")
@SMALL_BODY
async def detokenize(request: web.Request) -> web.Response:
    intake = await take_in(request, decode_detokenize_request)
    state, req, builder = intake.state, intake.req, intake.builder
    builder.check_token_ids(req.tokens, param="tokens")
    tokenizer = state.backend.tokenizer
    text = await builder.run(lambda: str(tokenizer.decode(req.tokens)))
    return struct_response(request, DetokenizeResponse(prompt=text))
