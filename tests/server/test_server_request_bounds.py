"""Request bounds through the real server: sequences per request (n, best_of and prompts
together) and characters of text refused before any tokenizer runs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from server_harness import API_KEY, ServerProcess, assert_error

from conftest import MAX_MODEL_LEN, MODEL, start_server
from pe_common.protocol.limits import MAX_CHARS_PER_TOKEN
from pe_server.app import request_limits
from pe_server.config import ServerConfig

MAX_SEQS = 6
MAX_TOTAL_CHARS = 20_000
# Derived by the server from --max-model-len: no --max-prompt-chars is given.
MAX_PROMPT_CHARS = MAX_CHARS_PER_TOKEN * MAX_MODEL_LEN
HUGE_CHARS = 100 * 10**6
# Tokenizing 100 MB would add minutes (SmolLM2's tokenizer: ~6 s per 4 Mi characters here).
HUGE_SLACK_SECONDS = 2.0
QUICK: dict[str, Any] = {"max_tokens": 2, "temperature": 0.0}


@pytest.fixture(scope="module")
def bounds_server(
    tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """Default body limit (a 100 MB body is read and decoded), a low sequence bound."""
    flags = [
        "--max-model-len", str(MAX_MODEL_LEN),
        "--max-seqs-per-request", str(MAX_SEQS),
        "--max-total-prompt-chars", str(MAX_TOTAL_CHARS),
    ]  # fmt: skip
    proc = start_server(tiny_llama_dir, tmp_path_factory.mktemp("logs"), "bounds", flags)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def bounds_client(bounds_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=bounds_server.base_url, api_key=API_KEY, max_retries=0) as c:
        yield c


def refused(call: Any, **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as info:
        call(model=MODEL, **{**QUICK, **kwargs})
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error"
    return body


# ---- sequences per request -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"prompt": ["a", "b"], "best_of": 4}, "best_of"),
        ({"prompt": ["a", "b", "c"], "n": 2, "best_of": 3}, "best_of"),
        ({"prompt": ["a", "b"], "n": 4}, "n"),
        ({"prompt": ["a"] * 7}, "n"),
    ],
)
def test_sequences_bound_names_the_field(
    bounds_client: openai.OpenAI, kwargs: dict[str, Any], param: str
) -> None:
    error = refused(bounds_client.completions.create, **kwargs)
    assert (error["param"], error["code"]) == (param, "too_many_inputs")
    assert f"the maximum is {MAX_SEQS}" in error["message"]


def test_sequences_at_the_bound_run(bounds_client: openai.OpenAI) -> None:
    reply = bounds_client.completions.create(
        model=MODEL, prompt=["a", "b"], n=2, best_of=3, **QUICK
    )
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]


def test_chat_sequences_bound(bounds_client: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "hi"}]
    error = refused(bounds_client.chat.completions.create, messages=messages, n=MAX_SEQS + 1)
    assert (error["param"], error["code"]) == ("n", "too_many_inputs")


def test_default_bound_stops_best_of_times_prompts(server: ServerProcess) -> None:
    """The shared server runs the defaults: 1024 prompts x best_of 8 is over 4096."""
    r = server.post("/v1/completions", json={"model": MODEL, "prompt": ["a"] * 1024, "best_of": 8})
    error = assert_error(r, 400, "too_many_inputs")
    assert error["param"] == "best_of"


# ---- characters before tokenizing ----------------------------------------------------------


def test_100mb_prompt_is_refused_before_tokenizing(bounds_server: ServerProcess) -> None:
    """Tokenizing 100 MB would take minutes here; the refusal costs what moving and decoding
    the body costs, measured on the same body refused for another field (`n`)."""
    head = b'{"model": "%s", "max_tokens": 1, "prompt": "' % MODEL.encode() + b"a" * HUGE_CHARS
    baseline, r = timed_post(bounds_server, head + b'", "n": 0}')
    assert assert_error(r, 400, "invalid_parameter")["param"] == "n"
    seconds, r = timed_post(bounds_server, head + b'"}')
    error = assert_error(r, 400, "prompt_too_long")
    assert error["param"] == "prompt"
    assert f"{HUGE_CHARS} characters" in error["message"]
    assert seconds < 2 * baseline + HUGE_SLACK_SECONDS, f"{seconds:.2f} s vs {baseline:.2f} s"
    # The server is free for the next caller at once.
    reply = bounds_server.post("/v1/completions", json={"model": MODEL, "prompt": "hi", **QUICK})
    assert reply.status_code == 200, reply.text


def timed_post(server: ServerProcess, body: bytes) -> tuple[float, httpx.Response]:
    headers = {"Content-Type": "application/json"}
    start = time.perf_counter()
    r = server.post("/v1/completions", content=body, headers=headers)
    return time.perf_counter() - start, r


def test_prompt_char_cap_follows_the_context_length(bounds_client: openai.OpenAI) -> None:
    # One character over the cap: refused untokenized.
    error = refused(bounds_client.completions.create, prompt="a " * (MAX_PROMPT_CHARS // 2) + "a")
    assert (error["param"], error["code"]) == ("prompt", "prompt_too_long")
    assert f"the maximum is {MAX_PROMPT_CHARS}" in error["message"]
    # At the cap: tokenized, then refused for the context (the cap is the only difference).
    error = refused(bounds_client.completions.create, prompt="a " * (MAX_PROMPT_CHARS // 2))
    assert error["code"] == "context_length_exceeded"


def test_total_prompt_chars(bounds_client: openai.OpenAI) -> None:
    prompts = ["a" * 8000] * 3  # each under the per-prompt cap, 24,000 in all
    error = refused(bounds_client.completions.create, prompt=prompts)
    assert (error["param"], error["code"]) == ("prompt", "prompt_too_long")
    assert f"the maximum is {MAX_TOTAL_CHARS}" in error["message"]


def test_chat_text_counts_across_messages(bounds_client: openai.OpenAI) -> None:
    half = "a" * (MAX_PROMPT_CHARS // 2 + 1)
    messages: Any = [
        {"role": "user", "content": half},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": half}]},
    ]
    error = refused(bounds_client.chat.completions.create, messages=messages)
    assert (error["param"], error["code"]) == ("messages", "prompt_too_long")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "a" * (MAX_PROMPT_CHARS + 1)}, "prompt"),
        ({"messages": [{"role": "user", "content": "a" * (MAX_PROMPT_CHARS + 1)}]}, "messages"),
    ],
)
def test_tokenize_route_char_cap(
    bounds_server: ServerProcess, body: dict[str, Any], param: str
) -> None:
    r = bounds_server.post("/tokenize", json={"model": MODEL, **body})
    assert assert_error(r, 400, "prompt_too_long")["param"] == param


def test_limits_follow_config_and_context() -> None:
    config = ServerConfig(model="m", max_seqs_per_request=9, max_total_prompt_chars=77)
    derived = request_limits(config, max_model_len=1000)
    assert derived.max_prompt_chars == MAX_CHARS_PER_TOKEN * 1000
    assert (derived.max_seqs_per_request, derived.max_total_prompt_chars) == (9, 77)
    pinned = request_limits(config.model_copy(update={"max_prompt_chars": 123}), 1000)
    assert pinned.max_prompt_chars == 123
