"""vLLM 0.33's own Completions prompt-embeds tests, carried to pe (issue 18).

The requests and assertions of vllm-project/vllm
``tests/entrypoints/openai/completion/test_completion_with_prompt_embeds.py`` and the
prompt_embeds case of ``tests/entrypoints/openai/completion/test_completion_error.py``, sent to a
pe server started with vLLM's own server arguments. vLLM's fixture runs every case on a server
with a LoRA module and parametrizes the model name; pe has no LoRA, so the base-model cases run
and the LoRA ones are skipped. ``facebook/opt-125m`` becomes the tiny random Llama with the
SmolLM2 tokenizer; its embeddings come from the model's own input embedding table, as vLLM's
``hf_model.get_prompt_embeddings`` does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
import torch
from openai import BadRequestError
from server_harness import ServerProcess
from vllm_suite import SERVER_ARGS, async_client, encode_embeds

from conftest import MODEL, Embedder, module_server

LORA_SERVING_MODEL_NAME = "opt125m-lora"
NO_LORA = pytest.mark.skip(reason="pe has no LoRA adapters (vLLM's --enable-lora/--lora-module)")
MODEL_NAMES = [MODEL, pytest.param(LORA_SERVING_MODEL_NAME, marks=NO_LORA)]

EXAMPLE_PROMPTS = [
    "Hello, my name is",
    "What is an LLM?",
]


def get_prompt_embeddings(embedder: Embedder, prompts: list[str]) -> list[torch.Tensor]:
    """vLLM's ``HfRunner.get_prompt_embeddings``: the input embedding layer's output for each
    prompt tokenized as the HF runner does (default special tokens), still requiring grad."""
    rows = [embedder.rows(embedder.tokenizer(p).input_ids) for p in prompts]
    return [torch.from_numpy(r).requires_grad_() for r in rows]


@pytest.fixture(scope="module")
def example_prompt_embeds(embedder: Embedder) -> list[str]:
    return [encode_embeds(item) for item in get_prompt_embeddings(embedder, EXAMPLE_PROMPTS)]


server_with_prompt_embeds = module_server("vllm_suite_completions", SERVER_ARGS)


@pytest.fixture
async def client_with_prompt_embeds(
    server_with_prompt_embeds: ServerProcess,
) -> AsyncIterator[openai.AsyncOpenAI]:
    async with async_client(server_with_prompt_embeds) as client:
        yield client


async def complete(
    client: openai.AsyncOpenAI,
    model_name: str,
    prompt_embeds: str | list[str] | None = None,
    prompt: str | None = None,
    extra_body: dict[str, Any] | None = None,
    **params: Any,
) -> Any:
    """vLLM's request: 5 greedy tokens, ``prompt_embeds`` (when given) in the extra body."""
    embeds = {} if prompt_embeds is None else {"prompt_embeds": prompt_embeds}
    return await client.completions.create(
        model=model_name,
        prompt=prompt,
        max_tokens=5,
        temperature=0.0,
        extra_body={**embeds, **(extra_body or {})},
        **params,
    )


def assert_logprobs(logprobs: Any, logprobs_arg: int) -> None:
    """vLLM's checks of one choice's logprobs: five tokens, each with its top alternatives."""
    assert logprobs is not None
    assert logprobs.text_offset is not None and len(logprobs.text_offset) == 5
    assert logprobs.token_logprobs is not None and len(logprobs.token_logprobs) == 5
    assert logprobs.top_logprobs is not None and len(logprobs.top_logprobs) == 5
    for top_logprobs in logprobs.top_logprobs[1:]:
        assert max(logprobs_arg, 1) <= len(top_logprobs) <= logprobs_arg + 1
    assert logprobs.tokens is not None and len(logprobs.tokens) == 5


@pytest.mark.parametrize("model_name", MODEL_NAMES)
async def test_completions_with_prompt_embeds(
    example_prompt_embeds: list[str],
    client_with_prompt_embeds: openai.AsyncOpenAI,
    model_name: str,
) -> None:
    """vLLM: test_completions_with_prompt_embeds."""
    client = client_with_prompt_embeds
    encoded_embeds, encoded_embeds2 = example_prompt_embeds

    # Test case: Single prompt embeds input
    completion = await complete(client, model_name, encoded_embeds)
    assert len(completion.choices[0].text) >= 1
    assert completion.choices[0].prompt_logprobs is None

    # Test case: batch completion with prompt_embeds
    completion = await complete(client, model_name, [encoded_embeds, encoded_embeds2])
    assert len(completion.choices) == 2
    assert len(completion.choices[0].text) >= 1
    assert len(completion.choices[1].text) >= 1

    # Test case: streaming with prompt_embeds
    single_completion = await complete(client, model_name, encoded_embeds)
    single_output = single_completion.choices[0].text

    stream = await complete(client, model_name, encoded_embeds, stream=True)
    chunks = []
    finish_reason_count = 0
    async for chunk in stream:
        chunks.append(chunk.choices[0].text)
        if chunk.choices[0].finish_reason is not None:
            finish_reason_count += 1
    assert finish_reason_count == 1
    assert chunk.choices[0].finish_reason == "length"
    assert chunk.choices[0].text
    assert "".join(chunks) == single_output

    # Test case: batch streaming with prompt_embeds
    stream = await complete(client, model_name, [encoded_embeds, encoded_embeds2], stream=True)
    chunks_stream_embeds: list[list[str]] = [[], []]
    finish_reason_count = 0
    async for chunk in stream:
        chunks_stream_embeds[chunk.choices[0].index].append(chunk.choices[0].text)
        if chunk.choices[0].finish_reason is not None:
            finish_reason_count += 1
    assert finish_reason_count == 2
    assert chunk.choices[0].finish_reason == "length"
    assert chunk.choices[0].text
    assert len(chunks_stream_embeds[0]) > 0
    assert len(chunks_stream_embeds[1]) > 0

    # Test case: mixed text and prompt_embeds
    completion_mixed = await complete(client, model_name, encoded_embeds, "This is a prompt")
    # vLLM's test asserts on the batch completion above here, not on completion_mixed.
    assert len(completion.choices) == 2
    completion_text_only = await complete(client, model_name, prompt="This is a prompt")
    completion_embeds_only = await complete(client, model_name, encoded_embeds)
    # Embeddings responses should be handled first
    assert completion_mixed.choices[0].text == completion_embeds_only.choices[0].text
    assert completion_mixed.choices[1].text == completion_text_only.choices[0].text


@pytest.mark.parametrize("model_name", MODEL_NAMES)
async def test_completions_errors_with_prompt_embeds(
    client_with_prompt_embeds: openai.AsyncOpenAI, model_name: str
) -> None:
    """vLLM: test_completions_errors_with_prompt_embeds."""
    # Test error case: invalid prompt_embeds
    with pytest.raises(BadRequestError):
        await complete(client_with_prompt_embeds, model_name, "invalid_base64")


@pytest.mark.parametrize("logprobs_arg", [1, 0])
@pytest.mark.parametrize("model_name", MODEL_NAMES)
async def test_completions_with_logprobs_and_prompt_embeds(
    example_prompt_embeds: list[str],
    client_with_prompt_embeds: openai.AsyncOpenAI,
    logprobs_arg: int,
    model_name: str,
) -> None:
    """vLLM: test_completions_with_logprobs_and_prompt_embeds."""
    client = client_with_prompt_embeds
    encoded_embeds, encoded_embeds2 = example_prompt_embeds

    # Test case: Logprobs using prompt_embeds
    completion = await complete(
        client, model_name, encoded_embeds, echo=False, logprobs=logprobs_arg
    )
    assert_logprobs(completion.choices[0].logprobs, logprobs_arg)

    # Test case: Log probs with batch completion and prompt_embeds
    completion = await complete(
        client, model_name, [encoded_embeds, encoded_embeds2], echo=False, logprobs=logprobs_arg
    )
    assert len(completion.choices) == 2
    for choice in completion.choices:
        assert_logprobs(choice.logprobs, logprobs_arg)


async def test_prompt_logprobs_raises_error(
    example_prompt_embeds: list[str],
    client_with_prompt_embeds: openai.AsyncOpenAI,
) -> None:
    """vLLM: test_prompt_logprobs_raises_error (``prompt_logprobs: true`` is coerced to 1)."""
    encoded_embeds, _ = example_prompt_embeds

    with pytest.raises(BadRequestError, match="not compatible"):
        await complete(
            client_with_prompt_embeds,
            MODEL,
            encoded_embeds,
            extra_body={"prompt_logprobs": True},
        )


async def test_empty_prompt_embeds(
    client_with_prompt_embeds: openai.AsyncOpenAI,
) -> None:
    """vLLM: test_empty_prompt_embeds (an empty list is no embeds; the text prompt runs)."""
    await complete(client_with_prompt_embeds, MODEL, [], "Hello")


async def test_completion_suffix_rejects_prompt_embeds(
    client_with_prompt_embeds: openai.AsyncOpenAI,
) -> None:
    """vLLM test_completion_error.py: test_completion_suffix_rejects_prompt_embeds.

    vLLM builds ``CompletionRequest(prompt="prefix", suffix="suffix", prompt_embeds=b"embeds")``
    and renders it; here the same fields travel as JSON. The check comes before decoding, so the
    payload is never read.
    """
    with pytest.raises(BadRequestError) as excinfo:
        await client_with_prompt_embeds.completions.create(
            model=MODEL,
            prompt="prefix",
            suffix="suffix",
            extra_body={"prompt_embeds": "embeds"},
        )
    assert "suffix is not supported with prompt_embeds" in excinfo.value.message
