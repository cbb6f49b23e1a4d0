"""/v1/chat/completions with text and prompt_embeds parts on the real server."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from conftest import MAX_MODEL_LEN, MODEL, Embedder
from pe_common.codec import encode_prompt_embeds

QUESTION = "What is the capital of France"
DOCUMENT = "The Eiffel Tower is a lattice tower in Paris"
GREEDY: dict[str, Any] = {"max_tokens": 8, "temperature": 0.0}


def part(rows: Any) -> dict[str, Any]:
    return {"type": "prompt_embeds", "data": str(encode_prompt_embeds(rows, "safetensors"))}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def chat(client: openai.OpenAI, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    extra = {"ignore_eos": True, **kwargs.pop("extra_body", {})}
    return client.chat.completions.create(
        model=MODEL, messages=messages, extra_body=extra, **{**GREEDY, **kwargs}
    )


def test_text_and_embeds_of_the_same_content_agree(
    client: openai.OpenAI, embedder: Embedder
) -> None:
    by_text = chat(client, [{"role": "user", "content": QUESTION}])
    by_embeds = chat(client, [{"role": "user", "content": [part(embedder(QUESTION))]}])
    assert by_embeds.choices[0].message.content == by_text.choices[0].message.content
    assert by_embeds.usage.prompt_tokens == by_text.usage.prompt_tokens
    assert by_embeds.choices[0].message.role == "assistant"
    assert by_embeds.object == "chat.completion" and by_embeds.id.startswith("chatcmpl-")


def test_several_parts_several_messages_and_roles(
    client: openai.OpenAI, embedder: Embedder
) -> None:
    as_text = [
        {"role": "system", "content": "You are brief"},
        {"role": "user", "content": [text("Read this"), text(DOCUMENT), text("Where is it")]},
        {"role": "assistant", "content": "In Paris"},
        {"role": "user", "content": QUESTION},
    ]
    as_embeds = [
        {"role": "system", "content": [part(embedder("You are brief"))]},
        {
            "role": "user",
            "content": [text("Read this"), part(embedder(DOCUMENT)), text("Where is it")],
        },
        {"role": "assistant", "content": [part(embedder("In Paris"))]},
        {"role": "user", "content": [part(embedder(QUESTION))]},
    ]
    by_text = chat(client, as_text)
    by_embeds = chat(client, as_embeds)
    assert by_embeds.choices[0].message.content == by_text.choices[0].message.content
    assert by_embeds.usage.prompt_tokens == by_text.usage.prompt_tokens


def test_streaming_chat(client: openai.OpenAI, embedder: Embedder) -> None:
    messages = [{"role": "user", "content": [text("Read"), part(embedder(DOCUMENT))]}]
    done = chat(client, messages)
    stream = chat(client, messages, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    first = chunks[0].choices[0]
    assert first.delta.role == "assistant" and first.delta.content == ""
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == done.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == done.usage.total_tokens
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_chat_logprobs(client: openai.OpenAI, embedder: Embedder) -> None:
    res = chat(
        client,
        [{"role": "user", "content": [part(embedder(QUESTION))]}],
        logprobs=True,
        top_logprobs=2,
    )
    content = res.choices[0].logprobs.content
    assert len(content) == 8
    for entry in content:
        assert entry.logprob <= 0.0 and len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
    with pytest.raises(openai.BadRequestError):
        chat(client, [{"role": "user", "content": QUESTION}], top_logprobs=2)


def test_max_completion_tokens_and_default_length(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    res = chat(client, messages, max_tokens=None, max_completion_tokens=5)
    assert res.usage.completion_tokens == 5
    full = chat(client, messages, max_tokens=None)
    assert full.usage.prompt_tokens + full.usage.completion_tokens == MAX_MODEL_LEN
    assert full.choices[0].finish_reason == "length"


def test_template_options(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    plain = chat(client, messages)
    without = chat(client, messages, extra_body={"add_generation_prompt": False})
    assert without.usage.prompt_tokens < plain.usage.prompt_tokens
    # A request's own template needs --trust-request-chat-template (see
    # test_server_chat_template.py for what a trusting server does with it).
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, messages, extra_body={"chat_template": "{% for %}"})
    assert info.value.body["code"] == "untrusted_chat_template"


def test_reserved_placeholder_in_text_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, [{"role": "user", "content": "x <prompt_embeds> y"}])
    assert info.value.body["param"] == "messages"
    assert info.value.body["message"].startswith(
        "Text content may not contain the reserved placeholder '<prompt_embeds>'."
    )


def test_context_length_from_chat(client: openai.OpenAI, embedder: Embedder) -> None:
    rows = embedder.rows([5] * (MAX_MODEL_LEN + 4))
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, [{"role": "user", "content": [part(rows)]}])
    assert info.value.body["param"] == "input_tokens"
    assert info.value.body["code"] == "context_length_exceeded"
    assert info.value.body["message"].startswith(
        f"This model's maximum context length is {MAX_MODEL_LEN} tokens."
    )
