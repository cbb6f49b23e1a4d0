"""Streams built from the engine's per-step deltas say on the wire exactly what the whole
answer says: text (held back around stop strings), token ids, logprobs with their offsets,
finish and stop reasons, per choice, with echo and n > 1."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import openai
import pytest

from conftest import MODEL

TEXT = "The quick brown fox jumps over the lazy dog"


def greedy_text(client: openai.OpenAI, max_tokens: int) -> str:
    res = client.completions.create(
        model=MODEL, prompt=TEXT, max_tokens=max_tokens, temperature=0.0,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    return str(res.choices[0].text)


def stop_string(client: openai.OpenAI) -> str:
    """Three characters from the middle of the greedy continuation (a stop that matches late)."""
    text = greedy_text(client, 16)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    if len(stop) < 3 or not stop.strip():
        pytest.skip("greedy text of the random model has no usable stop string here")
    return stop


def joined_completion_stream(chunks: list[Any]) -> dict[int, dict[str, Any]]:
    joined: dict[int, dict[str, Any]] = defaultdict(
        lambda: {"text": "", "token_ids": [], "tokens": [], "token_logprobs": [],
                 "text_offset": [], "finish_reason": [], "stop_reason": []}
    )  # fmt: skip
    for chunk in chunks:
        for choice in chunk.choices:
            c = choice.model_dump()
            j = joined[c["index"]]
            j["text"] += c["text"]
            j["token_ids"] += c.get("token_ids") or []
            if c["logprobs"]:
                for key in ("tokens", "token_logprobs", "text_offset"):
                    j[key] += c["logprobs"][key]
            if c["finish_reason"] is not None:
                j["finish_reason"].append(c["finish_reason"])
                j["stop_reason"].append(c.get("stop_reason"))
    return joined


@pytest.mark.parametrize("echo", [False, True])
def test_completion_stream_with_stop_logprobs_and_n_equals_the_answer(
    client: openai.OpenAI, echo: bool
) -> None:
    stop = stop_string(client)
    request: dict[str, Any] = {
        "model": MODEL, "prompt": TEXT, "max_tokens": 16, "temperature": 0.0, "n": 2,
        "logprobs": 2, "stop": [stop], "echo": echo,
        "extra_body": {"ignore_eos": True, "return_token_ids": True},
    }  # fmt: skip
    whole = client.completions.create(**request)
    chunks = list(client.completions.create(**request, stream=True))
    joined = joined_completion_stream(chunks)
    assert sorted(joined) == [0, 1]
    for choice in whole.choices:
        c, j = choice.model_dump(), joined[choice.index]
        assert c["finish_reason"] == "stop" and c["stop_reason"] == stop
        assert j["text"] == c["text"] and stop not in c["text"]
        assert j["token_ids"] == c["token_ids"]  # every id once, none lost to held-back text
        assert j["finish_reason"] == ["stop"] and j["stop_reason"] == [stop]
        # (text_offset: a chunk's offsets count from the text sent before it, as vLLM's)
        for key in ("tokens", "token_logprobs"):
            assert j[key] == c["logprobs"][key], key


def test_chat_stream_with_stop_logprobs_and_n_equals_the_answer(client: openai.OpenAI) -> None:
    stop = stop_string(client)
    request: dict[str, Any] = {
        "model": MODEL, "messages": [{"role": "user", "content": TEXT}], "max_tokens": 16,
        "temperature": 0.0, "n": 2, "logprobs": True, "top_logprobs": 2, "stop": [stop],
        "extra_body": {"ignore_eos": True, "return_token_ids": True},
    }  # fmt: skip
    whole = client.chat.completions.create(**request)
    chunks = list(client.chat.completions.create(**request, stream=True))
    roles = [c.choices[0].index for c in chunks if c.choices and c.choices[0].delta.role]
    assert sorted(roles) == [0, 1]
    content: dict[int, str] = defaultdict(str)
    token_ids: dict[int, list[int]] = defaultdict(list)
    logprobs: dict[int, list[Any]] = defaultdict(list)
    finishes: dict[int, list[str]] = defaultdict(list)
    for chunk in chunks:
        for choice in chunk.choices:
            c = choice.model_dump()
            content[c["index"]] += c["delta"].get("content") or ""
            token_ids[c["index"]] += c.get("token_ids") or []
            if c["logprobs"]:
                logprobs[c["index"]] += c["logprobs"]["content"]
            if c["finish_reason"] is not None:
                finishes[c["index"]].append(c["finish_reason"])
    for choice in whole.choices:
        c = choice.model_dump()
        i = c["index"]
        assert content[i] == c["message"]["content"] and finishes[i] == [c["finish_reason"]]
        stop_tokens = token_ids[i]
        # The stream sends the ids of tokens whose text showed (or was cut at the stop).
        assert c["token_ids"] == stop_tokens
        assert logprobs[i] == c["logprobs"]["content"]


def test_usage_of_a_long_stream_counts_every_token(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model=MODEL, prompt=TEXT, max_tokens=120, temperature=0.0, n=2, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 240
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes.count("length") == 2
