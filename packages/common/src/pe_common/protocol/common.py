"""Base struct configurations and the small types every endpoint shares."""

from __future__ import annotations

import time
from typing import Any, Generic, TypeVar, Union

import msgspec


def unix_time() -> int:
    """Seconds since the epoch, for ``created`` fields."""
    return int(time.time())


class RequestStruct(msgspec.Struct, kw_only=True, forbid_unknown_fields=False, omit_defaults=True):
    """Base of request types: unknown fields are ignored, defaults are left out when encoding.

    msgspec does not inherit ``kw_only``: every subclass repeats it.
    """


class ResponseStruct(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """Base of response types: every field is written, ``None`` as ``null``."""


class RawEmbeds(RequestStruct, kw_only=True):
    """Raw little-endian tensor bytes with declared metadata (a pe extension).

    ``data`` is base64 text in JSON bodies and the bytes themselves in msgpack bodies.
    """

    data: str | bytes
    dtype: str
    shape: list[int]


class EmbedsRef(RequestStruct, kw_only=True):
    """A stored tensor named by id (pe's ``/v1/embeds``); ``path`` is where the request named
    it, for the ``param`` of a 404."""

    id: str
    path: str = "prompt_embeds"


# What one prompt-embeddings item is after decoding: base64 text of a torch.save /
# safetensors file, the file bytes themselves (msgpack), raw bytes with metadata, or a stored
# tensor's id.
EmbedsPayload = Union[str, bytes, RawEmbeds, EmbedsRef]

RAW_EMBEDS_JSON_SCHEMA: dict[str, Any] = {
    "title": "RawEmbeds",
    "type": "object",
    "description": "Raw little-endian tensor bytes with their dtype and shape (pe extension).",
    "properties": {
        "data": {
            "type": "string",
            "contentEncoding": "base64",
            "description": "base64 in JSON; a msgpack `bin` in msgpack bodies",
        },
        "dtype": {"enum": ["float32", "float16", "bfloat16"]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    },
    "required": ["data", "dtype", "shape"],
}

EMBEDS_ITEM_JSON_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "string",
            "contentEncoding": "base64",
            "description": "base64 of a torch.save file or a safetensors file holding one tensor",
        },
        RAW_EMBEDS_JSON_SCHEMA,
    ]
}


class StreamOptions(RequestStruct, kw_only=True):
    """``stream_options``; defaults follow vLLM."""

    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class GenerateFields(RequestStruct, kw_only=True):
    """The fields completions and chat share (OpenAI's, then vLLM's extras, vLLM's names).

    Each endpoint adds its own (``max_tokens``'s default, ``logprobs``' type, ...).
    """

    model: str | None = None
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    n: int = 1
    presence_penalty: float = 0.0
    response_format: dict[str, Any] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None
    echo: bool = False
    # vLLM extras; None means the server's / model's default
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    return_token_ids: bool = False
    prompt_logprobs: int | None = None
    truncate_prompt_tokens: int | None = None
    # vLLM's prefix-cache salt; with API keys the server also salts by key
    cache_salt: str | None = None
    # vLLM's constraint object (json, regex, choice, grammar, json_object, options) and its
    # older guided_* fields, which pe honours as aliases (vLLM >= 0.12 ignores them)
    structured_outputs: dict[str, Any] | None = None
    guided_json: Any = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_whitespace_pattern: str | None = None
    guided_decoding_backend: str | None = None


class PromptTokensDetails(ResponseStruct, kw_only=True):
    cached_tokens: int = 0


class Usage(ResponseStruct, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


ChoiceT = TypeVar("ChoiceT")


class ChoicesResponse(ResponseStruct, Generic[ChoiceT], kw_only=True):
    """What a completions or chat answer and each of its stream chunks carry around their
    choices, in vLLM's key order; subclasses fix ``object`` (fields keep their place)."""

    id: str
    object: str
    created: int = msgspec.field(default_factory=unix_time)
    model: str
    choices: list[ChoiceT] = msgspec.field(default_factory=list)
    usage: Usage | None = None
    system_fingerprint: str | None = None
