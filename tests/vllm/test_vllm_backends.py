"""pe's API on real vLLM: ``--backend vllm`` (engine in process) and ``--backend vllm-remote``
(gateway to ``vllm.entrypoints.openai.api_server --enable-prompt-embeds`` on 127.0.0.1).

Greedy float32 outputs must be identical, token for token, to the native backend's for text,
prompt-embeds and mixed chat prompts (tox -e vllm; skipped where vLLM is not installed).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from backend_flows import TEXT, chat, client_for, logprobs
from server_harness import MODEL, EmbeddingTable, ServerProcess, wait_until

from chat_messages import mixed_chat
from pe_common.codec import encode_prompt_embeds
from pe_server.backends import is_vllm_installed
from pe_server.launch import free_port, stop_process, wait_http_ready

if not is_vllm_installed():
    pytest.skip("vLLM is not installed (tox -e vllm)", allow_module_level=True)
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1200)]

BACKENDS = ["vllm", "vllm-remote"]
FLAGS = ["--enable-prompt-embeds", "--max-model-len", "256", "--seed", "0"]
GREEDY: dict[str, Any] = {"max_tokens": 24, "temperature": 0.0}
READY_TIMEOUT_S = 600.0
# What vLLM logs (with --enable-log-requests) when a request is aborted.
ABORTED = re.compile(r"Aborted request\(s\)|Request \S+ aborted")
# The log of the process that runs vLLM's engine, per backend.
_engine_logs: dict[str, Path] = {}


class VllmServer:
    """``python -m vllm.entrypoints.openai.api_server`` (the wheel's ``vllm`` script may be
    broken on CPU builds) on a free loopback port."""

    def __init__(self, model_dir: Path, log_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", "upstream", "--enable-prompt-embeds", "--host", "127.0.0.1",
            "--port", str(self.port), "--max-model-len", "256", "--dtype", "float32",
            "--seed", "0", "--enable-log-requests",
        ]  # fmt: skip
        self.log_path = log_path
        self._log = log_path.open("wb")
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)

    def wait_ready(self) -> VllmServer:
        url = f"{self.url}/v1/models"
        wait_http_ready(
            self.proc, url, READY_TIMEOUT_S, step=0.5, log_path=self.log_path, name="vLLM"
        )
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


@pytest.fixture(scope="module")
def native(
    vllm_tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("native") / "server.log"
    proc = ServerProcess(vllm_tiny_dir, log, FLAGS, backend="native").wait_ready()
    yield proc
    proc.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(
    request: pytest.FixtureRequest,
    vllm_tiny_dir: Path,
    vllm_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    logs = tmp_path_factory.mktemp(request.param)
    upstream = None
    flags = list(FLAGS)
    if request.param == "vllm":  # vLLM's own engine flags, passed through
        flags += ["--tensor-parallel-size", "1", "--distributed-executor-backend", "mp",
                  "--download-dir", str(logs / "downloads"), "--enable-log-requests"]  # fmt: skip
    if request.param == "vllm-remote":
        upstream = VllmServer(vllm_tiny_dir, logs / "vllm.log", vllm_env).wait_ready()
        flags += ["--upstream", upstream.url]
    _engine_logs[request.param] = upstream.log_path if upstream else logs / "server.log"
    proc = ServerProcess(vllm_tiny_dir, logs / "server.log", flags, env=vllm_env,
                         backend=request.param)  # fmt: skip
    try:
        yield proc.wait_ready(READY_TIMEOUT_S)
    finally:
        proc.stop(timeout=60)
        if upstream is not None:
            upstream.stop()


@pytest.fixture(scope="module")
def table(vllm_tiny_dir: Path) -> EmbeddingTable:
    return EmbeddingTable(vllm_tiny_dir)


def completions(server: ServerProcess, table: Any) -> tuple[list[list[int]], int, list[str]]:
    with client_for(server) as client:
        res = client.completions.create(
            model=MODEL,
            prompt=["Hello there", TEXT],
            extra_body={"prompt_embeds": [table.payload(TEXT), table.payload("Once upon", "torch")],
                        "ignore_eos": True, "return_token_ids": True},
            **GREEDY,
        )  # fmt: skip
    tokens = [c.model_dump()["token_ids"] for c in res.choices]
    assert len(tokens) == 4 and all(len(t) == GREEDY["max_tokens"] for t in tokens)
    return tokens, res.usage.prompt_tokens, [c.text for c in res.choices]


_native: dict[str, Any] = {}


def native_result(name: str, compute: Any) -> Any:
    if name not in _native:
        _native[name] = compute()
    return _native[name]


def test_completions_text_and_embeds_match_native(
    backend: ServerProcess, native: ServerProcess, table: Any
) -> None:
    assert completions(backend, table) == native_result(
        "completions", lambda: completions(native, table)
    )


def test_mixed_chat_matches_native(
    backend: ServerProcess, native: ServerProcess, table: Any
) -> None:
    messages = mixed_chat(table.payload(TEXT))
    assert chat(backend, messages, **GREEDY) == native_result(
        "mixed_chat", lambda: chat(native, messages, **GREEDY)
    )


def test_text_chat_matches_native(
    backend: ServerProcess, native: ServerProcess, table: Any
) -> None:
    messages = [{"role": "user", "content": "Name three colours"}]
    assert chat(backend, messages, **GREEDY) == native_result(
        "text_chat", lambda: chat(native, messages, **GREEDY)
    )


def test_logprobs_match_native(backend: ServerProcess, native: ServerProcess, table: Any) -> None:
    payload = table.payload(TEXT)
    tokens, values = logprobs(backend, payload, **GREEDY)
    native_tokens, native_values = native_result(
        "logprobs", lambda: logprobs(native, payload, **GREEDY)
    )
    assert tokens == native_tokens
    np.testing.assert_allclose(values, native_values, atol=1e-3)


def test_engine_flags_reach_vllm(backend: ServerProcess) -> None:
    if "vllm-remote" in backend.proc.args:
        pytest.skip("the upstream has its own flags")
    log = backend.log_text()
    # vLLM-compat flags pe knows and unknown ones both reach vLLM (order between them is free)
    (line,) = [text for text in log.splitlines() if "vllm engine arguments:" in text]
    assert "--tensor-parallel-size 1" in line and "--distributed-executor-backend mp" in line
    assert "--enable-log-requests" in line
    downloads = Path(backend.log_path).parent / "downloads"
    assert f"download_dir='{downloads}'" in log  # vLLM's own config line


def test_client_disconnect_aborts_the_vllm_request(backend: ServerProcess) -> None:
    engine_log = next(path for name, path in _engine_logs.items() if name in backend.proc.args)
    assert not ABORTED.search(engine_log.read_text(errors="replace"))
    payload = {"model": MODEL, "prompt": "Hello", "max_tokens": 240, "temperature": 0.0,
               "ignore_eos": True, "stream": True}  # fmt: skip
    with httpx.stream(
        "POST", f"{backend.base_url}/completions", json=payload, headers=backend.headers
    ) as r:
        assert next(line for line in r.iter_lines() if line.startswith("data: "))
    assert wait_until(lambda: ABORTED.search(engine_log.read_text(errors="replace")), 30)


def test_bad_embeds_width_is_refused_by_pe(backend: ServerProcess) -> None:
    """A wrong hidden size kills vLLM's offline engine; pe must refuse it before vLLM sees it."""
    rows = np.zeros((3, 129), np.float32)
    r = backend.post(
        "/v1/completions",
        json={"model": MODEL, "prompt_embeds": encode_prompt_embeds(rows, "torch")},
    )
    assert r.status_code == 400
    assert backend.get("/health").status_code == 200
