"""``pe-server serve --quantization int8`` (vLLM's flag): a real server on int8 linears
answers completions and chat, greedy answers repeatable."""

from __future__ import annotations

from server_harness import API_KEY, MODEL, ServerProcess

from conftest import module_server

quantized = module_server("int8", ["--quantization", "int8"])
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_int8_server_generates(quantized: ServerProcess) -> None:
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 5, "temperature": 0.0}
    first = quantized.post("/v1/completions", json=body, headers=AUTH)
    assert first.status_code == 200, first.text
    assert first.json()["usage"]["completion_tokens"] == 5
    again = quantized.post("/v1/completions", json=body, headers=AUTH).json()
    assert again["choices"][0]["text"] == first.json()["choices"][0]["text"]  # deterministic
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    reply = quantized.post("/v1/chat/completions", json=chat, headers=AUTH)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["role"] == "assistant"
