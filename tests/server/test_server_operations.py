"""Operational routes and disconnects on the main server: models, version, OpenAPI, tokenize,
metrics, and KV blocks freed within a second when a client leaves."""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx
import openai
from server_harness import ServerProcess, wait_until

from conftest import MAX_MODEL_LEN, MODEL, Embedder
from pe_common.codec import encode_prompt_embeds

TEXT = "The quick brown fox jumps over the lazy dog"


def test_models(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].model_dump()["max_model_len"] == MAX_MODEL_LEN
    assert client.models.retrieve(MODEL).id == MODEL
    try:
        client.models.retrieve("other")
        raise AssertionError("expected 404")
    except openai.NotFoundError:
        pass


def test_version_and_health_are_public(server: ServerProcess) -> None:
    assert httpx.get(f"{server.root}/health").status_code == 200
    version = httpx.get(f"{server.root}/version").json()["version"]
    assert version and version[0].isdigit()


def test_openapi_document(server: ServerProcess) -> None:
    doc = server.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert "/v1/completions" in doc["paths"] and "/v1/chat/completions" in doc["paths"]


def test_tokenize_and_detokenize(server: ServerProcess, embedder: Embedder) -> None:
    r = server.post("/tokenize", json={"model": MODEL, "prompt": TEXT, "add_special_tokens": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tokens"] == embedder.ids(TEXT)
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == MAX_MODEL_LEN
    back = server.post("/detokenize", json={"model": MODEL, "tokens": body["tokens"]})
    assert back.json()["prompt"] == TEXT
    chat = server.post(
        "/tokenize", json={"model": MODEL, "messages": [{"role": "user", "content": TEXT}]}
    )
    assert chat.status_code == 200 and chat.json()["count"] > len(body["tokens"])
    bad = server.post("/detokenize", json={"model": MODEL, "tokens": [10**9]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"


def test_metrics_count_requests_tokens_and_embeds(
    server: ServerProcess, client: openai.OpenAI, embedder: Embedder
) -> None:
    before = server.metrics()
    client.completions.create(
        model=MODEL,
        prompt=None,
        max_tokens=4,
        extra_body={
            "prompt_embeds": encode_prompt_embeds(embedder(TEXT), "safetensors"),
            "ignore_eos": True,
        },
    )
    after = server.metrics()

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert delta("pe_generation_tokens_total") == 4
    assert delta("pe_prompt_tokens_total") == len(embedder.ids(TEXT))
    assert delta("pe_embeds_decoded_bytes_total") == embedder(TEXT).nbytes
    assert delta("pe_embeds_decode_seconds_count") == 1
    assert delta('pe_http_requests_total{endpoint="/v1/completions",status="200"}') == 1
    assert delta("pe_time_to_first_token_seconds_count") == 1
    assert delta("pe_e2e_request_latency_seconds_count") == 1
    assert after["pe_kv_total_blocks"] > 0
    for name in ("pe_num_requests_running", "pe_num_requests_waiting", "pe_kv_free_blocks",
                 "pe_prefix_cache_hits_total", "pe_prefix_cache_queries_total",
                 "pe_time_per_output_token_seconds_count"):  # fmt: skip
        assert name in after, name


def long_request(embedder: Embedder, stream: bool) -> dict[str, Any]:
    return {
        "model": MODEL,
        "prompt_embeds": encode_prompt_embeds(embedder(TEXT), "safetensors"),
        "max_tokens": MAX_MODEL_LEN - 20,
        "ignore_eos": True,
        "stream": stream,
    }


def test_stream_disconnect_frees_blocks_within_a_second(
    server: ServerProcess, embedder: Embedder
) -> None:
    assert wait_until(server.is_idle)
    before = server.metrics().get('pe_request_aborts_total{reason="client_disconnected"}', 0)
    with httpx.stream(
        "POST",
        f"{server.root}/v1/completions",
        json=long_request(embedder, stream=True),
        headers=server.headers,
        timeout=30,
    ) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert not server.is_idle()
    left = time.monotonic()
    assert wait_until(server.is_idle, timeout=1.0), server.metrics()
    assert time.monotonic() - left <= 1.0
    after = server.metrics()['pe_request_aborts_total{reason="client_disconnected"}']
    assert after == before + 1


def test_non_stream_disconnect_frees_blocks_within_a_second(
    server: ServerProcess, embedder: Embedder
) -> None:
    assert wait_until(server.is_idle)
    try:
        server.post("/v1/completions", json=long_request(embedder, stream=False), timeout=0.5)
        raise AssertionError("the request should still be running")
    except httpx.TimeoutException:
        pass
    assert wait_until(server.is_idle, timeout=1.0), server.metrics()


def test_disconnect_during_upload_creates_no_request(server: ServerProcess) -> None:
    assert wait_until(server.is_idle)
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Authorization: Bearer {server.api_key}\r\nContent-Type: application/json\r\n"
        "Content-Length: 100000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + b'{"model": "tiny", "prompt": "')
        time.sleep(0.2)
    assert wait_until(
        lambda: server.is_idle() and server.metrics()["pe_http_requests_admitted"] == 0, 1.0
    )
