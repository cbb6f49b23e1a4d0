"""The example scripts and the pe-client command line, run against the real pe server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from server_harness import MODEL, ServerProcess

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [
    "completions_with_embeds.py",
    "mixed_chat.py",
    "soft_prompt.py",
    "cached_system_prompt.py",
    "vllm_server.py",
]


def run(args: list[str], srv: ServerProcess, hidden_size: int) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PE_BASE_URL": srv.base_url,
        "PE_MODEL": MODEL,
        "PE_HIDDEN_SIZE": str(hidden_size),
    }
    env.pop("VLLM_BASE_URL", None)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )


@pytest.fixture(scope="module")
def hidden_size(tiny_llama_dir: Path) -> int:
    import json

    return int(json.loads((tiny_llama_dir / "config.json").read_text())["hidden_size"])


@pytest.mark.parametrize("script", EXAMPLES)
def test_example_runs(server: ServerProcess, hidden_size: int, script: str) -> None:
    result = run([str(ROOT / "examples" / script)], server, hidden_size)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip()


def test_cli_complete_and_chat(
    server: ServerProcess,
    hidden_size: int,
    tmp_path: Path,
) -> None:
    path = tmp_path / "doc.npy"
    np.save(path, np.random.default_rng(0).standard_normal((4, hidden_size)).astype(np.float32))
    complete = run(
        ["-m", "pe_client", "complete", "--embeds", str(path), "--max-tokens", "5"],
        server,
        hidden_size,
    )
    assert complete.returncode == 0, complete.stderr
    assert complete.stdout.strip()
    chat = run(
        ["-m", "pe_client", "chat", "--system", "Be brief.", "--embeds", str(path),
         "--transport", "msgpack", "--max-tokens", "5", "Read:", "and answer."],
        server,
        hidden_size,
    )  # fmt: skip
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip()
    bad = run(["-m", "pe_client", "complete", "--prompt", "x", "--model", "nope"], server, 8)
    assert bad.returncode == 1 and "NotFoundError" in bad.stderr


def test_offline_generation_example(tiny_llama_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "offline_generation.py"), str(tiny_llama_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "identical greedy outputs: True" in result.stdout
