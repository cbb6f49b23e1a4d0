"""One EOS set through the real server, on the native and the transformers backends: a model
whose greedy output reaches the EOS id of its config.json (generation_config.json lists others,
the tokenizer has its own) stops there, keeps every EOS id out until min_tokens, and runs past
it with ignore_eos. Before the one set, neither backend stopped on config.json's id here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_harness import MODEL, ServerProcess

from conftest import start_server
from eos_model import EOS_AT, IM_END, PROMPT, free_greedy_run, unused_id, write_multi_eos_model


@pytest.fixture(scope="module")
def free_run(tiny_llama_dir: Path) -> list[int]:
    return free_greedy_run(tiny_llama_dir)


@pytest.fixture(scope="module")
def multi_eos_dir(
    tiny_llama_dir: Path, free_run: list[int], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return write_multi_eos_model(
        tiny_llama_dir,
        tmp_path_factory.mktemp("multi_eos") / "model",
        generation=[IM_END, unused_id(free_run)],
        config=free_run[EOS_AT],
        tokenizer=IM_END,
    )


@pytest.fixture(scope="module", params=["native", "transformers"])
def server(
    request: pytest.FixtureRequest, multi_eos_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log_dir = tmp_path_factory.mktemp("logs")
    proc = start_server(multi_eos_dir, log_dir, request.param, [], backend=request.param)
    yield proc
    proc.stop()


def complete(server: ServerProcess, **params: Any) -> dict[str, Any]:
    body = {"model": MODEL, "prompt": PROMPT, "temperature": 0.0, "max_tokens": 24}
    r = server.post("/v1/completions", json={**body, "return_token_ids": True, **params})
    assert r.status_code == 200, r.text
    return dict(r.json()["choices"][0])


def test_both_backends_stop_on_the_same_set(server: ServerProcess, free_run: list[int]) -> None:
    eos_ids = {IM_END, free_run[EOS_AT], unused_id(free_run)}
    stopped = complete(server)
    assert stopped["token_ids"] == free_run[: EOS_AT + 1]
    assert stopped["finish_reason"] == "stop"

    delayed = complete(server, min_tokens=EOS_AT + 2)
    assert delayed["token_ids"][:EOS_AT] == free_run[:EOS_AT]
    assert len(delayed["token_ids"]) >= EOS_AT + 2
    assert not eos_ids & set(delayed["token_ids"][:-1])

    ignored = complete(server, ignore_eos=True, max_tokens=EOS_AT + 3)
    assert ignored["token_ids"] == free_run[: EOS_AT + 3]
    assert ignored["finish_reason"] == "length"
