"""``pe-server serve --quantization int8`` (vLLM's flag): a real server on int8 linears
answers completions and chat, greedy answers repeatable; served from a Q8_0 GGUF file, it runs
on the file's own blocks and answers as the offline engine on the same file does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import API_KEY, MODEL, ServerProcess

from conftest import module_server, serve
from gguf_files import write_llama_gguf

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


@pytest.fixture(scope="module")
def q8_0_file(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gguf")
    out = tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf"
    return write_llama_gguf(tiny_llama_dir, out, q8_0=True)


@pytest.fixture(scope="module")
def gguf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pe-cache")


@pytest.fixture(scope="module")
def gguf_server(
    q8_0_file: Path, gguf_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    env = {"PE_CACHE_DIR": str(gguf_cache)}  # the conversion's cache: not the user's
    yield from serve(q8_0_file, tmp_path_factory, "gguf-int8", ["--quantization", "int8"], env=env)


def test_q8_0_gguf_served_with_int8_answers_as_the_offline_engine(
    gguf_server: ServerProcess, q8_0_file: Path, gguf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pe-server serve model.Q8_0.gguf --quantization int8`: the same greedy text as
    `LLM(model.Q8_0.gguf, quantization="int8")`, whose int8 weights are the file's blocks
    (tests/engine/test_gguf_model.py)."""
    from pe_engine import LLM, SamplingParams

    monkeypatch.setenv("PE_CACHE_DIR", str(gguf_cache))
    prompt = "The capital of France is"
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 8, "temperature": 0.0,
            "ignore_eos": True}  # fmt: skip
    reply = gguf_server.post("/v1/completions", json=body, headers=AUTH)
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 8
    served = reply.json()["choices"][0]["text"]
    llm = LLM(str(q8_0_file), dtype="float32", quantization="int8", max_model_len=128,
              num_kv_blocks=32, block_size=8)  # fmt: skip
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    (offline,) = llm.generate([prompt], params, use_tqdm=False)
    assert served == offline.outputs[0].text
