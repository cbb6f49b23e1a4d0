"""Responses: JSON / msgpack round trips and parsing by the official openai SDK."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import openai
import pytest
from openai.types import Completion, Model
from openai.types import CompletionChoice as SDKCompletionChoice
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from sdk_transport import http_response, sdk_client

from pe_common.errors import InvalidRequestError
from pe_common.protocol import (
    ChatCompletionChoice,
    ChatCompletionChunkChoice,
    ChatCompletionLogprobs,
    ChatCompletionMessage,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    ChatCompletionTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    CompletionStreamResponse,
    DeltaMessage,
    DetokenizeResponse,
    ErrorInfo,
    ErrorResponse,
    ModelCard,
    ModelList,
    PromptLogprob,
    PromptTokensDetails,
    TokenizeResponse,
    TopLogprob,
    Usage,
    encode_json,
    encode_msgpack,
)

USAGE = Usage(
    prompt_tokens=17,
    completion_tokens=3,
    total_tokens=20,
    prompt_tokens_details=PromptTokensDetails(cached_tokens=16),
)


def completion_response() -> CompletionResponse:
    logprobs = CompletionLogprobs(
        text_offset=[0, 4, 8],
        token_logprobs=[-1.5, -0.25, -3.0],
        tokens=[" ser", "ents", " A"],
        top_logprobs=[{" ser": -1.5, " the": -2.0}, {"ents": -0.25}, {" A": -3.0}],
    )
    return CompletionResponse(
        id="cmpl-1",
        created=1795346325,
        model="tiny",
        choices=[
            CompletionChoice(
                index=0,
                text=" serents A",
                logprobs=logprobs,
                finish_reason="length",
                token_ids=[1158, 1175, 474],
                prompt_token_ids=[0] * 17,
                prompt_logprobs=[
                    None,
                    {12: PromptLogprob(logprob=-0.5, rank=1, decoded_token="x")},
                ],
            ),
            CompletionChoice(index=1, text="!", finish_reason="stop", stop_reason="!"),
        ],
        usage=USAGE,
        system_fingerprint="pe-0.1.0",
    )


def chat_response() -> ChatCompletionResponse:
    token = ChatCompletionTokenLogprob(
        token="Hi",
        logprob=-0.1,
        bytes=[72, 105],
        top_logprobs=[TopLogprob(token="Hi", logprob=-0.1, bytes=[72, 105])],
    )
    return ChatCompletionResponse(
        id="chatcmpl-1",
        created=1,
        model="tiny",
        choices=[
            ChatCompletionChoice(
                index=0,
                message=ChatCompletionMessage(content="Hi"),
                logprobs=ChatCompletionLogprobs(content=[token]),
                finish_reason="stop",
                stop_reason=2,
                token_ids=[5],
            )
        ],
        usage=USAGE,
        prompt_token_ids=[1, 2, 3],
    )


def chat_chunks() -> list[ChatCompletionStreamResponse]:
    def chunk(choices: list[ChatCompletionChunkChoice], usage: Usage | None = None) -> Any:
        return ChatCompletionStreamResponse(
            id="c", created=1, model="tiny", choices=choices, usage=usage
        )

    return [
        chunk(
            [ChatCompletionChunkChoice(index=0, delta=DeltaMessage(role="assistant", content=""))]
        ),
        chunk([ChatCompletionChunkChoice(index=0, delta=DeltaMessage(content="Hel"))]),
        chunk([ChatCompletionChunkChoice(index=0, delta=DeltaMessage(content="lo"))]),
        chunk([ChatCompletionChunkChoice(index=0, finish_reason="length")]),
        chunk([], usage=USAGE),
    ]


def completion_chunks() -> list[CompletionStreamResponse]:
    return [
        CompletionStreamResponse(
            id="cmpl-1", created=1, model="tiny", choices=[CompletionChoice(index=0, text=t)]
        )
        for t in ("Hel", "lo")
    ] + [
        CompletionStreamResponse(
            id="cmpl-1",
            created=1,
            model="tiny",
            choices=[CompletionChoice(index=0, text="", finish_reason="stop")],
        ),
        CompletionStreamResponse(id="cmpl-1", created=1, model="tiny", usage=USAGE),
    ]


MODEL_LIST = ModelList(
    data=[ModelCard(id="tiny", created=1, root="/models/tiny", max_model_len=512)]
)
RESPONSES: list[Any] = [
    completion_response(),
    *completion_chunks(),
    chat_response(),
    *chat_chunks(),
    MODEL_LIST,
    ErrorResponse(error=ErrorInfo(message="bad", param="n", code="invalid_parameter")),
    TokenizeResponse(count=2, max_model_len=512, tokens=[1, 2], token_strs=["a", "b"]),
    DetokenizeResponse(prompt="ab"),
]


@pytest.mark.parametrize("response", RESPONSES, ids=lambda r: type(r).__name__)
def test_response_round_trips(response: Any) -> None:
    kind = type(response)
    assert msgspec.json.decode(encode_json(response), type=kind) == response
    assert msgspec.msgpack.decode(encode_msgpack(response), type=kind) == response


def test_sdk_validates_completion() -> None:
    data = json.loads(encode_json(completion_response()))
    parsed = Completion.model_validate(data)
    assert parsed.choices[0].logprobs is not None
    assert parsed.choices[0].logprobs.top_logprobs == data["choices"][0]["logprobs"]["top_logprobs"]
    assert parsed.usage is not None and parsed.usage.prompt_tokens_details is not None
    assert parsed.usage.prompt_tokens_details.cached_tokens == 16
    assert SDKCompletionChoice.model_validate(data["choices"][1]).text == "!"
    # vLLM's extra fields ride along
    assert data["choices"][0]["token_ids"] == [1158, 1175, 474]
    assert data["choices"][0]["prompt_logprobs"] == [
        None,
        {"12": {"logprob": -0.5, "rank": 1, "decoded_token": "x"}},
    ]


def test_sdk_validates_chat_and_chunks() -> None:
    parsed = ChatCompletion.model_validate(json.loads(encode_json(chat_response())))
    assert parsed.choices[0].message.content == "Hi"
    assert parsed.choices[0].message.tool_calls == []
    assert parsed.choices[0].logprobs is not None
    content = parsed.choices[0].logprobs.content
    assert content is not None and content[0].top_logprobs[0].bytes == [72, 105]
    chunks = [ChatCompletionChunk.model_validate(json.loads(encode_json(c))) for c in chat_chunks()]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:4]) == "Hello"
    assert chunks[3].choices[0].finish_reason == "length"
    assert chunks[4].usage is not None and chunks[4].choices == []


def test_delta_omits_unset_fields() -> None:
    assert encode_json(DeltaMessage()) == b"{}"
    assert json.loads(encode_json(DeltaMessage(content="x"))) == {"content": "x"}


def test_sdk_validates_models() -> None:
    data = json.loads(encode_json(MODEL_LIST))
    assert data["object"] == "list"
    model = Model.model_validate(data["data"][0])
    assert (model.id, model.owned_by, model.object) == ("tiny", "pe", "model")


def sse(events: list[Any]) -> bytes:
    lines = [b"data: " + encode_json(e) + b"\n\n" for e in events]
    return b"".join(lines) + b"data: [DONE]\n\n"


def test_sdk_client_end_to_end_non_stream() -> None:
    def handler(request: Any) -> Any:
        path = request.url.path
        body: Any = MODEL_LIST if path.endswith("/models") else completion_response()
        if path.endswith("/chat/completions"):
            body = chat_response()
        return http_response(200, encode_json(body))

    client = sdk_client(handler)
    completion = client.completions.create(model="tiny", prompt="x")
    assert completion.choices[0].text == " serents A"
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
    assert chat.choices[0].message.content == "Hi"
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_sdk_client_end_to_end_streams() -> None:
    def handler(request: Any) -> Any:
        is_chat = request.url.path.endswith("/chat/completions")
        events = chat_chunks() if is_chat else completion_chunks()
        return http_response(200, sse(events), "text/event-stream")

    client = sdk_client(handler)
    stream = client.completions.create(model="tiny", prompt="x", stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Hello"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 20
    chat_stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "x"}], stream=True
    )
    texts = [c.choices[0].delta.content for c in chat_stream if c.choices]
    assert "".join(t or "" for t in texts) == "Hello"


def test_sdk_raises_bad_request_with_param_and_code() -> None:
    exc = InvalidRequestError("`n` must be between 1 and 128.", code="invalid_parameter", param="n")
    body = encode_json(
        ErrorResponse(error=ErrorInfo(message=exc.message, param=exc.param, code=exc.code))
    )

    def handler(request: Any) -> Any:
        return http_response(400, body)

    with pytest.raises(openai.BadRequestError) as info:
        sdk_client(handler).completions.create(model="tiny", prompt="x", n=500)
    assert (info.value.code, info.value.param) == ("invalid_parameter", "n")
    # openai before 3.38 puts the whole error body in the message, later ones its `message` only.
    assert "`n` must be between 1 and 128." in info.value.message
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
