"""Request decoding: the bodies the openai SDK sends, every prompt_embeds form, round trips."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import msgspec
import openai
import pytest
from sdk_transport import http_response, sdk_client

from chat_messages import mixed_chat
from pe_common.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    DetokenizeRequest,
    FunctionCall,
    PromptEmbedsPart,
    RawEmbeds,
    StreamOptions,
    TextPart,
    TokenizeRequest,
    ToolCall,
    decode_chat_request,
    decode_completion_request,
    decode_detokenize_request,
    decode_tokenize_request,
    encode_json,
    encode_msgpack,
)

B64 = base64.b64encode(b"PK\x03\x04 tensor bytes").decode()


def sdk_body(call: Callable[[openai.OpenAI], Any]) -> bytes:
    """The exact body the official openai client sends for ``call``."""
    bodies: list[bytes] = []

    def handler(request: Any) -> Any:
        bodies.append(request.content)
        return http_response(400, b'{"error": {"message": "captured", "type": "x"}}')

    with pytest.raises(openai.BadRequestError):
        call(sdk_client(handler))
    assert len(bodies) == 1
    return bodies[0]


def test_sdk_completion_with_extra_body_embeds() -> None:
    body = sdk_body(
        lambda c: c.completions.create(
            model="tiny",
            prompt="Hello",
            max_tokens=12,
            temperature=0.0,
            logprobs=1,
            stop="\n",
            seed=7,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={
                "prompt_embeds": [B64, B64],
                "top_k": 5,
                "ignore_eos": True,
                "return_token_ids": True,
            },
        )
    )
    req = decode_completion_request(body, "json")
    assert req.model == "tiny"
    assert req.prompt == ["Hello"]
    assert req.prompt_embeds == [B64, B64]
    assert (req.max_tokens, req.temperature, req.logprobs, req.seed) == (12, 0.0, 1, 7)
    assert req.stop == ["\n"]
    assert req.stream and req.stream_options == StreamOptions(include_usage=True)
    assert (req.top_k, req.ignore_eos, req.return_token_ids) == (5, True, True)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("one", ["one"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
)
def test_sdk_completion_prompt_forms(prompt: Any, expected: Any) -> None:
    body = sdk_body(lambda c: c.completions.create(model="m", prompt=prompt))
    assert decode_completion_request(body, "json").prompt == expected


def test_sdk_completion_embeds_only_prompt_none() -> None:
    # vLLM's documented client call: prompt=None plus extra_body
    body = sdk_body(
        lambda c: c.completions.create(model="m", prompt=None, extra_body={"prompt_embeds": B64})
    )
    req = decode_completion_request(body, "json")
    assert req.prompt is None
    assert req.prompt_embeds == [B64]
    assert req.max_tokens == 16


def test_sdk_chat_with_embeds_parts() -> None:
    messages: Any = [
        *mixed_chat(B64, "Be brief.", "Summarize:", "thanks", system_role="developer"),
        {"role": "assistant", "content": [{"type": "prompt_embeds", "data": B64}]},
        {"role": "user", "content": "again"},
    ]
    body = sdk_body(
        lambda c: c.chat.completions.create(
            model="tiny",
            messages=messages,
            max_completion_tokens=8,
            logprobs=True,
            top_logprobs=2,
            stop=["###"],
            n=2,
            extra_body={
                "chat_template_kwargs": {"enable_thinking": False},
                "add_generation_prompt": True,
                "min_tokens": 1,
                "repetition_penalty": 1.1,
            },
        )
    )
    req = decode_chat_request(body, "json")
    assert [m.role for m in req.messages] == ["system", "user", "assistant", "user"]
    assert req.messages[1].content == [
        TextPart(text="Summarize:"),
        PromptEmbedsPart(data=B64),
        TextPart(text="thanks"),
    ]
    assert req.messages[2].content == [PromptEmbedsPart(data=B64)]
    assert (req.effective_max_tokens, req.logprobs, req.top_logprobs, req.n) == (8, True, 2, 2)
    assert req.stop == ["###"]
    assert req.chat_template_kwargs == {"enable_thinking": False}
    assert (req.min_tokens, req.repetition_penalty) == (1, 1.1)


def test_sdk_chat_tool_history_is_accepted() -> None:
    messages: Any = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    body = sdk_body(lambda c: c.chat.completions.create(model="m", messages=messages))
    req = decode_chat_request(body, "json")
    assert req.messages[1].tool_calls == [
        ToolCall(id="call_1", function=FunctionCall(name="weather", arguments="{}"))
    ]
    assert req.messages[2].tool_call_id == "call_1"


def test_sdk_chat_tools_with_tool_choice_none_are_ignored() -> None:
    tools: Any = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    body = sdk_body(
        lambda c: c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], tools=tools, tool_choice="none"
        )
    )
    req = decode_chat_request(body, "json")
    assert req.tools == tools
    assert req.tool_choice == "none"


RAW = {"data": B64, "dtype": "float16", "shape": [2, 4]}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (B64, [B64]),
        ([B64], [B64]),
        ([B64, B64], [B64, B64]),
        (RAW, [RawEmbeds(data=B64, dtype="float16", shape=[2, 4])]),
        ([RAW, B64], [RawEmbeds(data=B64, dtype="float16", shape=[2, 4]), B64]),
    ],
)
def test_prompt_embeds_json_forms(value: Any, expected: list[Any]) -> None:
    req = decode_completion_request(json.dumps({"prompt_embeds": value}).encode(), "json")
    assert req.prompt_embeds == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"\x00\x01", [b"\x00\x01"]),
        ([b"\x00", b"\x01"], [b"\x00", b"\x01"]),
        (B64, [B64]),
        (
            {"data": b"\x00\x3c", "dtype": "float16", "shape": [1, 1]},
            [RawEmbeds(data=b"\x00\x3c", dtype="float16", shape=[1, 1])],
        ),
        (
            [b"\x00", {"data": b"\x01\x02", "dtype": "bfloat16", "shape": [1, 1]}, B64],
            [b"\x00", RawEmbeds(data=b"\x01\x02", dtype="bfloat16", shape=[1, 1]), B64],
        ),
    ],
)
def test_prompt_embeds_msgpack_forms(value: Any, expected: list[Any]) -> None:
    body = msgspec.msgpack.encode({"prompt_embeds": value, "prompt": "and text"})
    req = decode_completion_request(body, "msgpack")
    assert req.prompt_embeds == expected
    assert req.prompt == ["and text"]


def test_chat_parts_msgpack_bin_and_raw() -> None:
    body = msgspec.msgpack.encode(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "prompt_embeds", "data": b"PK\x03\x04"},
                        {
                            "type": "prompt_embeds",
                            "data": b"\x00\x00",
                            "dtype": "float16",
                            "shape": [1, 1],
                        },
                    ],
                }
            ]
        }
    )
    parts = decode_chat_request(body, "msgpack").messages[0].content
    assert isinstance(parts, list)
    first, second = parts
    assert isinstance(first, PromptEmbedsPart) and isinstance(second, PromptEmbedsPart)
    assert first.payload == b"PK\x03\x04"
    assert second.payload == RawEmbeds(data=b"\x00\x00", dtype="float16", shape=[1, 1])


# The sampling fields both request types carry, each off its default.
SAMPLING_FIELDS: dict[str, Any] = {
    "frequency_penalty": 0.5,
    "logit_bias": {50256: -100.0, 7: 2.5},
    "presence_penalty": -0.5,
    "seed": -3,
    "stop": ["a", "bc"],
    "stream": True,
    "temperature": 0.7,
    "top_p": 0.9,
    "user": "u",
    "top_k": 40,
    "min_p": 0.05,
    "repetition_penalty": 1.2,
    "min_tokens": 2,
    "ignore_eos": True,
    "stop_token_ids": [2, 3],
    "skip_special_tokens": False,
    "include_stop_str_in_output": True,
    "return_token_ids": True,
}


def full_completion_request(embeds: list[Any]) -> CompletionRequest:
    return CompletionRequest(
        model="m",
        prompt=[[1, 2, 3], [4]],
        prompt_embeds=embeds,
        best_of=3,
        echo=False,
        logprobs=5,
        max_tokens=32,
        n=2,
        stream_options=StreamOptions(include_usage=False, continuous_usage_stats=True),
        suffix=None,
        prompt_logprobs=1,
        **SAMPLING_FIELDS,
        add_special_tokens=False,
        truncate_prompt_tokens=100,
    )


def test_completion_round_trip_msgpack_keeps_bytes() -> None:
    raw = RawEmbeds(data=b"\x00\x00\x00\x00", dtype="float32", shape=[1, 1])
    req = full_completion_request([b"PK\x03\x04", raw, B64])
    assert decode_completion_request(encode_msgpack(req), "msgpack") == req


def test_completion_round_trip_json_bytes_become_base64() -> None:
    raw = RawEmbeds(data=b"\x00\x00\x00\x00", dtype="float32", shape=[1, 1])
    req = full_completion_request([b"PK\x03\x04", raw])
    decoded = decode_completion_request(encode_json(req), "json")
    b64 = base64.b64encode
    assert decoded.prompt_embeds == [
        b64(b"PK\x03\x04").decode(),
        RawEmbeds(data=b64(b"\x00\x00\x00\x00").decode(), dtype="float32", shape=[1, 1]),
    ]
    assert msgspec.structs.replace(decoded, prompt_embeds=None) == msgspec.structs.replace(
        req, prompt_embeds=None
    )


def test_request_encoding_omits_defaults() -> None:
    req = CompletionRequest(model="m", prompt=["hi"])
    assert json.loads(encode_json(req)) == {"model": "m", "prompt": ["hi"]}
    msg = ChatMessage(role="user", content=[TextPart(text="a"), PromptEmbedsPart(data=b"\x01")])
    assert json.loads(encode_json(msg)) == {
        "role": "user",
        "content": [{"type": "text", "text": "a"}, {"type": "prompt_embeds", "data": "AQ=="}],
    }


def full_chat_request(data: str | bytes) -> ChatCompletionRequest:
    return ChatCompletionRequest(
        model="m",
        messages=[
            ChatMessage(role="system", content="sys"),
            ChatMessage(
                role="user",
                content=[
                    TextPart(text="look:"),
                    PromptEmbedsPart(data=data),
                    PromptEmbedsPart(data=data, dtype="bfloat16", shape=[3, 8]),
                ],
                name="alice",
            ),
            ChatMessage(
                role="assistant",
                tool_calls=[ToolCall(id="c", function=FunctionCall(name="f", arguments="{}"))],
            ),
            ChatMessage(role="tool", content="42", tool_call_id="c"),
        ],
        logprobs=True,
        top_logprobs=3,
        max_tokens=10,
        max_completion_tokens=20,
        n=3,
        stream_options=StreamOptions(),
        **SAMPLING_FIELDS,
        chat_template="{{ messages }}",
        chat_template_kwargs={"k": [1, {"v": None}]},
        add_generation_prompt=False,
        continue_final_message=True,
        echo=True,
        add_special_tokens=True,
        truncate_prompt_tokens=9,
    )


@pytest.mark.parametrize("kind", ["json", "msgpack"])
def test_chat_round_trip(kind: str) -> None:
    req = full_chat_request(B64 if kind == "json" else b"PK\x03\x04")
    body = encode_json(req) if kind == "json" else encode_msgpack(req)
    decoded = decode_chat_request(body, kind)  # type: ignore[arg-type]
    assert decoded == req
    assert decoded.effective_max_tokens == 20


@pytest.mark.parametrize("kind", ["json", "msgpack"])
def test_tokenize_round_trips(kind: str) -> None:
    encode = encode_json if kind == "json" else encode_msgpack
    prompt_req = TokenizeRequest(model="m", prompt="hello", return_token_strs=True)
    decoded = decode_tokenize_request(encode(prompt_req), kind)  # type: ignore[arg-type]
    assert decoded == prompt_req
    assert decoded.effective_add_special_tokens is True
    chat_req = TokenizeRequest(
        messages=[ChatMessage(role="user", content=[TextPart(text="hi")])],
        add_generation_prompt=False,
    )
    decoded_chat = decode_tokenize_request(encode(chat_req), kind)  # type: ignore[arg-type]
    assert decoded_chat == chat_req
    assert decoded_chat.effective_add_special_tokens is False
    detok = DetokenizeRequest(model="m", tokens=[1, 2, 3])
    assert decode_detokenize_request(encode(detok), kind) == detok  # type: ignore[arg-type]


def test_unknown_fields_are_ignored() -> None:
    body = json.dumps(
        {
            "prompt": "x",
            "service_tier": "auto",
            "metadata": {"a": [1, {"b": None}]},
            "logits_processors": ["x"],
        }
    ).encode()
    assert decode_completion_request(body, "json").prompt == ["x"]


def test_empty_prompt_list_with_embeds_is_accepted() -> None:
    req = decode_completion_request(b'{"prompt": [], "prompt_embeds": "QUJD"}', "json")
    assert req.prompt == []
    assert req.prompt_embeds == ["QUJD"]


def test_bytearray_and_memoryview_bodies() -> None:
    body = b'{"prompt": "x"}'
    assert decode_completion_request(bytearray(body), "json").prompt == ["x"]
    assert decode_completion_request(memoryview(body), "json").prompt == ["x"]


def test_unknown_body_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown body kind"):
        decode_completion_request(b"{}", "xml")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["json", "msgpack"])
def test_decoded_embeds_feed_the_codec(kind: str) -> None:
    np = pytest.importorskip("numpy")
    from pe_common.codec import decode_prompt_embeds_numpy, encode_prompt_embeds

    x = np.arange(24, dtype="<f2").reshape(3, 8)
    safetensors = encode_prompt_embeds(x, "safetensors", binary=kind == "msgpack")
    assert isinstance(safetensors, (str, bytes))
    raw = RawEmbeds(data=x.tobytes(), dtype="float16", shape=[3, 8])
    req = CompletionRequest(prompt_embeds=[raw, safetensors])
    body = encode_json(req) if kind == "json" else encode_msgpack(req)
    decoded = decode_completion_request(body, kind)  # type: ignore[arg-type]
    assert decoded.prompt_embeds is not None
    for item in decoded.prompt_embeds:
        out = decode_prompt_embeds_numpy(item, hidden_size=8, dtype="float16")
        assert np.array_equal(out, x)
