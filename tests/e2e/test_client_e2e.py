"""pe-client against the real pe server (tiny random Llama, float32, greedy).

One server per module, started as a subprocess on a free port. Every create() variant, sync and
async, streamed and not, JSON and msgpack transport, all three embeds formats; embeddings of the
prompt's own tokens must give the same output as the token ids; the official openai client must
get the same output from the same messages; closing a stream early must abort the request.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from server_harness import MODEL, ServerProcess, wait_until

import pe_client
from chat_messages import mixed_chat
from pe_client import AsyncPEClient, PEClient
from pe_client.messages import system, user
from pe_client.openai_compat import chat_part, completion_extra_body

TEXT = "The quick brown fox jumps over the lazy dog"
GREEDY: dict[str, Any] = {"max_tokens": 8, "temperature": 0.0, "ignore_eos": True}
FORMATS = ["safetensors", "torch", "raw"]
TRANSPORTS = ["json", "msgpack"]


def completion_text(client: PEClient, **kwargs: Any) -> str:
    return client.completions.create(model=MODEL, **GREEDY, **kwargs).choices[0].text


def test_models_list(client: PEClient) -> None:
    models = client.models.list()
    assert [card.id for card in models.data] == [MODEL]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("embeds_format", FORMATS)
def test_embeds_of_the_tokens_equal_the_token_ids(
    server: ServerProcess, embedder: Any, transport: str, embeds_format: str
) -> None:
    with PEClient(
        base_url=server.base_url,
        transport=transport,  # type: ignore[arg-type]
        embeds_format=embeds_format,  # type: ignore[arg-type]
    ) as c:
        by_ids = c.completions.create(model=MODEL, prompt=embedder.ids(TEXT), **GREEDY)
        by_embeds = c.completions.create(model=MODEL, prompt_embeds=embedder(TEXT), **GREEDY)
    assert by_ids.choices[0].text
    assert by_embeds.choices[0].text == by_ids.choices[0].text
    assert by_embeds.usage is not None
    assert by_embeds.usage.prompt_tokens == len(embedder.ids(TEXT))


def test_float16_and_bfloat16_embeds_are_accepted(client: PEClient, embedder: Any) -> None:
    x = embedder(TEXT)
    assert completion_text(client, prompt_embeds=x.astype(np.float16))
    assert completion_text(client, prompt_embeds=pe_client.RawTensor.bfloat16(x))


def test_batch_embeds_first_then_text(client: PEClient, embedder: Any) -> None:
    a, b = "Hello world", "One two three four"
    reply = client.completions.create(
        model=MODEL, prompt_embeds=[embedder(a), embedder(b)], prompt=[embedder.ids(a)], **GREEDY
    )
    texts = [c.text for c in sorted(reply.choices, key=lambda c: c.index)]
    assert len(texts) == 3
    assert texts[0] == texts[2] == completion_text(client, prompt=embedder.ids(a))
    assert texts[1] == completion_text(client, prompt=embedder.ids(b))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_stream_equals_whole_reply(server: ServerProcess, embedder: Any, transport: str) -> None:
    with PEClient(base_url=server.base_url, transport=transport) as c:  # type: ignore[arg-type]
        whole = c.completions.create(model=MODEL, prompt_embeds=embedder(TEXT), **GREEDY)
        stream = c.completions.create(
            model=MODEL, prompt_embeds=embedder(TEXT), stream=True, **GREEDY
        )
        with stream:
            pieces = [chunk.choices[0].text for chunk in stream if chunk.choices]
    assert "".join(pieces) == whole.choices[0].text


def test_sampling_fields_reach_the_engine(client: PEClient, embedder: Any) -> None:
    x = embedder(TEXT)
    first = client.completions.create(
        model=MODEL, prompt_embeds=x, max_tokens=6, temperature=1.0, top_k=20, seed=3, n=2
    )
    again = client.completions.create(
        model=MODEL, prompt_embeds=x, max_tokens=6, temperature=1.0, top_k=20, seed=3, n=2
    )
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert len(first.choices) == 2
    with_logprobs = client.completions.create(
        model=MODEL, prompt_embeds=x, max_tokens=3, temperature=0.0, logprobs=2
    )
    logprobs = with_logprobs.choices[0].logprobs
    assert logprobs is not None and len(logprobs.token_logprobs) == 3
    stopped = client.completions.create(
        model=MODEL, prompt_embeds=x, max_tokens=5, min_tokens=5, temperature=0.0
    )
    assert stopped.usage is not None and stopped.usage.completion_tokens == 5


def chat_messages(embedder: Any) -> list[dict[str, Any]]:
    return [
        system("You are terse."),
        user("Read:", embedder("Paris is the capital of France"), "Which city?"),
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("embeds_format", FORMATS)
def test_chat_mixed_parts(
    server: ServerProcess, embedder: Any, transport: str, embeds_format: str
) -> None:
    messages = mixed_chat(embedder("Paris is the capital of France"))
    with PEClient(
        base_url=server.base_url,
        transport=transport,  # type: ignore[arg-type]
        embeds_format=embeds_format,  # type: ignore[arg-type]
    ) as c:
        reply = c.chat.completions.create(model=MODEL, messages=messages, **GREEDY)
        built = c.chat.completions.create(model=MODEL, messages=chat_messages(embedder), **GREEDY)
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.choices[0].message.content == built.choices[0].message.content


def test_chat_stream_and_logprobs(client: PEClient, embedder: Any) -> None:
    messages = chat_messages(embedder)
    whole = client.chat.completions.create(
        model=MODEL, messages=messages, logprobs=True, top_logprobs=2, **GREEDY
    )
    content = whole.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == GREEDY["max_tokens"]
    assert all(len(entry.top_logprobs) == 2 for entry in content)
    with client.chat.completions.create(
        model=MODEL, messages=messages, stream=True, **GREEDY
    ) as stream:
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == whole.choices[0].message.content


def test_openai_client_gets_the_same_output(
    server: ServerProcess, client: PEClient, embedder: Any
) -> None:
    openai = pytest.importorskip("openai")
    oa = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    messages = chat_messages(embedder)
    ours = client.chat.completions.create(model=MODEL, messages=messages, **GREEDY)
    extra = {"ignore_eos": True}
    theirs = oa.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, temperature=0.0, extra_body=extra
    )
    assert theirs.choices[0].message.content == ours.choices[0].message.content

    part_messages = [{"role": "user", "content": [chat_part(embedder(TEXT))]}]
    ours_part = client.chat.completions.create(model=MODEL, messages=part_messages, **GREEDY)
    theirs_part = oa.chat.completions.create(
        model=MODEL, messages=part_messages, max_tokens=8, temperature=0.0, extra_body=extra
    )
    assert theirs_part.choices[0].message.content == ours_part.choices[0].message.content

    import torch

    x = embedder(TEXT)
    body = {**completion_extra_body(torch.from_numpy(x)), **extra}  # torch.save, vLLM's format
    theirs_completion = oa.completions.create(
        model=MODEL, prompt=None, max_tokens=8, temperature=0.0, extra_body=body
    )
    assert theirs_completion.choices[0].text == completion_text(client, prompt_embeds=x)


async def test_async_variants(server: ServerProcess, embedder: Any) -> None:
    x = embedder(TEXT)
    async with AsyncPEClient(base_url=server.base_url, transport="msgpack") as c:
        models = await c.models.list()
        assert models.data[0].id == MODEL
        done, chat = await asyncio.gather(
            c.completions.create(model=MODEL, prompt_embeds=x, **GREEDY),
            c.chat.completions.create(model=MODEL, messages=chat_messages(embedder), **GREEDY),
        )
        stream = await c.completions.create(model=MODEL, prompt_embeds=x, stream=True, **GREEDY)
        async with stream:
            pieces = [chunk.choices[0].text async for chunk in stream if chunk.choices]
        chat_stream = await c.chat.completions.create(
            model=MODEL, messages=chat_messages(embedder), stream=True, **GREEDY
        )
        async with chat_stream:
            chat_pieces = [
                chunk.choices[0].delta.content or "" async for chunk in chat_stream if chunk.choices
            ]
    assert "".join(pieces) == done.choices[0].text
    assert "".join(chat_pieces) == chat.choices[0].message.content


def test_server_errors_are_typed(client: PEClient, embedder: Any) -> None:
    wrong_width = np.zeros((3, embedder.hidden_size + 1), dtype=np.float32)
    with pytest.raises(pe_client.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt_embeds=wrong_width)
    assert info.value.status_code == 400
    assert info.value.param == "prompt_embeds"
    assert info.value.code == "hidden_size_mismatch"
    with pytest.raises(pe_client.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt_embeds="not base64!")
    assert info.value.param == "prompt_embeds"
    with pytest.raises(pe_client.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x")


def aborts(server: ServerProcess) -> float:
    return sum(v for k, v in server.metrics().items() if k.startswith("pe_request_aborts_total"))


def test_closing_a_stream_early_aborts_the_request(
    server: ServerProcess, client: PEClient, embedder: Any
) -> None:
    assert wait_until(server.is_idle)
    aborts_before = aborts(server)
    stream = client.completions.create(
        model=MODEL,
        prompt_embeds=embedder(TEXT),
        max_tokens=1900,
        ignore_eos=True,
        temperature=0.0,
        stream=True,
    )
    with stream:
        first = next(iter(stream))
        assert first.choices
        assert not server.is_idle(), server.metrics()  # the request holds KV blocks
    assert stream.response.is_closed
    assert wait_until(lambda: aborts(server) > aborts_before), server.metrics()
    assert wait_until(server.is_idle), server.metrics()


async def test_async_stream_left_early_aborts(server: ServerProcess, embedder: Any) -> None:
    aborts_before = aborts(server)
    async with AsyncPEClient(base_url=server.base_url) as c:
        stream = await c.completions.create(
            model=MODEL,
            prompt_embeds=embedder(TEXT),
            max_tokens=1900,
            ignore_eos=True,
            stream=True,
        )
        async with stream:
            async for _ in stream:
                break
    assert await asyncio.to_thread(wait_until, lambda: aborts(server) > aborts_before)
    assert await asyncio.to_thread(wait_until, server.is_idle)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris", "Rome"]}},
            "required": ["city"],
        },
    },
}


def test_constraints_and_tool_calls_reach_the_client(client: PEClient, embedder: Any) -> None:
    """pe-client sends structured_outputs / response_format / tools and reads tool_calls,
    whole and streamed (issue 20)."""
    messages = [user("Weather in", embedder(TEXT))]
    choice = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=30, temperature=0.0,
        structured_outputs={"choice": ["sunny", "rainy"]},
    ).choices[0]  # fmt: skip
    assert choice.message.content in ("sunny", "rainy")
    named = {"type": "function", "function": {"name": "get_weather"}}
    whole = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=30, temperature=0.0, tools=[WEATHER_TOOL],
        tool_choice=named,
    ).choices[0]  # fmt: skip
    (call,) = whole.message.tool_calls
    assert call.function.name == "get_weather"
    assert call.function.arguments.replace(" ", "") in ('{"city":"Paris"}', '{"city":"Rome"}')
    arguments, names = "", []
    for chunk in client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=30, temperature=0.0, tools=[WEATHER_TOOL],
        tool_choice=named, stream=True,
    ):  # fmt: skip
        for piece in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            if piece.function and piece.function.name:
                names.append(piece.function.name)
            arguments += (piece.function.arguments or "") if piece.function else ""
    assert names == ["get_weather"] and arguments == call.function.arguments
