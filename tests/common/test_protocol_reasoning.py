"""`reasoning` / `reasoning_content` on chat messages: decoded, checked, counted (issue 18)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from pe_common.errors import InvalidRequestError
from pe_common.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    PromptEmbedsPart,
    RequestLimits,
    decode_chat_request,
    decode_tokenize_request,
    encode_json,
    encode_msgpack,
    openapi_schema,
)

B64 = "UEsDBA=="
EMBEDS = {"type": "prompt_embeds", "data": B64}
MISSING_DATA = (
    "prompt_embeds content part requires a non-empty `data` field with base64-encoded tensor bytes."
)


def assistant(**fields: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": "In Paris", **fields}


def decode(*messages: dict[str, Any], limits: RequestLimits | None = None) -> ChatCompletionRequest:
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}, *messages]}).encode()
    return decode_chat_request(body, "json", limits=limits or RequestLimits())


def decode_error(*messages: dict[str, Any], limits: RequestLimits | None = None) -> Any:
    with pytest.raises(InvalidRequestError) as info:
        decode(*messages, limits=limits)
    return info.value


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_text_and_embeds_reasoning_are_kept_under_one_name(field: str) -> None:
    assert decode(assistant(**{field: "think"})).messages[1].reasoning == "think"
    as_embeds = decode(assistant(**{field: EMBEDS})).messages[1].reasoning
    assert as_embeds == PromptEmbedsPart(data=B64)
    raw = {**EMBEDS, "dtype": "float32", "shape": [1, 1]}
    as_raw = decode(assistant(**{field: raw})).messages[1].reasoning
    assert as_raw == PromptEmbedsPart(data=B64, dtype="float32", shape=[1, 1])


def test_reasoning_wins_over_legacy_reasoning_content() -> None:
    both = decode(assistant(reasoning="new", reasoning_content=EMBEDS))
    assert both.messages[1].reasoning == "new"
    # a null `reasoning` is absent: the legacy field is read (and checked)
    legacy = decode(assistant(reasoning=None, reasoning_content="old"))
    assert legacy.messages[1].reasoning == "old"


@pytest.mark.parametrize("role", ["user", "system", "developer", "tool"])
def test_other_roles_reasoning_is_ignored_unread(role: str) -> None:
    # vLLM renders reasoning for assistant messages only; it reads nothing else's
    msg = {"role": role, "content": "x", "reasoning": {"type": "prompt_embeds"}}
    assert decode(msg).messages[1].reasoning is None
    assert decode({**msg, "reasoning": "text"}).messages[1].reasoning is None


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
@pytest.mark.parametrize(
    "value", [{"type": "prompt_embeds"}, {"type": "prompt_embeds", "data": ""}], ids=["no", "empty"]
)
def test_missing_or_empty_embeds_data_is_vllms_error(field: str, value: Any) -> None:
    err = decode_error(assistant(**{field: value}))
    assert (err.message, err.param) == (MISSING_DATA, "prompt_embeds")
    assert err.code == "missing_parameter"


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ([EMBEDS], "$.messages[1].reasoning"),
        ({"type": "text", "text": "x"}, "$.messages[1].reasoning"),
        (7, "$.messages[1].reasoning"),
    ],
)
def test_other_reasoning_shapes_are_refused_at_their_path(value: Any, path: str) -> None:
    err = decode_error(assistant(reasoning=value))
    assert (err.param, err.code) == ("messages", "invalid_parameter")
    assert err.message == (
        "`reasoning` must be a string or one `prompt_embeds` object (not a list of parts) "
        f"- at `{path}`"
    )
    legacy = decode_error(assistant(reasoning_content=value))
    assert legacy.message.startswith("`reasoning_content` must be")
    assert legacy.message.endswith("- at `$.messages[1].reasoning_content`")


def test_embeds_bad_fields_name_the_reasoning_path() -> None:
    err = decode_error(assistant(reasoning={**EMBEDS, "dtype": "float32"}))
    assert err.message.endswith("- at `$.messages[1].reasoning`")
    err = decode_error(assistant(reasoning={"type": "prompt_embeds", "data": 5}))
    assert err.message == "Expected `str` or `bytes`, got `int` - at `$.messages[1].reasoning.data`"
    assert err.param == "prompt_embeds"


def test_reasoning_counts_toward_the_part_and_character_limits() -> None:
    parts = RequestLimits(max_content_parts=2)
    two = {"role": "user", "content": [{"type": "text", "text": "a"}, EMBEDS]}
    decode(two, limits=parts)
    err = decode_error(two, assistant(reasoning=EMBEDS), limits=parts)
    assert (err.param, err.code) == ("messages", "too_many_inputs")
    decode(two, assistant(reasoning="text"), limits=parts)  # text is not a part
    chars = RequestLimits(max_prompt_chars=20)
    decode(assistant(reasoning="x" * 8), limits=chars)  # 2 + 8 + 8 characters
    err = decode_error(assistant(reasoning="x" * 11), limits=chars)
    assert (err.param, err.code) == ("messages", "prompt_too_long")
    err = decode_error(assistant(reasoning_content="x" * 11), limits=chars)
    assert err.code == "prompt_too_long"


@pytest.mark.parametrize("kind", ["json", "msgpack"])
def test_reasoning_round_trips(kind: str) -> None:
    data = B64 if kind == "json" else b"PK\x03\x04"
    req = ChatCompletionRequest(
        messages=[
            ChatMessage(role="user", content="q"),
            ChatMessage(role="assistant", content="a", reasoning="because"),
            ChatMessage(role="assistant", content="b", reasoning=PromptEmbedsPart(data=data)),
        ]
    )
    body = encode_json(req) if kind == "json" else encode_msgpack(req)
    assert decode_chat_request(body, kind) == req  # type: ignore[arg-type]
    wire = msgspec.json.decode(encode_json(req))["messages"]
    assert wire[1]["reasoning"] == "because" and "reasoning" not in wire[0]


def test_tokenize_messages_read_reasoning_too() -> None:
    body = {"messages": [assistant(reasoning_content=EMBEDS)]}
    req = decode_tokenize_request(json.dumps(body).encode(), "json")
    assert req.messages is not None and req.messages[0].reasoning == PromptEmbedsPart(data=B64)


def test_openapi_describes_reasoning() -> None:
    props = openapi_schema()["components"]["schemas"]["ChatMessageBody"]["properties"]
    for field in ("reasoning", "reasoning_content"):
        forms = props[field]["anyOf"]
        assert [f.get("type") for f in forms] == ["string", "object", "null"]
        assert forms[1]["title"] == "PromptEmbedsPart"
