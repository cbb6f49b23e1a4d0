"""Turn the polymorphic wire fields into one decoded shape each.

msgspec unions may hold at most one str-like and one array-like type, so ``prompt``,
``prompt_embeds`` and chat ``content`` are read as plain values (``Any``) and checked here:
``prompt`` becomes a list of texts or a list of token-id lists, ``prompt_embeds`` a list of
:data:`EmbedsPayload`, ``stop`` a list of strings. Errors name the field and its path only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

from pe_common.errors import InvalidRequestError
from pe_common.protocol.chat import ChatCompletionRequest, ChatCompletionRequestBody, _ChatFields
from pe_common.protocol.chat_message import (
    ChatMessage,
    ChatMessageBody,
    ContentPart,
    PromptEmbedsPart,
    Role,
    TextPart,
)
from pe_common.protocol.common import EmbedsPayload, EmbedsRef, RawEmbeds
from pe_common.protocol.completion import (
    CompletionRequest,
    CompletionRequestBody,
    _CompletionFields,
)
from pe_common.protocol.tokenize import TokenizeRequest, TokenizeRequestBody, _TokenizeFields

T = TypeVar("T")

EMPTY_EMBEDS_DATA_MESSAGE = (
    "prompt_embeds content part requires a non-empty `data` field with base64-encoded tensor bytes."
)

_WIRE_NAMES = {
    str: "str",
    bytes: "bytes",
    bool: "bool",
    int: "int",
    float: "float",
    list: "array",
    dict: "object",
    type(None): "null",
}


def completion_request_from_body(body: CompletionRequestBody) -> CompletionRequest:
    prompt_embeds = normalise_prompt_embeds(body.prompt_embeds)
    prompt = normalise_prompt(body.prompt)
    if prompt_embeds and is_only_empty_text(prompt):
        prompt = None  # vLLM's docs send `prompt: ""` with embeds ("Required but empty")
    return CompletionRequest(
        **_shared_fields(body, _CompletionFields),
        prompt=prompt,
        prompt_embeds=prompt_embeds,
        stop=normalise_stop(body.stop),
    )


def is_only_empty_text(prompt: list[str] | list[list[int]] | None) -> bool:
    """``""`` or a list of nothing but ``""``: no text prompt when embeds come with it."""
    return prompt is not None and len(prompt) > 0 and all(p == "" for p in prompt)


def chat_request_from_body(body: ChatCompletionRequestBody) -> ChatCompletionRequest:
    return ChatCompletionRequest(
        **_shared_fields(body, _ChatFields),
        messages=normalise_messages(body.messages),
        stop=normalise_stop(body.stop),
    )


def tokenize_request_from_body(body: TokenizeRequestBody) -> TokenizeRequest:
    messages = None if body.messages is None else normalise_messages(body.messages)
    return TokenizeRequest(**_shared_fields(body, _TokenizeFields), messages=messages)


def normalise_stop(value: str | list[str] | None) -> list[str] | None:
    return [value] if isinstance(value, str) else value


def normalise_prompt(value: Any) -> list[str] | list[list[int]] | None:
    """``str | list[str] | list[int] | list[list[int]]`` -> a list of prompts."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if not value:
            return []
        first = value[0]
        if isinstance(first, str):
            return _convert(value, list[str], "prompt")
        if isinstance(first, int) and not isinstance(first, bool):
            return [_convert(value, list[int], "prompt")]
        if isinstance(first, list):
            return _convert(value, list[list[int]], "prompt")
    raise _invalid(
        "`prompt` must be a string, a list of strings, a list of token ids or a list of "
        "token-id lists",
        "$.prompt",
        "prompt",
    )


def normalise_prompt_embeds(value: Any) -> list[EmbedsPayload] | None:
    """``item | list[item]`` -> a list of items (base64 text, bytes, or a raw object)."""
    if value is None:
        return None
    if isinstance(value, list):
        return [_embeds_item(item, f"$.prompt_embeds[{i}]") for i, item in enumerate(value)]
    return [_embeds_item(value, "$.prompt_embeds")]


def normalise_messages(messages: list[ChatMessageBody]) -> list[ChatMessage]:
    return [_message(message, f"$.messages[{i}]") for i, message in enumerate(messages)]


def _message(message: ChatMessageBody, path: str) -> ChatMessage:
    role: Role = "system" if message.role == "developer" else message.role
    return ChatMessage(
        role=role,
        content=_content(message.content, f"{path}.content"),
        name=message.name,
        tool_calls=message.tool_calls,
        tool_call_id=message.tool_call_id,
        reasoning=_reasoning(message, path),
    )


def _reasoning(message: ChatMessageBody, path: str) -> str | PromptEmbedsPart | None:
    """An assistant's ``reasoning`` (else legacy ``reasoning_content``): text or one embeds part.

    Other roles' reasoning is ignored unread, as vLLM's parser reads it for assistants only.
    """
    if message.role != "assistant":
        return None
    field = "reasoning" if message.reasoning is not None else "reasoning_content"
    value = getattr(message, field)
    if value is None or isinstance(value, str):
        return value
    at = f"{path}.{field}"
    if isinstance(value, Mapping) and value.get("type") == "prompt_embeds":
        return _prompt_embeds_part(value, at)
    raise _invalid(
        f"`{field}` must be a string or one `prompt_embeds` object (not a list of parts)",
        at,
        "messages",
    )


def _content(value: Any, path: str) -> str | list[ContentPart] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        return [_part(part, f"{path}[{i}]") for i, part in enumerate(value)]
    raise _invalid(_expected("`str`, `array` or `null`", value), path, "messages")


def _part(part: Any, path: str) -> ContentPart:
    if not isinstance(part, Mapping):
        raise _invalid(_expected("`object`", part), path, "messages")
    kind = part.get("type")
    if kind == "text":
        return TextPart(text=_field(part, "text", str, path, "messages"))
    if kind == "prompt_embeds":
        return _prompt_embeds_part(part, path)
    raise _invalid(
        "Unsupported content part type; supported types are `text` and `prompt_embeds`",
        f"{path}.type",
        "messages",
    )


def _prompt_embeds_part(part: Mapping[Any, Any], path: str) -> PromptEmbedsPart:
    if "id" in part:
        return PromptEmbedsPart(id=_ref_id(part, path, "messages"), ref_path=_ref_path(path))
    data = part.get("data")
    if data is None or (isinstance(data, (str, bytes)) and not data):
        raise InvalidRequestError(
            EMPTY_EMBEDS_DATA_MESSAGE, code="missing_parameter", param="prompt_embeds"
        )
    data = _data(data, f"{path}.data")
    dtype = part.get("dtype")
    shape = part.get("shape")
    if (dtype is None) != (shape is None):
        raise _invalid("`dtype` and `shape` must be given together", path, "messages")
    if dtype is None:
        return PromptEmbedsPart(data=data)
    return PromptEmbedsPart(
        data=data,
        dtype=_field(part, "dtype", str, path, "messages"),
        shape=_shape(part, path, "messages"),
    )


def _embeds_item(item: Any, path: str) -> EmbedsPayload:
    if isinstance(item, (str, bytes)):
        return item
    if isinstance(item, Mapping):
        if "id" in item:
            return EmbedsRef(id=_ref_id(item, path, "prompt_embeds"), path=_ref_path(path))
        return _raw_embeds(item, path)
    raise _invalid(
        "`prompt_embeds` items must be base64 text, bytes, or an object with `data`, "
        "`dtype` and `shape`",
        path,
        "prompt_embeds",
    )


def _ref_id(obj: Mapping[Any, Any], path: str, param: str) -> str:
    """A stored tensor's id, alone (``data`` and ``id`` are exclusive)."""
    if "data" in obj:
        raise _invalid("give either `data` or `id`, not both", path, param)
    embeds_id = _field(obj, "id", str, path, param)
    if not embeds_id:
        raise _invalid("`id` must not be empty", path, param)
    return embeds_id


def _ref_path(path: str) -> str:
    """``$.messages[2].content[1]`` -> ``messages[2].content[1].id`` (a 404's ``param``)."""
    return path.removeprefix("$.") + ".id"


def _raw_embeds(item: Mapping[Any, Any], path: str) -> RawEmbeds:
    data = item.get("data")
    if data is None or (isinstance(data, (str, bytes)) and not data):
        raise _invalid(
            "`prompt_embeds` object requires a non-empty `data` field",
            path,
            "prompt_embeds",
            code="missing_parameter",
        )
    return RawEmbeds(
        data=_data(data, f"{path}.data"),
        dtype=_field(item, "dtype", str, path, "prompt_embeds"),
        shape=_shape(item, path, "prompt_embeds"),
    )


def _shape(obj: Mapping[Any, Any], path: str, param: str) -> list[int]:
    shape = _field(obj, "shape", list, path, param)
    return _convert(shape, list[int], param, f"{path}.shape")


def _data(value: Any, path: str) -> str | bytes:
    if isinstance(value, (str, bytes)):
        return value
    raise _invalid(_expected("`str` or `bytes`", value), path, "prompt_embeds")


def _field(obj: Mapping[Any, Any], name: str, kind: type[T], path: str, param: str) -> T:
    if name not in obj:
        raise _invalid(
            f"Object missing required field `{name}`", path, param, code="missing_parameter"
        )
    value = obj[name]
    if not isinstance(value, kind):
        raise _invalid(_expected(f"`{_WIRE_NAMES[kind]}`", value), f"{path}.{name}", param)
    return value


def _convert(value: Any, kind: type[T], param: str, path: str | None = None) -> T:
    """``msgspec.convert`` with its error re-anchored at ``path`` (``$.<param>`` by default)."""
    path = path or f"$.{param}"
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        what, _, where = str(exc).partition(" - at `$")
        where = where.rstrip("`")
        if not _is_safe_suffix(where):
            where = ""
        raise _invalid(_safe_what(what), path + where, param) from None


def _shared_fields(body: msgspec.Struct, fields_of: type[msgspec.Struct]) -> dict[str, Any]:
    return {name: getattr(body, name) for name in fields_of.__struct_fields__}


def _expected(what: str, value: Any) -> str:
    return f"Expected {what}, got `{_WIRE_NAMES.get(type(value), type(value).__name__)}`"


def _safe_what(what: str) -> str:
    # msgspec.convert messages: "Expected `int`, got `str`" (type names only) or others
    # that might quote a value; keep only the type-name form.
    if what.startswith("Expected `") and "'" not in what and '"' not in what and len(what) < 120:
        return what
    return "Invalid value"


def _is_safe_suffix(where: str) -> bool:
    return all(ch.isdigit() or ch in "[]." for ch in where)


def _invalid(
    what: str, path: str, param: str, *, code: str = "invalid_parameter"
) -> InvalidRequestError:
    return InvalidRequestError(f"{what} - at `{path}`", code=code, param=param)
