"""Prefix-cache isolation on a real server with two API keys: a tenant only ever hits blocks
it cached itself (``usage.prompt_tokens_details.cached_tokens`` and timing tell nothing about
other tenants' prompts), whatever ``cache_salt`` either sends; ``cache_salt`` partitions one
tenant's cache further; without API keys, ``cache_salt`` alone applies."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from server_harness import API_KEY, MODEL, ServerProcess, assert_error

from conftest import Embedder
from pe_common.codec import encode_prompt_embeds

OTHER_KEY = "tenant-b-key-9876543210"
FLAGS = ["--enable-prompt-embeds", "--max-model-len", "256", "--block-size", "16"]
PROMPT_LEN = 40  # two full 16-token blocks can be cached, the last token is always computed
_prompt_ids = itertools.count()


@pytest.fixture(scope="module")
def tenants(
    tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("tenants") / "server.log"
    proc = ServerProcess(tiny_llama_dir, log, ["--api-key", OTHER_KEY, *FLAGS]).wait_ready()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def keyless(
    tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("keyless") / "server.log"
    proc = ServerProcess(tiny_llama_dir, log, FLAGS, api_key=None).wait_ready()
    yield proc
    proc.stop()


def fresh_prompt() -> list[int]:
    """Token ids no other test sends (so earlier tests' cached blocks cannot interfere)."""
    start = 200 + PROMPT_LEN * next(_prompt_ids)
    return list(range(start, start + PROMPT_LEN))


def complete(
    server: ServerProcess, key: str | None, prompt: list[int], salt: str | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"model": MODEL, "prompt": prompt, "max_tokens": 2}
    if salt is not None:
        body["cache_salt"] = salt
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.root}/v1/completions", json=body, headers=headers, timeout=60)


def cached(
    server: ServerProcess, key: str | None, prompt: list[int], salt: str | None = None
) -> int:
    r = complete(server, key, prompt, salt)
    assert r.status_code == 200, r.text
    return int(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])


def test_a_tenant_never_hits_another_tenants_prompt(tenants: ServerProcess) -> None:
    prompt = fresh_prompt()
    assert cached(tenants, API_KEY, prompt) == 0
    assert cached(tenants, OTHER_KEY, prompt) == 0  # A's blocks are invisible to B
    assert cached(tenants, API_KEY, prompt) == 32  # A hits its own
    assert cached(tenants, OTHER_KEY, prompt) == 32  # and B its own, cached a moment ago


def test_the_same_cache_salt_under_two_keys_still_does_not_cross(tenants: ServerProcess) -> None:
    prompt = fresh_prompt()
    assert cached(tenants, API_KEY, prompt, "shared-salt") == 0
    assert cached(tenants, OTHER_KEY, prompt, "shared-salt") == 0
    assert cached(tenants, API_KEY, prompt, "shared-salt") == 32


def test_cache_salt_partitions_one_tenants_cache(tenants: ServerProcess) -> None:
    prompt = fresh_prompt()
    assert cached(tenants, API_KEY, prompt, "x") == 0
    assert cached(tenants, API_KEY, prompt, "y") == 0
    assert cached(tenants, API_KEY, prompt) == 0  # no salt is a partition of its own
    assert cached(tenants, API_KEY, prompt, "x") == 32
    assert cached(tenants, API_KEY, prompt, "y") == 32
    assert cached(tenants, API_KEY, prompt) == 32


def test_chat_with_embeds_is_isolated_per_tenant(
    tenants: ServerProcess, embedder: Embedder
) -> None:
    """Through the openai SDK: chat with a prompt_embeds part, cached_tokens per tenant."""
    rows = embedder.rows(fresh_prompt())
    part = {"type": "prompt_embeds", "data": str(encode_prompt_embeds(rows, "safetensors"))}
    messages: Any = [{"role": "user", "content": [part]}]

    def chat_cached(key: str, **extra: Any) -> int:
        with openai.OpenAI(base_url=tenants.base_url, api_key=key, max_retries=0) as client:
            out = client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=2, extra_body=extra or None
            )
        assert out.usage is not None and out.usage.prompt_tokens_details is not None
        return int(out.usage.prompt_tokens_details.cached_tokens or 0)

    assert chat_cached(API_KEY) == 0
    assert chat_cached(OTHER_KEY) == 0
    assert chat_cached(OTHER_KEY, cache_salt="s") == 0
    assert chat_cached(API_KEY) >= 32
    assert chat_cached(OTHER_KEY, cache_salt="s") >= 32


def test_streamed_usage_reports_only_the_tenants_own_hits(tenants: ServerProcess) -> None:
    prompt = fresh_prompt()
    assert cached(tenants, API_KEY, prompt) == 0
    with openai.OpenAI(base_url=tenants.base_url, api_key=OTHER_KEY, max_retries=0) as client:
        chunks = list(
            client.completions.create(
                model=MODEL,
                prompt=prompt,
                max_tokens=2,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize(
    ("salt", "message"),
    [("s" * 257, "at most 256 characters"), ("", "must be a non-empty string")],
)
def test_a_bad_cache_salt_is_a_400_naming_it(
    tenants: ServerProcess, route: str, salt: str, message: str
) -> None:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 1, "cache_salt": salt}
    if route == "/v1/completions":
        body["prompt"] = "hello"
    else:
        body["messages"] = [{"role": "user", "content": "hello"}]
    error = assert_error(tenants.post(route, json=body), 400, "invalid_parameter")
    assert error["param"] == "cache_salt" and message in error["message"]


def test_a_256_character_cache_salt_is_accepted(tenants: ServerProcess) -> None:
    assert complete(tenants, API_KEY, fresh_prompt(), "s" * 256).status_code == 200


def test_without_api_keys_only_the_request_salt_applies(keyless: ServerProcess) -> None:
    prompt = fresh_prompt()
    assert cached(keyless, None, prompt) == 0
    assert cached(keyless, None, prompt) == 32  # one tenant: no salt shares with no salt
    assert cached(keyless, None, prompt, "x") == 0
    assert cached(keyless, None, prompt, "x") == 32
