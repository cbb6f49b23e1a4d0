"""Real pe servers (subprocesses on 127.0.0.1) shared by the server tests.

``server``: native backend, prompt embeds on, API key, lowered limits; one per session.
Tests that need other flags start their own (see test_server_operations.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from server_harness import API_KEY, MODEL, ServerProcess

MAX_MODEL_LEN = 256
# Base seconds to receive a body (plus 1 s per MB declared): short, for the 408 test.
BODY_READ_TIMEOUT = 2.0
MAIN_FLAGS = [
    "--enable-prompt-embeds",
    "--max-model-len", str(MAX_MODEL_LEN),
    "--max-embeds-bytes", "256KiB",
    "--max-num-seqs", "16",
    "--max-concurrent-requests", "32",
    "--max-n", "8",
    "--body-read-timeout", str(BODY_READ_TIMEOUT),
]  # fmt: skip


def start_server(
    model_dir: Path,
    log_dir: Path,
    name: str,
    flags: list[str],
    *,
    chat_template: str | None = None,
    **kwargs: Any,
) -> ServerProcess:
    """A ready server logging to ``log_dir``; ``chat_template`` goes to --chat-template as a file."""
    if chat_template is not None:
        path = log_dir / f"{name}.jinja"
        path.write_text(chat_template)
        flags = [*flags, "--chat-template", str(path)]
    return ServerProcess(model_dir, log_dir / f"{name}.log", flags, **kwargs).wait_ready()


def serve(
    model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    flags: list[str],
    **kwargs: Any,
) -> Iterator[ServerProcess]:
    """A server fixture's body (``yield from serve(...)``): started in its own log folder, stopped
    at teardown."""
    proc = start_server(model_dir, tmp_path_factory.mktemp(name), name, flags, **kwargs)
    try:
        yield proc
    finally:
        proc.stop()


def module_server(name: str, flags: list[str], **kwargs: Any) -> Any:
    """A module-scoped fixture: the tiny Llama served with ``flags`` (``kwargs`` as for
    ``start_server``), e.g. ``fuzzed = module_server("fuzz", [...])``."""

    @pytest.fixture(scope="module")
    def fixture(
        tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[ServerProcess]:
        yield from serve(tiny_llama_dir, tmp_path_factory, name, flags, **kwargs)

    return fixture


@pytest.fixture(scope="session")
def server(
    tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    # PE_TEST_BACKEND=transformers runs this whole suite against the reference backend.
    backend = os.environ.get("PE_TEST_BACKEND", "native")
    log_dir = tmp_path_factory.mktemp("logs")
    proc = start_server(tiny_llama_dir, log_dir, "main", MAIN_FLAGS, backend=backend)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> Any:
    import openai

    with openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0) as c:
        yield c


class Embedder:
    """Client-side embeddings: the tiny model's own embedding rows for a text's tokens."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors.numpy import load_file
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        weights = load_file(str(model_dir / "model.safetensors"))
        self.table = weights["model.embed_tokens.weight"].astype(np.float32)
        self.hidden_size = int(self.table.shape[1])

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def __call__(self, text: str) -> np.ndarray:
        return np.ascontiguousarray(self.table[self.ids(text)])

    def rows(self, ids: list[int]) -> np.ndarray:
        return np.ascontiguousarray(self.table[ids])


@pytest.fixture(scope="session")
def embedder(tiny_llama_dir: Path) -> Embedder:
    return Embedder(tiny_llama_dir)


__all__ = ["API_KEY", "BODY_READ_TIMEOUT", "MAX_MODEL_LEN", "MODEL", "Embedder"]
