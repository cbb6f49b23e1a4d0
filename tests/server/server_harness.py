"""The real pe server as a subprocess on 127.0.0.1 (shared by tests/server and tests/e2e)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from pe_server.launch import free_port, stop_process, wait_http_ready

MODEL = "tiny"
API_KEY = "test-key-0123456789"
METRIC_LINE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$")
# What an error body must never contain: tracebacks, addresses, paths, object reprs.
INTERNALS = re.compile(
    r"Traceback|0x[0-9a-fA-F]{6,}|/work/|/usr/|site-packages|<[a-zA-Z_.]+ object"
)
# Peak RSS growth allowed per hostile-input case (reference/security.md §12.2).
BOMB_RSS_LIMIT = 50 * 2**20
ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
    405: "invalid_request_error", 408: "invalid_request_error", 413: "invalid_request_error",
    415: "invalid_request_error", 429: "rate_limit_error", 500: "internal_error",
    503: "server_overloaded",
}  # fmt: skip


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
            "--backend", backend, "--kv-cache-memory", "64MiB",
            # A loaded 2-core machine can take more than the 2 s default to render an ordinary
            # chat (a CI run failed so): the budget's own tests set theirs in ``flags``.
            "--chat-render-timeout", "20", *flags,
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
        wait_http_ready(self.proc, f"{self.root}/health", timeout, step=0.1, log_path=self.log_path)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        returncode = stop_process(self.proc, sig, timeout)
        self._log.close()
        return returncode

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

    def rss_bytes(self, field: str = "VmRSS") -> int:
        """The server process's resident set (``VmRSS``) or its peak (``VmHWM``), in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{field} not in /proc/{self.proc.pid}/status")

    def reset_peak_rss(self) -> None:
        """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` value 5)."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def is_idle(self) -> bool:
        m = self.metrics()
        return (
            m.get("pe_num_requests_running") == 0
            and m.get("pe_num_requests_waiting") == 0
            and m.get("pe_kv_free_blocks") == m.get("pe_kv_total_blocks")
        )


class RssProbe:
    """Server RSS around a block: ``with RssProbe(server) as rss: ...`` then ``rss.peak_delta``.

    The peak is the kernel's high-water mark (``VmHWM``), reset on entry, so a short spike while
    the server handles a request counts even if the memory is freed before the block ends.
    """

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.before = self.after = self.peak = 0

    def __enter__(self) -> RssProbe:
        self.server.reset_peak_rss()
        self.before = self.server.rss_bytes()
        return self

    def __exit__(self, *exc: object) -> None:
        self.after = self.server.rss_bytes()
        self.peak = self.server.rss_bytes("VmHWM")

    @property
    def peak_delta(self) -> int:
        return self.peak - self.before

    @property
    def delta(self) -> int:
        return self.after - self.before

    def __str__(self) -> str:
        mib = 2**20
        return (
            f"RSS before {self.before / mib:.1f} MiB, after {self.after / mib:.1f} MiB, "
            f"peak {self.peak / mib:.1f} MiB"
        )


def assert_error(
    response: httpx.Response, status: int, code: str, type_: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code, error
    assert error["type"] == (type_ or ERROR_TYPES[status])
    assert not INTERNALS.search(response.text), response.text
    return error


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


class EmbeddingTable:
    """A model's tokenizer and float32 embedding rows: a client's view of "embed this text"."""

    def __init__(self, model_dir: Path) -> None:
        import numpy as np
        from safetensors.numpy import load_file
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        weights = load_file(str(model_dir / "model.safetensors"))["model.embed_tokens.weight"]
        self.weights = weights.astype(np.float32)

    def payload(self, text: str, fmt: str = "safetensors") -> str:
        """The base64 prompt_embeds of ``text``'s tokens (no special tokens) in ``fmt``."""
        import numpy as np

        from pe_common.codec import encode_prompt_embeds

        ids = self.tokenizer.encode(text, add_special_tokens=False)
        rows = np.ascontiguousarray(self.weights[ids])
        return str(encode_prompt_embeds(rows, fmt))  # type: ignore[arg-type]
