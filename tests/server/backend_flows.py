"""The requests that compare backends (tests/e2e/test_server_backends.py, tests/vllm): each flow
runs on one server through the official openai client and returns what must agree across them."""

from __future__ import annotations

from typing import Any

import openai
from server_harness import API_KEY, MODEL, ServerProcess

TEXT = "The quick brown fox jumps over the lazy dog"


def client_for(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=300)


def chat(server: ServerProcess, messages: list[dict[str, Any]], **greedy: Any) -> tuple[str, int]:
    """The reply's content and prompt tokens; the same request streamed must join to it."""
    with client_for(server) as client:
        done = client.chat.completions.create(
            model=MODEL, messages=messages, extra_body={"ignore_eos": True}, **greedy
        )
        stream = client.chat.completions.create(
            model=MODEL, messages=messages, stream=True, extra_body={"ignore_eos": True}, **greedy
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    content = done.choices[0].message.content or ""
    assert streamed == content
    return content, done.usage.prompt_tokens


def logprobs(server: ServerProcess, embeds: str, **greedy: Any) -> tuple[list[str], list[float]]:
    """The sampled tokens and their logprobs (top 2) for a prompt of ``embeds`` alone."""
    with client_for(server) as client:
        res = client.completions.create(
            model=MODEL,
            prompt=None,
            logprobs=2,
            extra_body={"prompt_embeds": embeds, "ignore_eos": True},
            **greedy,
        )
    lp = res.choices[0].logprobs
    return lp.tokens, lp.token_logprobs
