"""What the pe-client end-to-end tests share: a keyless pe server on the tiny Llama, a PEClient
on it, and the model's own embedding rows for a text.

The server harness lives with the server tests; its folder joins ``sys.path`` here, so the test
modules of this folder import ``server_harness`` directly.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from server_harness import EmbeddingTable, ServerProcess

from pe_client import PEClient

# compact JSON under constraints: a random model would otherwise fill max_tokens with spaces
FLAGS = [
    "--enable-prompt-embeds",
    "--structured-outputs-config",
    '{"disable_any_whitespace": true}',
]


def serve(model_dir: Path, log_dir: Path) -> Iterator[ServerProcess]:
    """A fixture's body: a keyless server with ``FLAGS``, stopped at teardown."""
    proc = ServerProcess(model_dir, log_dir / "server.log", FLAGS, api_key=None)
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def server(
    tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A keyless pe server serving the tiny Llama as ``MODEL``, one per test module."""
    yield from serve(tiny_llama_dir, tmp_path_factory.mktemp("pe_server"))


@pytest.fixture
def replica(tiny_llama_dir: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    """A second server like ``server`` for one test: it has never seen the first one's state."""
    yield from serve(tiny_llama_dir, tmp_path)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[PEClient]:
    with PEClient(base_url=server.base_url, api_key=None, timeout=60.0) as c:
        yield c


class Embedder(EmbeddingTable):
    """Client-side embeddings: ``embedder(text)`` is the rows of ``embedder.ids(text)``."""

    @property
    def hidden_size(self) -> int:
        return int(self.weights.shape[1])

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def __call__(self, text: str) -> np.ndarray:
        return np.ascontiguousarray(self.weights[self.ids(text)])


@pytest.fixture(scope="session")
def embedder(tiny_llama_dir: Path) -> Embedder:
    return Embedder(tiny_llama_dir)
