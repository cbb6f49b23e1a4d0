"""A pe server as a child process: a free loopback port, waiting until it answers, stopping it.

The demo, the benchmarks and the tests start ``python -m pe_server serve ...`` this way.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def wait_http_ready(
    proc: subprocess.Popen[bytes],
    url: str,
    timeout: float,
    *,
    step: float = 0.2,
    log_path: Path | None = None,
    name: str = "pe server",
) -> None:
    """Poll ``url`` until it answers 200. Raise RuntimeError (with the tail of ``log_path``, when
    there is one) if ``proc`` exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with status {proc.returncode}{_tail(log_path)}")
        if _answers_ok(url):
            return
        time.sleep(step)
    raise RuntimeError(f"{name} not ready after {timeout:.0f} s{_tail(log_path)}")


def _tail(log_path: Path | None) -> str:
    return f":\n{log_path.read_text(errors='replace')[-4000:]}" if log_path else ""


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 60.0
) -> int:
    """Send ``sig`` (a graceful drain for SIGTERM), kill after ``timeout`` seconds; the exit
    status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return int(proc.returncode)
