"""The OpenAPI 3.1 document of pe's HTTP API, built from the wire structs."""

from __future__ import annotations

from importlib import metadata
from typing import Any

import msgspec

from pe_common.protocol.chat import (
    ChatCompletionRequestBody,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
)
from pe_common.protocol.completion import (
    CompletionRequestBody,
    CompletionResponse,
    CompletionStreamResponse,
)
from pe_common.protocol.error import ErrorResponse
from pe_common.protocol.model_list import ModelList
from pe_common.protocol.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequestBody,
    TokenizeResponse,
)

_REF = "#/components/schemas/{name}"
_ERROR_STATUSES = {
    "400": "Invalid request (the message names the parameter)",
    "401": "Missing or wrong API key",
    "413": "Request body too large",
    "415": "Unsupported content type or encoding",
    "503": "Overloaded or draining",
}

# (method, path, summary, request body type, response type, stream event type)
_ROUTES: list[tuple[str, str, str, type | None, type, type | None]] = [
    (
        "post",
        "/v1/completions",
        "Create a completion from text, token ids or prompt embeddings",
        CompletionRequestBody,
        CompletionResponse,
        CompletionStreamResponse,
    ),
    (
        "post",
        "/v1/chat/completions",
        "Create a chat completion; content parts may carry prompt embeddings",
        ChatCompletionRequestBody,
        ChatCompletionResponse,
        ChatCompletionStreamResponse,
    ),
    ("get", "/v1/models", "List the served models", None, ModelList, None),
    (
        "post",
        "/tokenize",
        "Tokenize a prompt or chat messages",
        TokenizeRequestBody,
        TokenizeResponse,
        None,
    ),
    (
        "post",
        "/detokenize",
        "Turn token ids back into text",
        DetokenizeRequest,
        DetokenizeResponse,
        None,
    ),
]


def openapi_schema(*, title: str = "pe", version: str | None = None) -> dict[str, Any]:
    """An OpenAPI 3.1 document for the completions, chat, models and tokenizer endpoints."""
    types: list[Any] = [ErrorResponse]
    for _, _, _, request, response, event in _ROUTES:
        types += [t for t in (request, response, event) if t is not None]
    _, components = msgspec.json.schema_components(types, ref_template=_REF)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version or _package_version()},
        "paths": {
            path: {method: _operation(summary, req, resp, event)}
            for method, path, summary, req, resp, event in _ROUTES
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearerAuth": []}],
    }


def _operation(
    summary: str, request: type | None, response: type, event: type | None
) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": _ref(response)}}
    if event is not None:
        content["text/event-stream"] = {
            "schema": {"type": "string"},
            "description": f"with `stream: true`: `data: <{event.__name__}>` events, then `data: [DONE]`",
        }
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": "OK", "content": content},
            **{status: _error_response(text) for status, text in _ERROR_STATUSES.items()},
        },
    }
    if request is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": _ref(request)},
                # the same schema; tensor bytes travel as msgpack `bin` instead of base64
                "application/msgpack": {"schema": _ref(request)},
            },
        }
    return operation


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": _ref(ErrorResponse)}},
    }


def _ref(kind: type) -> dict[str, str]:
    return {"$ref": _REF.format(name=kind.__name__)}


def _package_version() -> str:
    try:
        return metadata.version("pe-common")
    except metadata.PackageNotFoundError:
        return "0.0.0"
