"""The key end-to-end flows against both backends (native pe engine, transformers reference):
greedy float32 outputs must be identical token for token."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from backend_flows import TEXT, chat, client_for, logprobs
from server_harness import MODEL, EmbeddingTable, ServerProcess

from chat_messages import mixed_chat

BACKENDS = ["native", "transformers"]
FLAGS = ["--enable-prompt-embeds", "--max-model-len", "256"]
GREEDY: dict[str, Any] = {"max_tokens": 10, "temperature": 0.0}


@pytest.fixture(scope="module", params=BACKENDS)
def backend_server(
    request: pytest.FixtureRequest, tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log_dir = tmp_path_factory.mktemp(f"backend-{request.param}")
    proc = ServerProcess(
        tiny_llama_dir, log_dir / "server.log", FLAGS, backend=request.param
    ).wait_ready()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def table(tiny_llama_dir: Path) -> EmbeddingTable:
    return EmbeddingTable(tiny_llama_dir)


_results: dict[str, dict[str, Any]] = {}


def record(backend: ServerProcess, name: str, value: Any, close: bool = False) -> None:
    """Keep each backend's result; once both ran, they must agree."""
    backend_name = "transformers" if "transformers" in backend.proc.args else "native"
    _results.setdefault(name, {})[backend_name] = value
    if len(_results[name]) == len(BACKENDS):
        first, second = _results[name].values()
        if close:
            np.testing.assert_allclose(first, second, atol=2e-3, err_msg=name)
        else:
            assert first == second, f"{name}: {_results[name]}"


def test_completions_embeds_and_text(backend_server: ServerProcess, table: Any) -> None:
    with client_for(backend_server) as client:
        res = client.completions.create(
            model=MODEL,
            prompt="Hello there",
            extra_body={"prompt_embeds": [table.payload(TEXT)], "ignore_eos": True,
                        "return_token_ids": True},
            **GREEDY,
        )  # fmt: skip
    tokens = [c.model_dump()["token_ids"] for c in res.choices]
    assert len(tokens) == 2 and all(len(t) == 10 for t in tokens)
    record(backend_server, "completions", (tokens, res.usage.prompt_tokens))


def test_chat_mixed_parts_and_stream(backend_server: ServerProcess, table: Any) -> None:
    reply = chat(backend_server, mixed_chat(table.payload(TEXT)), **GREEDY)
    record(backend_server, "chat", reply)


def test_logprobs_agree(backend_server: ServerProcess, table: Any) -> None:
    tokens, values = logprobs(backend_server, table.payload(TEXT), **GREEDY)
    assert len(values) == 10
    record(backend_server, "logprob_tokens", tokens)
    record(backend_server, "logprobs", values, close=True)


def test_constraints_are_applied_or_refused_never_dropped(backend_server: ServerProcess) -> None:
    """Issue 20: the native backend applies a constraint; the transformers reference backend
    refuses it with a 400 naming the field (a required tool call is a constraint too)."""
    is_reference = "transformers" in backend_server.proc.args
    body = {"model": MODEL, "prompt": TEXT, "max_tokens": 4, "temperature": 0.0}
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    for fields, param in (
        ({"structured_outputs": {"choice": ["yes", "no"]}}, "structured_outputs.choice"),
        ({"guided_regex": "[ab]{2}"}, "guided_regex"),
    ):
        r = backend_server.post("/v1/completions", json={**body, **fields})
        if is_reference:
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["code"] == "unsupported_parameter" and error["param"] == param
        else:
            assert r.status_code == 200, r.text
    chat_body = {"model": MODEL, "messages": [{"role": "user", "content": TEXT}],
                 "tools": [tool], "tool_choice": "required", "max_tokens": 8}  # fmt: skip
    r = backend_server.post("/v1/chat/completions", json=chat_body)
    if is_reference:
        assert r.status_code == 400 and r.json()["error"]["param"] == "tools", r.text
    else:
        assert r.status_code == 200, r.text
