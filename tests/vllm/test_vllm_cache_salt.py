"""The effective cache salt reaches vLLM: --backend vllm-remote forwards it as ``cache_salt``
(a gateway with two keys against a fake upstream, no vLLM needed) and --backend vllm puts it in
the engine prompt."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from fake_upstream import FakeUpstream
from server_harness import API_KEY, MODEL, ServerProcess

from pe_engine.prompt import Prompt
from pe_engine.sampling_params import SamplingParams
from pe_server.backends.vllm_backend import engine_prompt
from pe_server.backends.vllm_remote import VllmRemoteBackend
from pe_server.config import ServerConfig

OTHER_KEY = "tenant-b-key-9876543210"
HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


@pytest.fixture(scope="module")
def gateway(
    tiny_llama_dir: Path, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("salted-gateway") / "server.log"
    flags = ["--upstream", upstream.url, "--enable-prompt-embeds", "--api-key", OTHER_KEY]
    proc = ServerProcess(tiny_llama_dir, log, flags, backend="vllm-remote").wait_ready()
    yield proc
    proc.stop()


def forwarded_salt(
    gateway: ServerProcess, upstream: FakeUpstream, key: str, **extra: Any
) -> str | None:
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": MODEL, "prompt": "Hello there", "max_tokens": 2, **extra}
    r = gateway.post("/v1/completions", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return upstream.bodies[-1].get("cache_salt")


def test_each_key_reaches_vllm_with_its_own_salt(
    gateway: ServerProcess, upstream: FakeUpstream
) -> None:
    a = forwarded_salt(gateway, upstream, API_KEY)
    b = forwarded_salt(gateway, upstream, OTHER_KEY)
    a_salted = forwarded_salt(gateway, upstream, API_KEY, cache_salt="s")
    b_salted = forwarded_salt(gateway, upstream, OTHER_KEY, cache_salt="s")
    salts = [a, b, a_salted, b_salted]
    assert all(s is not None and HEX_DIGEST.fullmatch(s) for s in salts), salts
    assert len(set(salts)) == 4  # per key, and per request salt within a key
    assert forwarded_salt(gateway, upstream, API_KEY, cache_salt="s") == a_salted  # stable
    assert not any(API_KEY in str(body) or OTHER_KEY in str(body) for body in upstream.bodies)


def test_the_remote_body_carries_the_prompts_salt_as_is() -> None:
    """Without API keys the route leaves the request's own salt on the prompt (see
    tests/server/test_server_tenants.py); the upstream body carries exactly that."""
    config = ServerConfig(model="x", backend="vllm-remote", upstream="http://127.0.0.1:1")
    backend = VllmRemoteBackend(config)
    params = SamplingParams(max_tokens=2)
    body = json.loads(backend.request_body(Prompt([1, 2, 3], cache_salt="mine"), params))
    assert body["cache_salt"] == "mine" and body["prompt"] == [1, 2, 3]
    assert "cache_salt" not in json.loads(backend.request_body(Prompt([1, 2, 3]), params))


def test_the_in_process_vllm_prompt_carries_the_salt() -> None:
    rows = torch.zeros(3, 8)
    assert engine_prompt(Prompt([1, 2, 3], cache_salt="t")) == {
        "prompt_token_ids": [1, 2, 3],
        "cache_salt": "t",
    }
    pure = engine_prompt(Prompt([0, 0, 0], rows, [False] * 3, cache_salt="t"))
    assert pure["cache_salt"] == "t" and pure["prompt_embeds"] is rows
    mixed = engine_prompt(Prompt([5, 0, 6], rows[:1], [True, False, True], cache_salt="t"))
    assert mixed["cache_salt"] == "t" and mixed["prompt_is_token_ids"] == [True, False, True]
    assert "cache_salt" not in engine_prompt(Prompt([1, 2, 3]))
