"""Server-side rows of the hostile input catalogue (reference/security.md §11) on the real server:
status, error type and code; tiny payloads; the server keeps serving afterwards. The other rows
are in test_server_catalogue.py (its docstring maps every row to its test)."""

from __future__ import annotations

import base64
import io
import json
import socket
import time
from typing import Any

import httpx
import numpy as np
import pytest
from server_harness import BOMB_RSS_LIMIT, INTERNALS, RssProbe, ServerProcess, assert_error

from conftest import MAX_MODEL_LEN, MODEL, Embedder
from pe_common.codec import encode_prompt_embeds


def b64(x: Any) -> str:
    return str(encode_prompt_embeds(np.ascontiguousarray(x, dtype=np.float32), "safetensors"))


def post_raw(server: ServerProcess, body: bytes, **headers: str) -> httpx.Response:
    h = {"Content-Type": "application/json", **headers}
    return server.post("/v1/completions", content=body, headers=h)


@pytest.fixture(autouse=True)
def still_serving(server: ServerProcess) -> Any:
    yield
    ok = server.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1})
    assert ok.status_code == 200, ok.text


def raw_http(
    server: ServerProcess, head: bytes, body: bytes = b"", read_timeout: float = 5.0
) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=read_timeout) as sock:
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR) if not body else None
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not data:
                break
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


def test_row1_declared_length_over_limit_is_413_before_reading(server: ServerProcess) -> None:
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Authorization: Bearer {server.api_key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {2**30}\r\n\r\n"
    ).encode()
    start = time.monotonic()
    reply = raw_http(server, head, b"{")
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"request_too_large" in reply
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_row3_compressed_bodies_are_415(server: ServerProcess, encoding: str) -> None:
    r = post_raw(server, b"{}", **{"Content-Encoding": encoding})
    assert_error(r, 415, "unsupported_content_encoding")


@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_row4_other_content_types_are_415(server: ServerProcess, ctype: str) -> None:
    r = post_raw(server, b"{}", **{"Content-Type": ctype})
    assert_error(r, 415, "unsupported_media_type")


def test_row7_auth_failures_are_identical(server: ServerProcess) -> None:
    url = f"{server.root}/v1/completions"
    bodies = set()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer"},
                    {"Authorization": "Token x"}, {"Authorization": server.api_key or ""}):  # fmt: skip
        r = httpx.post(url, headers={**headers, "Content-Type": "application/json"}, content=b"{")
        assert_error(r, 401, "invalid_api_key")
        bodies.add(r.content)
    assert len(bodies) == 1
    for path in ("/metrics", "/v1/models", "/tokenize", "/openapi.json"):
        assert httpx.get(f"{server.root}{path}").status_code == 401


@pytest.mark.parametrize(
    "path", ["/v1//completions", "/V1/completions", "/v1/completions/", "/v1%2Fcompletions",
             "/v1/./completions", "/health/../v1/completions", "/v1/completions?x=/health"],
)  # fmt: skip
def test_row8_path_tricks_never_bypass_auth(server: ServerProcess, path: str) -> None:
    body = json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 1}).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    reply = raw_http(server, head, body)
    status = int(reply.split(b" ", 2)[1])
    assert status in (401, 404), reply[:300]


def test_row8_host_header_tricks(server: ServerProcess) -> None:
    for host in ("a/b?x", "evil.example", "127.0.0.1:1@evil"):
        r = httpx.post(
            f"{server.root}/v1/completions",
            headers={"Host": host, "Content-Type": "application/json"},
            content=b"{}",
        )
        assert r.status_code in (400, 401, 404)


@pytest.mark.parametrize("body", [b"{not json", b'{"model": "tiny", "prompt": "\xff\xfe"}', b""])
def test_row11_invalid_json_or_utf8(server: ServerProcess, body: bytes) -> None:
    assert_error(post_raw(server, body), 400, "invalid_json")


def test_row12_deep_nesting(server: ServerProcess) -> None:
    body = b'{"model": "tiny", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with RssProbe(server) as rss:
        assert_error(post_raw(server, body), 400, "invalid_json")
    assert rss.peak_delta <= BOMB_RSS_LIMIT, str(rss)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_row13_non_finite_numbers(server: ServerProcess, literal: bytes) -> None:
    body = b'{"model": "tiny", "prompt": "x", "temperature": ' + literal + b"}"
    r = post_raw(server, body)
    assert r.status_code == 400
    assert r.json()["error"]["code"] in ("invalid_number", "invalid_json")


def test_row14_huge_integer_literal(server: ServerProcess) -> None:
    body = b'{"model": "tiny", "prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}"
    r = post_raw(server, body)
    assert r.status_code == 400
    assert r.json()["error"]["code"] in ("invalid_number", "invalid_json")


@pytest.mark.parametrize(
    "field", [{"n": 1_000_000}, {"max_tokens": 10**9}, {"logprobs": 10**6}, {"top_p": 0},
              {"temperature": -1}, {"best_of": 50}, {"max_tokens": 0}],
)  # fmt: skip
def test_row15_out_of_range_parameters(server: ServerProcess, field: dict[str, int]) -> None:
    r = server.post("/v1/completions", json={"model": MODEL, "prompt": "x", **field})
    assert r.status_code == 400, r.text
    expected = ("invalid_parameter", "context_length_exceeded", "unsupported_parameter")
    assert r.json()["error"]["code"] in expected
    assert r.json()["error"]["param"] is not None


def test_row16_too_many_inputs(server: ServerProcess, embedder: Embedder) -> None:
    with RssProbe(server) as rss:
        r = server.post("/v1/completions", json={"model": MODEL, "prompt": ["x"] * 100_000})
        assert_error(r, 400, "too_many_inputs")
        parts = [{"type": "text", "text": "a"}] * 1000
        r = server.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": parts}]},
        )
        assert_error(r, 400, "too_many_inputs")
        tiny_parts = [{"type": "prompt_embeds", "data": "AAAA"}] * 100_000  # 3.3 MB of parts
        r = server.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": tiny_parts}]},
        )
        assert_error(r, 400, "too_many_inputs")
    assert rss.peak_delta <= BOMB_RSS_LIMIT, str(rss)


def test_row17_min_tokens_above_max_tokens(server: ServerProcess) -> None:
    r = server.post(
        "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2, "min_tokens": 5}
    )
    error = assert_error(r, 400, "invalid_parameter")
    assert error["param"] == "min_tokens"


def test_row24_empty_prompts(server: ServerProcess, embedder: Embedder) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(torch.zeros(0, embedder.hidden_size), buffer)  # what vLLM's tensor2base64 sends
    empty = base64.b64encode(buffer.getvalue()).decode()
    r = server.post("/v1/completions", json={"model": MODEL, "prompt_embeds": empty})
    assert_error(r, 400, "empty_prompt")
    r = server.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": []}]},
    )
    assert r.status_code == 400


def test_row25_hidden_size_mismatch(server: ServerProcess, embedder: Embedder) -> None:
    wrong = np.zeros((3, embedder.hidden_size + 1), dtype=np.float32)
    r = server.post("/v1/completions", json={"model": MODEL, "prompt_embeds": b64(wrong)})
    error = assert_error(r, 400, "hidden_size_mismatch")
    assert error["param"] == "prompt_embeds"


def test_row26_context_length_from_declared_shape(
    server: ServerProcess, embedder: Embedder
) -> None:
    rows = np.zeros((MAX_MODEL_LEN + 10, embedder.hidden_size), dtype=np.float32)
    raw = encode_prompt_embeds(rows, "raw")
    r = server.post("/v1/completions", json={"model": MODEL, "prompt_embeds": raw})
    error = assert_error(r, 400, "context_length_exceeded")
    assert error["param"] == "input_tokens"
    assert error["message"] == (
        f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, your prompt "
        f"contains {MAX_MODEL_LEN + 10} input tokens, which exceeds this limit even without any "
        "output tokens. Please reduce the length of the input prompt."
    )
    fits = np.zeros((MAX_MODEL_LEN - 10, embedder.hidden_size), dtype=np.float32)
    r = server.post(
        "/v1/completions",
        json={"model": MODEL, "prompt_embeds": b64(fits), "max_tokens": 20},
    )
    assert assert_error(r, 400, "context_length_exceeded")["param"] == "max_tokens"


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_row27_non_finite_values(server: ServerProcess, embedder: Embedder, value: float) -> None:
    rows = embedder("hello world").copy()
    rows[1, 3] = value
    r = server.post("/v1/completions", json={"model": MODEL, "prompt_embeds": b64(rows)})
    assert_error(r, 400, "non_finite_values")


def test_row43_decode_budget(server: ServerProcess, embedder: Embedder) -> None:
    # The main server allows 256 KiB of embeds per request; seven 150-row parts are ~263 KiB.
    part = b64(np.ones((150, embedder.hidden_size), dtype=np.float32))
    assert len(part) < 64 * 1024
    r = server.post("/v1/completions", json={"model": MODEL, "prompt_embeds": [part] * 7})
    assert_error(r, 400, "decode_budget_exceeded")


@pytest.mark.parametrize(
    "payload",
    ["not base64!!", "aGVsbG8gd29ybGQ=", "UEsDBAoAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="],
)
def test_row48_decoder_failures_are_fixed_400s(server: ServerProcess, payload: str) -> None:
    r = server.post("/v1/completions", json={"model": MODEL, "prompt_embeds": payload})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "prompt_embeds" and error["type"] == "invalid_request_error"
    assert not INTERNALS.search(r.text)
    assert len(error["message"]) <= 300


def test_error_bodies_never_echo_payload_bytes(server: ServerProcess) -> None:
    marker = "SECRET-MARKER-1234567890"
    r = server.post("/v1/completions", json={"model": MODEL, "prompt_embeds": marker * 10})
    assert r.status_code == 400 and marker not in r.text
