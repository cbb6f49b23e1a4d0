"""vLLM 0.33's own Chat Completions prompt-embeds tests, carried to pe (issue 18).

The requests and assertions of vllm-project/vllm
``tests/entrypoints/openai/chat_completion/test_chat_completion_with_prompt_embeds.py``, sent
to a pe server started with that file's server arguments (ChatML template, bfloat16).
``facebook/opt-125m`` becomes the tiny random Llama with the SmolLM2 tokenizer; embeddings come
from the model's own input embedding table, cast to the server dtype as vLLM's fixtures do.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import openai
import pytest
import torch
from openai import BadRequestError
from server_harness import ServerProcess

from archive_payloads import b64, torch_save
from conftest import API_KEY, MODEL, Embedder, start_server

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


def server_args(chat_template: Path) -> list[str]:
    return [
        "--dtype", "bfloat16",
        "--max-model-len", "2048",
        "--max-num-seqs", "128",
        "--enforce-eager",
        "--chat-template", str(chat_template),
        "--enable-prompt-embeds",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def server(
    tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log_dir = tmp_path_factory.mktemp("vllm_suite_chat")
    template = log_dir / "template_chatml.jinja"
    template.write_text(CHATML_TEMPLATE)
    proc = start_server(tiny_llama_dir, log_dir, "server", server_args(template))
    yield proc
    proc.stop()


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=server.base_url, api_key=API_KEY, max_retries=0
    ) as async_client:
        yield async_client


def _encode_embeds(embeds: torch.Tensor) -> str:
    """vLLM's test helper: base64 of ``torch.save(embeds)``."""
    return b64(torch_save(embeds))


@pytest.fixture(scope="module")
def prompt_embeds_b64(embedder: Embedder) -> list[str]:
    """Pre-compute embeddings for two short prompts and return as base64 (vLLM's
    ``hf_model.get_prompt_embeddings``: default special tokens, the input embedding layer)."""
    prompts = ["Hello, my name is", "What is an LLM?"]
    embeddings = [torch.from_numpy(embedder.rows(embedder.tokenizer(p).input_ids)) for p in prompts]
    return [_encode_embeds(e.to(SERVER_DTYPE)) for e in embeddings]


async def test_single_prompt_embeds_part(
    client: openai.AsyncOpenAI,
    prompt_embeds_b64: list[str],
) -> None:
    """vLLM: test_single_prompt_embeds_part (a user message with one prompt_embeds part + text)."""
    b64_part = prompt_embeds_b64[0]
    chat = await client.chat.completions.create(
        model=MODEL,
        max_tokens=5,
        temperature=0.0,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "prompt_embeds", "data": b64_part},
                    {"type": "text", "text": "Continue:"},
                ],
            }
        ],
    )
    assert chat.choices[0].message.content is not None
    assert len(chat.choices[0].message.content) > 0


async def test_multiple_prompt_embeds_parts(
    client: openai.AsyncOpenAI,
    prompt_embeds_b64: list[str],
) -> None:
    """vLLM: test_multiple_prompt_embeds_parts (several parts in a single message)."""
    b64_a, b64_b = prompt_embeds_b64
    chat = await client.chat.completions.create(
        model=MODEL,
        max_tokens=5,
        temperature=0.0,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "prompt_embeds", "data": b64_a},
                    {"type": "text", "text": " and "},
                    {"type": "prompt_embeds", "data": b64_b},
                ],
            }
        ],
    )
    assert chat.choices[0].message.content is not None
    assert len(chat.choices[0].message.content) > 0


async def test_multi_message_conversation(
    client: openai.AsyncOpenAI,
    prompt_embeds_b64: list[str],
) -> None:
    """vLLM: test_multi_message_conversation (parts in both system and user messages)."""
    b64_sys, b64_usr = prompt_embeds_b64
    chat = await client.chat.completions.create(
        model=MODEL,
        max_tokens=5,
        temperature=0.0,
        messages=[
            {
                "role": "system",
                "content": [
                    {"type": "text", "text": "You are helpful."},
                    {"type": "prompt_embeds", "data": b64_sys},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "prompt_embeds", "data": b64_usr},
                    {"type": "text", "text": "Summarize."},
                ],
            },
        ],
    )
    assert chat.choices[0].message.content is not None
    assert len(chat.choices[0].message.content) > 0


async def test_streaming(
    client: openai.AsyncOpenAI,
    prompt_embeds_b64: list[str],
) -> None:
    """vLLM: test_streaming (the streamed deltas join to the non-streamed reply)."""
    b64_part = prompt_embeds_b64[0]
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "prompt_embeds", "data": b64_part},
                {"type": "text", "text": "Continue:"},
            ],
        }
    ]

    # Non-streaming baseline.
    baseline = await client.chat.completions.create(
        model=MODEL,
        max_tokens=5,
        temperature=0.0,
        messages=messages,
    )
    expected = baseline.choices[0].message.content

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
    return content, _encode_embeds(embeds)


async def test_text_content_and_prompt_embeds_match(
    client: openai.AsyncOpenAI,
    aligned_content_and_embeds_b64: tuple[str, str],
) -> None:
    """vLLM: test_text_content_and_prompt_embeds_match (equal content as text and as
    prompt_embeds gives identical greedy output; the two requests run concurrently)."""
    content, encoded_embeds = aligned_content_and_embeds_b64

    text_resp, embeds_resp = await asyncio.gather(
        client.chat.completions.create(
            model=MODEL,
            max_tokens=10,
            temperature=0.0,
            messages=[{"role": "user", "content": content}],
        ),
        client.chat.completions.create(
            model=MODEL,
            max_tokens=10,
            temperature=0.0,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "prompt_embeds", "data": encoded_embeds}],
                }
            ],
        ),
    )

    text_out = text_resp.choices[0].message.content
    embeds_out = embeds_resp.choices[0].message.content
    assert text_out is not None and len(text_out) > 0
    assert embeds_out is not None and len(embeds_out) > 0
    assert text_out == embeds_out


async def test_missing_data_field(
    client: openai.AsyncOpenAI,
) -> None:
    """vLLM: test_missing_data_field (a prompt_embeds part without ``data``)."""
    with pytest.raises(BadRequestError):
        await client.chat.completions.create(
            model=MODEL,
            max_tokens=5,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "prompt_embeds"}],
                }
            ],
        )


async def test_invalid_base64(
    client: openai.AsyncOpenAI,
) -> None:
    """vLLM: test_invalid_base64 (invalid base64 in the ``data`` field)."""
    with pytest.raises(BadRequestError):
        await client.chat.completions.create(
            model=MODEL,
            max_tokens=5,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "prompt_embeds", "data": "not_valid_base64!!"},
                    ],
                }
            ],
        )
