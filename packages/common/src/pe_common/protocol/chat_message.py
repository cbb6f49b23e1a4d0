"""Chat messages and their content parts: ``text`` and ``prompt_embeds``."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import msgspec

from pe_common.protocol.common import (
    RAW_EMBEDS_JSON_SCHEMA,
    EmbedsPayload,
    EmbedsRef,
    RawEmbeds,
    RequestStruct,
    ResponseStruct,
)

Role = Literal["system", "user", "assistant", "tool"]
# "developer" is OpenAI's newer name for "system"; it is read as "system".
WireRole = Literal["system", "user", "assistant", "tool", "developer"]


class TextPart(RequestStruct, tag_field="type", tag="text", kw_only=True):
    text: str


class PromptEmbedsPart(RequestStruct, tag_field="type", tag="prompt_embeds", kw_only=True):
    """One tensor spliced into the message at this position.

    ``data`` is base64 text (JSON) or bytes (msgpack) of a torch.save / safetensors file,
    or raw tensor bytes when ``dtype`` and ``shape`` are given too.
    """

    data: str | bytes | None = None
    dtype: str | None = None
    shape: list[int] | None = None
    # pe extension: a stored tensor's id (``/v1/embeds``) instead of ``data``; ``ref_path`` is
    # where the request named it (a 404's ``param``), set when the request is decoded.
    id: str | None = None
    ref_path: str = "messages"

    @property
    def payload(self) -> EmbedsPayload:
        """The item the codec decodes: a :class:`RawEmbeds` when metadata is declared, an
        :class:`EmbedsRef` for a stored tensor."""
        if self.id is not None:
            return EmbedsRef(id=self.id, path=self.ref_path)
        assert self.data is not None
        if self.dtype is not None and self.shape is not None:
            return RawEmbeds(data=self.data, dtype=self.dtype, shape=self.shape)
        return self.data


ContentPart = Union[TextPart, PromptEmbedsPart]


class FunctionCall(ResponseStruct, kw_only=True):
    name: str
    arguments: str


class ToolCall(ResponseStruct, kw_only=True):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class _MessageFields(RequestStruct, kw_only=True):
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class ChatMessage(_MessageFields, kw_only=True):
    role: Role
    content: str | list[ContentPart] | None = None
    # An assistant turn's earlier thinking, rendered by templates that show it; only
    # assistant messages carry it (as vLLM). Decoded from `reasoning`, else `reasoning_content`.
    reasoning: str | PromptEmbedsPart | None = None


TEXT_PART_JSON_SCHEMA: dict[str, Any] = {
    "title": "TextPart",
    "type": "object",
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    "required": ["type", "text"],
}

PROMPT_EMBEDS_PART_JSON_SCHEMA: dict[str, Any] = {
    "title": "PromptEmbedsPart",
    "type": "object",
    "properties": {
        "type": {"const": "prompt_embeds"},
        "data": RAW_EMBEDS_JSON_SCHEMA["properties"]["data"],
        "dtype": RAW_EMBEDS_JSON_SCHEMA["properties"]["dtype"],
        "shape": RAW_EMBEDS_JSON_SCHEMA["properties"]["shape"],
    },
    "required": ["type", "data"],
}

_CONTENT_JSON_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string"},
        {
            "type": "array",
            "items": {"anyOf": [TEXT_PART_JSON_SCHEMA, PROMPT_EMBEDS_PART_JSON_SCHEMA]},
        },
        {"type": "null"},
    ]
}


_REASONING_JSON_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "string"}, PROMPT_EMBEDS_PART_JSON_SCHEMA, {"type": "null"}]
}
_WireReasoning = Annotated[Any, msgspec.Meta(extra_json_schema=_REASONING_JSON_SCHEMA)]


class ChatMessageBody(_MessageFields, kw_only=True):
    """A message as it arrives on the wire; decoding turns it into a :class:`ChatMessage`.

    ``reasoning`` (vLLM's name; ``reasoning_content`` is its legacy one) is a string or one
    ``prompt_embeds`` part, not a list.
    """

    role: WireRole
    content: Annotated[Any, msgspec.Meta(extra_json_schema=_CONTENT_JSON_SCHEMA)] = None
    reasoning: _WireReasoning = None
    reasoning_content: _WireReasoning = None
