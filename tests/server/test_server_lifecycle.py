"""Servers started with other flags: admission (503), the embeds flag off, a keyless loopback
server, bf16 overflow, engine failure via fault injection, and SIGTERM draining."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from server_harness import MODEL, ServerProcess, assert_error, wait_until

from conftest import Embedder, module_server, serve
from pe_common.codec import encode_prompt_embeds

TEXT = "The quick brown fox jumps over the lazy dog"
FLAG_MESSAGE = "You must set `--enable-prompt-embeds` to input `prompt_embeds`"


# bf16, embeds on, no API key, two admission slots.
limited = module_server(
    "limited",
    ["--enable-prompt-embeds", "--max-concurrent-requests", "2", "--max-model-len", "1024",
     "--dtype", "bfloat16", "--stream-write-timeout", "2"],
    api_key=None,
)  # fmt: skip


def hold_upload(port: int) -> socket.socket:
    """A request whose body never finishes arriving: it holds an admission slot."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{".encode()
    )
    return sock


def test_admission_full_is_503_with_retry_after_before_the_body(limited: ServerProcess) -> None:
    holders = [hold_upload(limited.port) for _ in range(2)]
    try:
        assert wait_until(lambda: limited.metrics()["pe_http_requests_admitted"] == 2, 2.0)
        start = time.monotonic()
        r = limited.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1})
        assert time.monotonic() - start < 0.5
        assert r.status_code == 503
        assert r.headers["Retry-After"].isdigit()
        assert r.json()["error"]["type"] == "server_overloaded"
        assert r.json()["error"]["code"] == "server_overloaded"
        assert limited.get("/health").status_code == 200  # health is not admission-controlled
    finally:
        for sock in holders:
            sock.close()
    assert wait_until(lambda: limited.metrics()["pe_http_requests_admitted"] == 0, 2.0)
    ok = limited.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1})
    assert ok.status_code == 200


def test_admission_with_slow_streams(limited: ServerProcess) -> None:
    body = {"model": MODEL, "prompt": TEXT, "max_tokens": 900, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=30) as http:
        streams = [http.stream("POST", f"{limited.root}/v1/completions", json=body) for _ in "ab"]
        responses = [s.__enter__() for s in streams]
        lines = [response.iter_lines() for response in responses]  # keep them open
        try:
            for line_iter in lines:
                assert next(line_iter).startswith("data: ")
            r = http.post(f"{limited.root}/v1/completions", json={**body, "stream": False})
            assert r.status_code == 503 and "Retry-After" in r.headers
        finally:
            for s in streams:
                s.__exit__(None, None, None)
    assert wait_until(limited.is_idle, 2.0)


def test_bf16_overflow_after_the_cast_is_refused(
    limited: ServerProcess, embedder: Embedder
) -> None:
    rows = embedder(TEXT).copy()
    rows[0, 0] = 3.4e38  # finite in float32, inf in bfloat16
    payload = encode_prompt_embeds(rows, "safetensors")
    r = limited.post("/v1/completions", json={"model": MODEL, "prompt_embeds": payload})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "non_finite_values"


def test_keyless_loopback_server_checks_the_host_header(limited: ServerProcess) -> None:
    r = httpx.get(f"{limited.root}/v1/models", headers={"Host": "evil.example"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"
    assert httpx.get(f"{limited.root}/v1/models", headers={"Host": "localhost"}).status_code == 200


@pytest.mark.slow
def test_slow_reader_is_aborted(limited: ServerProcess) -> None:
    """A client that stops reading: writes time out, the request is aborted, KV freed."""
    body = json.dumps({
        "model": MODEL, "prompt": TEXT, "max_tokens": 1000, "n": 8, "logprobs": 20,
        "ignore_eos": True, "stream": True, "temperature": 1.0,
    }).encode()  # fmt: skip
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a tiny window
    sock.connect(("127.0.0.1", limited.port))
    sock.sendall(
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    try:
        assert wait_until(
            lambda: limited.metrics().get('pe_request_aborts_total{reason="slow_reader"}', 0) >= 1,
            timeout=60,
            step=0.5,
        )
        assert wait_until(limited.is_idle, 2.0)
    finally:
        sock.close()


# ---- embeds off, then drain --------------------------------------------------------------


# Embeds off, an API key, a short drain deadline.
plain = module_server("plain", ["--max-model-len", "512", "--drain-timeout", "20"])


@pytest.mark.parametrize("payload", ["not base64 at all!!", "aGVsbG8="])
def test_flag_off_completions_refuses_embeds_before_decoding(
    plain: ServerProcess, payload: str
) -> None:
    for body in ({"prompt_embeds": payload}, {"prompt_embeds": [payload], "prompt": "x"}):
        r = plain.post("/v1/completions", json={"model": MODEL, **body})
        assert r.status_code == 400
        error = r.json()["error"]
        assert error["message"] == FLAG_MESSAGE + "."
        assert error["param"] == "prompt_embeds"


def test_flag_off_chat_refuses_embeds_parts(plain: ServerProcess) -> None:
    part = {"type": "prompt_embeds", "data": "@@@"}
    r = plain.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": [part]}]},
    )
    assert r.status_code == 400
    assert r.json()["error"]["message"] == FLAG_MESSAGE  # vLLM's chat wording: no period


def test_sigterm_drains(plain: ServerProcess) -> None:
    """Readiness 503 at once, new requests 503, the in-flight stream finishes, exit 0."""
    body = {"model": MODEL, "prompt": TEXT, "max_tokens": 300, "ignore_eos": True, "stream": True}
    events: list[str] = []

    def consume() -> None:
        with httpx.stream(
            "POST", f"{plain.root}/v1/completions", json=body, headers=plain.headers, timeout=60
        ) as response:
            events.extend(response.iter_lines())

    reader = threading.Thread(target=consume)
    reader.start()
    assert wait_until(lambda: plain.metrics()["pe_num_requests_running"] == 1, 5.0)
    plain.proc.send_signal(signal.SIGTERM)
    assert wait_until(lambda: plain.get("/health").status_code == 503, 1.0)
    refused = plain.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "server_draining"
    reader.join(60)
    assert "data: [DONE]" in events
    finishes = [json.loads(e[6:])["choices"][0]["finish_reason"] for e in events
                if e.startswith("data: {")]  # fmt: skip
    assert finishes[-1] == "length"
    assert plain.proc.wait(30) == 0


# ---- engine failure ----------------------------------------------------------------------


FAULTY_DRAIN_S = 10


# forward: inside the model runner; deliver: on the engine loop after the step, where a raise
# once left every stream waiting forever.
@pytest.fixture(scope="module", params=["forward", "deliver"])
def faulty(
    tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ServerProcess]:
    """The engine fails at one stage after a few steps (test hooks PE_TEST_FAULT_AFTER_STEPS,
    PE_TEST_FAULT_STAGE)."""
    yield from serve(
        tiny_llama_dir,
        tmp_path_factory,
        f"faulty-{request.param}",
        ["--max-model-len", "512", "--drain-timeout", str(FAULTY_DRAIN_S)],
        env={"PE_TEST_FAULT_AFTER_STEPS": "40", "PE_TEST_FAULT_STAGE": request.param},
    )


def test_engine_failure(faulty: ServerProcess) -> None:
    """Catalogue row 47: in flight 500 / a terminal error event, then 503 everywhere, and the
    process still exits on SIGTERM."""
    body: dict[str, Any] = {"model": MODEL, "prompt": TEXT, "max_tokens": 400, "ignore_eos": True}
    results: dict[str, Any] = {}

    def non_stream() -> None:
        results["plain"] = faulty.post("/v1/completions", json=body)

    def stream() -> None:
        with httpx.stream(
            "POST",
            f"{faulty.root}/v1/completions",
            json={**body, "stream": True},
            headers=faulty.headers,
            timeout=60,
        ) as response:
            results["stream"] = list(response.iter_lines())

    threads = [threading.Thread(target=non_stream), threading.Thread(target=stream)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert_error(results["plain"], 500, "engine_error")
    data = [line for line in results["stream"] if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]"
    assert json.loads(data[-2][6:])["error"]["code"] == "engine_error"
    assert all("error" not in json.loads(line[6:]) for line in data[:-2])  # tokens came first
    assert len(data) > 3
    assert faulty.get("/health").status_code == 503
    start = time.monotonic()
    refused = faulty.post("/v1/completions", json=body)
    assert time.monotonic() - start < 0.5
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "engine_unavailable"
    assert np.isfinite(faulty.metrics()["pe_kv_total_blocks"])  # /metrics still answers
    faulty.proc.send_signal(signal.SIGTERM)
    assert faulty.proc.wait(FAULTY_DRAIN_S + 5) == 0
