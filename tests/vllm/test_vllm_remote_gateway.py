"""--backend vllm-remote against a fake upstream (no vLLM needed): what is forwarded, what
comes back, streaming, upstream errors keeping their status, and abort on disconnect."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from fake_upstream import ERRORS, SLOW_MAX_TOKENS, FakeUpstream
from fake_upstream import MODEL as UPSTREAM_MODEL
from server_harness import MODEL, ServerProcess, wait_until

from pe_common.codec import encode_prompt_embeds

HIDDEN = 64  # tiny_llama_dir
UPSTREAM_KEY = "upstream-secret"


@pytest.fixture(scope="module")
def gateway(
    tiny_llama_dir: Path, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("gateway") / "server.log"
    flags = [
        "--upstream",
        upstream.url,
        "--upstream-api-key",
        UPSTREAM_KEY,
        "--enable-prompt-embeds",
    ]
    proc = ServerProcess(tiny_llama_dir, log, flags, backend="vllm-remote").wait_ready()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def model_files(tiny_llama_dir: Path) -> tuple[Any, np.ndarray]:
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    weights = load_file(str(tiny_llama_dir / "model.safetensors"))["model.embed_tokens.weight"]
    return tokenizer, weights


def forwarded_embeds(body: dict[str, Any]) -> np.ndarray:
    """The tensor a real vLLM would decode from the forwarded body."""
    import torch

    raw = base64.b64decode(body["prompt_embeds"], validate=True)
    return torch.load(io.BytesIO(raw), weights_only=True).numpy()


def complete(gateway: ServerProcess, **fields: Any) -> httpx.Response:
    return gateway.post("/v1/completions", json={"model": MODEL, "temperature": 0.0, **fields})


def test_text_prompt_is_forwarded_as_token_ids(
    gateway: ServerProcess, upstream: FakeUpstream, model_files: Any
) -> None:
    tokenizer, _ = model_files
    r = complete(gateway, prompt="Hello there", max_tokens=4, return_token_ids=True)
    assert r.status_code == 200, r.text
    body = upstream.bodies[-1]
    assert body["prompt"] == tokenizer.encode("Hello there")
    assert "prompt_embeds" not in body
    assert body["model"] == UPSTREAM_MODEL and body["stream"] is True
    assert body["max_tokens"] == 4 and body["temperature"] == 0.0 and body["n"] == 1
    assert set(upstream.auth) == {f"Bearer {UPSTREAM_KEY}"}  # /v1/models at start, then this
    choice = r.json()["choices"][0]
    assert choice["text"] == "<11><12><13><14>" and choice["token_ids"] == [11, 12, 13, 14]
    assert choice["finish_reason"] == "length"
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] == len(body["prompt"]) and usage["completion_tokens"] == 4


def test_embeds_prompt_is_forwarded_in_vllm_torch_format(
    gateway: ServerProcess, upstream: FakeUpstream
) -> None:
    rows = np.random.default_rng(0).standard_normal((5, HIDDEN)).astype(np.float32)
    r = complete(gateway, prompt_embeds=encode_prompt_embeds(rows, "safetensors"), max_tokens=3)
    assert r.status_code == 200, r.text
    body = upstream.bodies[-1]
    assert "prompt" not in body
    np.testing.assert_array_equal(forwarded_embeds(body), rows)
    assert r.json()["usage"]["prompt_tokens"] == 5


def test_mixed_chat_is_forwarded_as_full_length_embeds(
    gateway: ServerProcess, upstream: FakeUpstream, model_files: Any
) -> None:
    import torch

    from pe_engine.inputs.chat import ChatPromptBuilder

    tokenizer, weights = model_files
    rows = np.random.default_rng(1).standard_normal((3, HIDDEN)).astype(np.float32)
    content = [
        {"type": "text", "text": "Read this"},
        {"type": "prompt_embeds", "data": encode_prompt_embeds(rows, "safetensors")},
        {"type": "text", "text": "then answer"},
    ]
    messages = [{"role": "user", "content": content}]
    r = gateway.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": messages, "max_tokens": 2, "temperature": 0.0},
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "<11><12>"
    local = [{"role": "user", "content": [*content[:1], {**content[1], "data": torch.from_numpy(rows)},
                                          *content[2:]]}]  # fmt: skip
    prompt = ChatPromptBuilder(tokenizer).build(local)
    expected = weights[np.asarray(prompt.token_ids)]
    expected[~np.asarray(prompt.is_token_ids)] = rows
    sent = forwarded_embeds(upstream.bodies[-1])
    assert sent.shape == (prompt.num_tokens, HIDDEN)
    np.testing.assert_array_equal(sent, expected)
    assert r.json()["usage"]["prompt_tokens"] == prompt.num_tokens


def test_stream_is_passed_back(gateway: ServerProcess) -> None:
    payload = {"model": MODEL, "prompt": "Hi", "max_tokens": 5, "stream": True}
    with httpx.stream(
        "POST", f"{gateway.base_url}/completions", json=payload, headers=gateway.headers
    ) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == "<11><12><13><14><15>"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_logprobs_map_back_to_tokens(gateway: ServerProcess, model_files: Any) -> None:
    tokenizer, _ = model_files
    r = complete(gateway, prompt="Hi", max_tokens=2, logprobs=1)
    assert r.status_code == 200, r.text
    lp = r.json()["choices"][0]["logprobs"]
    assert lp["token_logprobs"] == [-0.5, -0.5]
    assert lp["tokens"] == [tokenizer.decode([11]), tokenizer.decode([12])]
    # pe's convention on every backend: the sampled token plus the top ``logprobs`` entries.
    assert lp["top_logprobs"][0] == {tokenizer.decode([11]): -0.5, tokenizer.decode([3]): -1.5}


@pytest.mark.parametrize("max_tokens", sorted(ERRORS))
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_errors_keep_their_status(
    gateway: ServerProcess, max_tokens: int, stream: bool
) -> None:
    status, message, param = ERRORS[max_tokens]
    r = complete(gateway, prompt="Hi", max_tokens=max_tokens, stream=stream)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["message"] == message and error["param"] == param


def test_penalties_with_embeds_are_refused_before_the_upstream(
    gateway: ServerProcess, upstream: FakeUpstream
) -> None:
    num_bodies = len(upstream.bodies)
    rows = np.ones((2, HIDDEN), np.float32)
    r = complete(
        gateway,
        prompt_embeds=encode_prompt_embeds(rows, "safetensors"),
        max_tokens=2,
        repetition_penalty=1.2,
    )
    assert r.status_code == 400 and "57719" in r.json()["error"]["message"]
    assert len(upstream.bodies) == num_bodies


def test_client_disconnect_closes_the_upstream_request(
    gateway: ServerProcess, upstream: FakeUpstream
) -> None:
    payload = {"model": MODEL, "prompt": "Hi", "max_tokens": SLOW_MAX_TOKENS, "stream": True}
    before = upstream.disconnects
    with httpx.stream(
        "POST", f"{gateway.base_url}/completions", json=payload, headers=gateway.headers
    ) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
    assert wait_until(lambda: upstream.disconnects > before, timeout=10)
    assert wait_until(lambda: gateway.metrics().get("pe_num_requests_running") == 0)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pe_server", *args], capture_output=True, text=True, timeout=60
    )


def test_vllm_backend_without_vllm_says_how_to_install(tiny_llama_dir: Path) -> None:
    from pe_server.backends import is_vllm_installed

    if is_vllm_installed():
        pytest.skip("vLLM is installed here")
    result = run_cli("serve", str(tiny_llama_dir), "--backend", "vllm")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pip install 'pe-server[vllm]'" in result.stderr
    assert "--backend vllm-remote --upstream URL" in result.stderr


def test_vllm_remote_needs_an_upstream_url() -> None:
    result = run_cli("serve", "demo", "--backend", "vllm-remote")
    assert result.returncode == 2 and "--upstream URL" in result.stderr
    result = run_cli("serve", "demo", "--backend", "vllm-remote", "--upstream", "ftp://x")
    assert result.returncode == 2 and "http" in result.stderr


def test_unreachable_upstream_is_a_clear_start_error(tiny_llama_dir: Path) -> None:
    from server_harness import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = run_cli("serve", str(tiny_llama_dir), "--backend", "vllm-remote", "--upstream", url)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert f"cannot reach the upstream vLLM at {url}" in result.stderr


def test_unknown_flags_are_only_passed_through_to_vllm() -> None:
    result = run_cli("serve", "demo", "--distributed-executor-backend", "ray")
    assert result.returncode == 2
    assert "unrecognized arguments: --distributed-executor-backend ray" in result.stderr


def test_stored_embeds_are_resolved_in_pe_and_forwarded_as_tensors(
    gateway: ServerProcess, upstream: FakeUpstream
) -> None:
    """Issue 21: vLLM has no store; pe resolves an id to its tensor before building what vLLM
    gets, so the upstream sees the same body as for the inline tensor."""
    rows = np.random.default_rng(3).standard_normal((3, HIDDEN)).astype(np.float32)
    data = encode_prompt_embeds(rows, "safetensors")
    stored = gateway.post("/v1/embeds", json={"data": str(data)})
    assert stored.status_code == 201, stored.text
    r = complete(gateway, prompt_embeds=[{"id": stored.json()["id"]}], max_tokens=2)
    assert r.status_code == 200, r.text
    by_id = forwarded_embeds(upstream.bodies[-1])
    assert complete(gateway, prompt_embeds=str(data), max_tokens=2).status_code == 200
    np.testing.assert_array_equal(by_id, forwarded_embeds(upstream.bodies[-1]))
    np.testing.assert_array_equal(by_id, rows)
    missing = complete(gateway, prompt_embeds=[str(data), {"id": "emb_gone"}], max_tokens=2)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "prompt_embeds[1].id"
