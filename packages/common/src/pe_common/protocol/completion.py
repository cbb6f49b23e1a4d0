"""``POST /v1/completions``: the request (OpenAI fields plus vLLM's extras) and responses."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from pe_common.protocol.common import (
    EMBEDS_ITEM_JSON_SCHEMA,
    ChoicesResponse,
    EmbedsPayload,
    GenerateFields,
    ResponseStruct,
)
from pe_common.protocol.logprobs import CompletionLogprobs, PromptLogprobs


class _CompletionFields(GenerateFields, kw_only=True):
    """Every completions field whose wire type is also its decoded type."""

    best_of: int | None = None
    logprobs: int | None = None
    max_tokens: int | None = 16
    suffix: str | None = None
    add_special_tokens: bool = True


class CompletionRequest(_CompletionFields, kw_only=True):
    """A decoded completions request (see :func:`decode_completion_request`).

    ``prompt`` is always a list of prompts (texts or token-id lists), ``prompt_embeds`` a
    list of embeddings payloads, ``stop`` a list of strings.
    """

    prompt: list[str] | list[list[int]] | None = None
    prompt_embeds: list[EmbedsPayload] | None = None
    stop: list[str] | None = None


_PROMPT_JSON_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}},
        {"type": "array", "items": {"type": "integer", "minimum": 0}},
        {"type": "array", "items": {"type": "array", "items": {"type": "integer", "minimum": 0}}},
        {"type": "null"},
    ]
}

_PROMPT_EMBEDS_JSON_SCHEMA: dict[str, Any] = {
    "anyOf": [
        *EMBEDS_ITEM_JSON_SCHEMA["anyOf"],
        {"type": "array", "items": EMBEDS_ITEM_JSON_SCHEMA},
        {"type": "null"},
    ]
}


class CompletionRequestBody(_CompletionFields, kw_only=True):
    """The completions body as it arrives; decoding normalises it into :class:`CompletionRequest`."""

    prompt: Annotated[Any, msgspec.Meta(extra_json_schema=_PROMPT_JSON_SCHEMA)] = None
    prompt_embeds: Annotated[Any, msgspec.Meta(extra_json_schema=_PROMPT_EMBEDS_JSON_SCHEMA)] = None
    stop: str | list[str] | None = None


class CompletionChoice(ResponseStruct, kw_only=True):
    """One choice; in stream chunks the same type carries the text delta."""

    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    prompt_token_ids: list[int] | None = None
    token_ids: list[int] | None = None
    prompt_logprobs: PromptLogprobs | None = None


class CompletionResponse(ChoicesResponse[CompletionChoice], kw_only=True):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


class CompletionStreamResponse(ChoicesResponse[CompletionChoice], kw_only=True):
    """One ``data:`` event of a completions stream."""

    object: Literal["text_completion"] = "text_completion"
