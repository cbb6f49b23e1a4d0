"""The real pe server as a subprocess on 127.0.0.1 (shared by tests/server and tests/e2e)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

MODEL = "tiny"
API_KEY = "test-key-0123456789"
METRIC_LINE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``python -m pe_server serve MODEL_DIR ...`` with its log captured to a file."""

    def __init__(
        self,
        model_dir: Path,
        log_path: Path,
        flags: Sequence[str] = (),
        *,
        env: dict[str, str] | None = None,
        api_key: str | None = API_KEY,
        backend: str = "native",
    ) -> None:
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root}/v1"
        self.api_key = api_key
        cmd = [
            sys.executable, "-m", "pe_server", "serve", str(model_dir),
            "--port", str(self.port), "--dtype", "float32", "--served-model-name", MODEL,
            "--backend", backend, "--kv-cache-memory", "64MiB", *flags,
        ]  # fmt: skip
        if api_key:
            cmd += ["--api-key", api_key]
        self.log_path = log_path
        self._log = log_path.open("wb")
        full_env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
            **(env or {}),
        }
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pe server exited:\n{self.log_text()[-4000:]}")
            try:
                if httpx.get(f"{self.root}/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"pe server not ready:\n{self.log_text()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return int(self.proc.returncode)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("timeout", 30.0)
        return httpx.get(f"{self.root}{path}", headers=self.headers, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        kwargs["headers"] = {**self.headers, **kwargs.get("headers", {})}
        kwargs.setdefault("timeout", 60.0)
        return httpx.post(f"{self.root}{path}", **kwargs)

    def metrics(self) -> dict[str, float]:
        """Samples of /metrics: ``name`` or ``name{labels}`` -> value."""
        samples: dict[str, float] = {}
        for line in self.get("/metrics").text.splitlines():
            match = METRIC_LINE.match(line)
            if match:
                samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
        return samples

    def is_idle(self) -> bool:
        m = self.metrics()
        return (
            m.get("pe_num_requests_running") == 0
            and m.get("pe_num_requests_waiting") == 0
            and m.get("pe_kv_free_blocks") == m.get("pe_kv_total_blocks")
        )


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
