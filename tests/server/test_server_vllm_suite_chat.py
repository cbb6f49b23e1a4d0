"""vLLM 0.33's own Chat Completions prompt-embeds tests, carried to pe (issue 18).

The requests and assertions of vllm-project/vllm
``tests/entrypoints/openai/chat_completion/test_chat_completion_with_prompt_embeds.py``, sent
to a pe server started with that file's server arguments (ChatML template, bfloat16).
``facebook/opt-125m`` becomes the tiny random Llama with the SmolLM2 tokenizer; embeddings come
from the model's own input embedding table, cast to the server dtype as vLLM's fixtures do.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
import torch
from openai import BadRequestError
from server_harness import ServerProcess
from vllm_suite import SERVER_ARGS, async_client, encode_embeds

from conftest import MODEL, Embedder, module_server

# vLLM's examples/template_chatml.jinja.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content']}}{% if (loop.last and add_generation_prompt) or not loop.last %}"
    "{{ '<|im_end|>' + '\\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}\n"
)
# Matches `--dtype` in the server args, as in vLLM's test.
SERVER_DTYPE: torch.dtype = torch.bfloat16


server = module_server("vllm_suite_chat", SERVER_ARGS, chat_template=CHATML_TEMPLATE)


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[openai.AsyncOpenAI]:
    async with async_client(server) as client:
        yield client


@pytest.fixture(scope="module")
def prompt_embeds_b64(embedder: Embedder) -> list[str]:
    """Pre-compute embeddings for two short prompts and return as base64 (vLLM's
    ``hf_model.get_prompt_embeddings``: default special tokens, the input embedding layer)."""
    prompts = ["Hello, my name is", "What is an LLM?"]
    embeddings = [torch.from_numpy(embedder.rows(embedder.tokenizer(p).input_ids)) for p in prompts]
    return [encode_embeds(e.to(SERVER_DTYPE)) for e in embeddings]


async def reply_content(
    client: openai.AsyncOpenAI, messages: list[dict[str, Any]], max_tokens: int = 5
) -> Any:
    """vLLM's request: greedy, 5 tokens by default; the first choice's content."""
    chat = await client.chat.completions.create(
        model=MODEL, max_tokens=max_tokens, temperature=0.0, messages=messages
    )
    return chat.choices[0].message.content


def user_parts(*parts: dict[str, str]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(parts)}]


def embeds_part(data: str) -> dict[str, str]:
    return {"type": "prompt_embeds", "data": data}


def text_part(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


# vLLM's test_single_prompt_embeds_part (one part + text), test_multiple_prompt_embeds_parts
# (several parts in one message) and test_multi_message_conversation (parts in system and user
# messages): each message list, built from the two prompts' embeddings, gets a non-empty reply.
PARTS_CASES = {
    "single_prompt_embeds_part": lambda a, _: user_parts(embeds_part(a), text_part("Continue:")),
    "multiple_prompt_embeds_parts": lambda a, b: user_parts(
        embeds_part(a), text_part(" and "), embeds_part(b)
    ),
    "multi_message_conversation": lambda a, b: [
        {"role": "system", "content": [text_part("You are helpful."), embeds_part(a)]},
        *user_parts(embeds_part(b), text_part("Summarize.")),
    ],
}


@pytest.mark.parametrize("case", PARTS_CASES)
async def test_prompt_embeds_parts(
    client: openai.AsyncOpenAI, prompt_embeds_b64: list[str], case: str
) -> None:
    """vLLM: test_{case}."""
    content = await reply_content(client, PARTS_CASES[case](*prompt_embeds_b64))
    assert content is not None
    assert len(content) > 0


async def test_streaming(
    client: openai.AsyncOpenAI,
    prompt_embeds_b64: list[str],
) -> None:
    """vLLM: test_streaming (the streamed deltas join to the non-streamed reply)."""
    b64_part = prompt_embeds_b64[0]
    messages = user_parts(embeds_part(b64_part), text_part("Continue:"))

    # Non-streaming baseline.
    expected = await reply_content(client, messages)

    # Streaming.
    stream = await client.chat.completions.create(
        model=MODEL,
        max_tokens=5,
        temperature=0.0,
        stream=True,
        messages=messages,
    )
    chunks: list[str] = []
    async for chunk in stream:
        delta = chunk.choices[0].delta.content
        if delta:
            chunks.append(delta)
    assert "".join(chunks) == expected


@pytest.fixture(scope="module")
def aligned_content_and_embeds_b64(embedder: Embedder) -> tuple[str, str]:
    """Return ``(content, base64_embeds)`` where the embeddings are the model's embedding of
    ``content`` tokenized WITHOUT special tokens (vLLM's fixture of the same name)."""
    content = "Hello, my name is"
    ids = embedder.tokenizer(content, add_special_tokens=False).input_ids
    embeds = torch.from_numpy(embedder.rows(ids)).to(SERVER_DTYPE)
    return content, encode_embeds(embeds)


async def test_text_content_and_prompt_embeds_match(
    client: openai.AsyncOpenAI,
    aligned_content_and_embeds_b64: tuple[str, str],
) -> None:
    """vLLM: test_text_content_and_prompt_embeds_match (equal content as text and as
    prompt_embeds gives identical greedy output; the two requests run concurrently)."""
    content, encoded_embeds = aligned_content_and_embeds_b64

    text_out, embeds_out = await asyncio.gather(
        reply_content(client, [{"role": "user", "content": content}], max_tokens=10),
        reply_content(client, user_parts(embeds_part(encoded_embeds)), max_tokens=10),
    )

    assert text_out is not None and len(text_out) > 0
    assert embeds_out is not None and len(embeds_out) > 0
    assert text_out == embeds_out


async def test_missing_data_field(
    client: openai.AsyncOpenAI,
) -> None:
    """vLLM: test_missing_data_field (a prompt_embeds part without ``data``)."""
    with pytest.raises(BadRequestError):
        await reply_content(client, user_parts({"type": "prompt_embeds"}))


async def test_invalid_base64(
    client: openai.AsyncOpenAI,
) -> None:
    """vLLM: test_invalid_base64 (invalid base64 in the ``data`` field)."""
    with pytest.raises(BadRequestError):
        await reply_content(client, user_parts(embeds_part("not_valid_base64!!")))
