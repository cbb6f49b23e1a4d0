"""vLLM's lax scalars through the real server: ``"5"`` and ``true`` for numbers, ``1`` and
``"true"`` for flags answer as the typed values do; every other field keeps its 400."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import msgspec
import openai
import pytest
from server_harness import ServerProcess, assert_error

from conftest import MODEL, Embedder
from pe_common.codec import encode_prompt_embeds

TEXT = "The quick brown fox jumps over the lazy dog"
NOT_COMPATIBLE = "prompt_logprobs is not compatible with prompt embeds."


def b64(x: Any) -> str:
    return str(encode_prompt_embeds(x, "safetensors"))


def post(server: ServerProcess, route: str, body: dict[str, Any]) -> httpx.Response:
    return server.post(route, json={"model": MODEL, **body})


def test_vllm_prompt_logprobs_true_with_embeds(
    client: openai.OpenAI, server: ServerProcess, embedder: Embedder
) -> None:
    """vLLM's test_prompt_logprobs_raises_error: ``true`` is read as 1, then the combination
    is refused with vLLM's message (not a type error)."""
    with pytest.raises(openai.BadRequestError, match="not compatible"):
        client.completions.create(
            model=MODEL,
            prompt=None,
            max_tokens=5,
            temperature=0.0,
            extra_body={"prompt_embeds": b64(embedder(TEXT)), "prompt_logprobs": True},
        )
    body = {"prompt_embeds": b64(embedder(TEXT)), "prompt_logprobs": "1", "max_tokens": 5}
    error = assert_error(post(server, "/v1/completions", body), 400, "unsupported")
    assert error["message"] == NOT_COMPATIBLE


@pytest.mark.skipif(
    os.environ.get("PE_TEST_BACKEND", "native") != "native",
    reason="prompt_logprobs is a native-backend feature",
)
def test_prompt_logprobs_true_on_text_is_one(server: ServerProcess) -> None:
    base = {"prompt": TEXT, "max_tokens": 1, "temperature": 0}
    lax = post(server, "/v1/completions", {**base, "prompt_logprobs": True})
    typed = post(server, "/v1/completions", {**base, "prompt_logprobs": 1})
    assert lax.status_code == typed.status_code == 200, lax.text
    entries = lax.json()["choices"][0]["prompt_logprobs"]
    assert entries == typed.json()["choices"][0]["prompt_logprobs"]
    assert entries[0] is None and all(1 <= len(entry) <= 2 for entry in entries[1:])


def test_lax_sampling_fields_answer_as_typed_ones(server: ServerProcess) -> None:
    base = {"prompt": TEXT}
    lax = {"max_tokens": "5", "temperature": 0, "n": "2", "seed": "7", "ignore_eos": "true"}
    typed = {"max_tokens": 5, "temperature": 0.0, "n": 2, "seed": 7, "ignore_eos": True}
    by_lax = post(server, "/v1/completions", {**base, **lax})
    by_typed = post(server, "/v1/completions", {**base, **typed})
    assert by_lax.status_code == by_typed.status_code == 200, by_lax.text
    assert by_lax.json()["usage"]["completion_tokens"] == 10
    texts = [choice["text"] for choice in by_lax.json()["choices"]]
    assert texts == [choice["text"] for choice in by_typed.json()["choices"]]


def test_stream_one_streams(server: ServerProcess) -> None:
    body = {
        "model": MODEL,
        "prompt": TEXT,
        "max_tokens": 3.0,
        "ignore_eos": 1,
        "stream": 1,
        "stream_options": {"include_usage": "yes"},
    }
    with httpx.stream(
        "POST", f"{server.root}/v1/completions", json=body, headers=server.headers, timeout=30
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 3


def test_chat_logprobs_flag_and_count_as_strings(server: ServerProcess) -> None:
    messages = [{"role": "user", "content": "Hello"}]
    lax = {"logprobs": "true", "top_logprobs": "2", "max_completion_tokens": 3.0}
    typed = {"logprobs": True, "top_logprobs": 2, "max_completion_tokens": 3}
    common = {"messages": messages, "temperature": 0, "ignore_eos": True}
    by_lax = post(server, "/v1/chat/completions", {**common, **lax})
    by_typed = post(server, "/v1/chat/completions", {**common, **typed})
    assert by_lax.status_code == by_typed.status_code == 200, by_lax.text
    content = by_lax.json()["choices"][0]["logprobs"]["content"]
    assert len(content) == 3 and all(len(entry["top_logprobs"]) == 2 for entry in content)
    assert by_lax.json()["choices"][0]["message"] == by_typed.json()["choices"][0]["message"]


def test_msgpack_body_with_lax_fields(server: ServerProcess, embedder: Embedder) -> None:
    body = {
        "model": MODEL,
        "prompt_embeds": encode_prompt_embeds(embedder(TEXT), "safetensors", binary=True),
        "max_tokens": "4",
        "temperature": "0",
        "ignore_eos": 1,
    }
    response = server.post(
        "/v1/completions",
        content=msgspec.msgpack.encode(body),
        headers={"Content-Type": "application/msgpack", "Accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 4


def test_tokenize_flag_as_string(server: ServerProcess) -> None:
    lax = post(server, "/tokenize", {"prompt": TEXT, "add_special_tokens": "false"})
    typed = post(server, "/tokenize", {"prompt": TEXT, "add_special_tokens": False})
    assert lax.status_code == 200 and lax.json()["tokens"] == typed.json()["tokens"]


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"n": "two"}, "n", "Expected `int`, got `str` - at `$.n`"),
        ({"n": 1.5}, "n", "Expected `int`, got `float` - at `$.n`"),
        ({"stream": 2}, "stream", "Expected `bool`, got `int` - at `$.stream`"),
        ({"echo": "maybe"}, "echo", "Expected `bool`, got `str` - at `$.echo`"),
        ({"stop_token_ids": ["1"]}, "stop_token_ids", None),
        ({"user": 5}, "user", None),
        ({"prompt": [1, "2"]}, "prompt", None),
    ],
)
def test_values_vllm_refuses_stay_400(
    server: ServerProcess, body: dict[str, Any], param: str, message: str | None
) -> None:
    response = post(server, "/v1/completions", {"prompt": TEXT, "max_tokens": "1", **body})
    error = assert_error(response, 400, "invalid_parameter")
    assert error["param"] == param
    if message is not None:
        assert error["message"] == message


def test_range_errors_after_coercion_match_typed_ones(server: ServerProcess) -> None:
    for lax, typed in [({"n": "0"}, {"n": 0}), ({"temperature": "-1"}, {"temperature": -1})]:
        by_lax = post(server, "/v1/completions", {"prompt": TEXT, **lax})
        by_typed = post(server, "/v1/completions", {"prompt": TEXT, **typed})
        assert by_lax.status_code == 400
        assert by_lax.json() == by_typed.json()
