"""Catalogue rows 5 and 10 on a real server: a request head that trickles in is cut off at
--header-read-timeout without running a handler; one API key holding --max-requests-per-key
requests gets 429 with Retry-After while other keys are served."""

from __future__ import annotations

import json
import socket
import time

import httpx
from server_harness import API_KEY, MODEL, ServerProcess, wait_until

from conftest import module_server

OTHER_KEY = "second-tenant-key"
HEAD_TIMEOUT = 1.0
LONG = {"model": MODEL, "prompt": "x", "max_tokens": 200, "ignore_eos": True, "stream": True}
FLAGS = [
    "--api-key", OTHER_KEY, "--max-requests-per-key", "1",
    "--header-read-timeout", str(HEAD_TIMEOUT), "--body-read-timeout", "5",
]  # fmt: skip

guarded = module_server("quota", FLAGS)


def open_stream(port: int, key: str) -> socket.socket:
    """A streaming request left open: it holds its admission slot until the socket closes."""
    data = json.dumps(LONG).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 200"), "the holding request was not admitted"
    return sock


def small(server: ServerProcess, key: str, scheme: str = "Bearer") -> httpx.Response:
    return server.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "x", "max_tokens": 1},
        headers={"Authorization": f"{scheme} {key}"},
    )


def test_a_key_over_its_quota_gets_429_and_others_are_served(guarded: ServerProcess) -> None:
    holder = open_stream(guarded.port, API_KEY)
    try:
        r = small(guarded, API_KEY)
        assert r.status_code == 429, r.text
        assert r.headers["Retry-After"] == "1"
        error = r.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
        assert API_KEY not in r.text
        # The same key written differently is the same tenant.
        assert small(guarded, f"  {API_KEY}", scheme="bearer").status_code == 429
        assert small(guarded, OTHER_KEY).status_code == 200  # another tenant is not affected
        samples = guarded.metrics()
        assert samples['pe_admission_rejections_total{reason="quota"}'] >= 1
    finally:
        holder.close()
    assert wait_until(lambda: guarded.metrics()["pe_http_requests_admitted"] == 0, 5.0)
    assert small(guarded, API_KEY).status_code == 200  # the slot came back


def test_a_trickled_head_is_closed_at_the_header_timeout(guarded: ServerProcess) -> None:
    key = 'pe_admission_rejections_total{reason="header_timeout"}'
    before = guarded.metrics().get(key, 0)
    head = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
        closed = False
        for byte in head + b"a" * 100:
            try:
                sock.sendall(bytes([byte]))
                sock.setblocking(False)
                closed = sock.recv(1024) == b""
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            finally:
                sock.setblocking(True)
            if closed or time.monotonic() - start > HEAD_TIMEOUT + 5:
                break
            time.sleep(0.05)
    elapsed = time.monotonic() - start
    assert closed, "the server kept a trickling head open"
    assert HEAD_TIMEOUT - 0.2 <= elapsed <= HEAD_TIMEOUT + 3, elapsed
    assert guarded.metrics()[key] == before + 1
    assert small(guarded, API_KEY).status_code == 200


def test_keep_alive_requests_and_a_slow_body_are_not_cut(guarded: ServerProcess) -> None:
    """The deadline is for heads only: a reused connection idle longer than the deadline still
    serves its next request, and a body that takes longer than the deadline is read."""
    with httpx.Client(headers=guarded.headers, timeout=30) as client:
        body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
        assert client.post(f"{guarded.root}/v1/completions", json=body).status_code == 200
        time.sleep(HEAD_TIMEOUT + 0.5)
        assert client.post(f"{guarded.root}/v1/completions", json=body).status_code == 200
    data = json.dumps({"model": MODEL, "prompt": "y", "max_tokens": 1}).encode()
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
        sock.sendall(
            f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
        )
        for i in range(0, len(data), 8):  # over 2 x the head deadline, well inside the body's
            sock.sendall(data[i : i + 8])
            time.sleep(2.5 * HEAD_TIMEOUT / (len(data) / 8))
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
