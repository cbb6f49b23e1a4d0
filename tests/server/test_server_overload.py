"""Overload and queueing on the real server (reference/security.md §11 rows 9, 44, 45; §12.6/7/11).

A bounded loopback load generator holds 4x the admission limit of concurrent streaming embeds
requests: the excess gets 503 + Retry-After fast, admitted requests all complete, the server's
RSS stays within the configured bytes-in-flight budget, and the KV pool is full again after.
Clients that leave while their request waits in the engine queue free everything within 1 s.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from server_harness import MODEL, RssProbe, ServerProcess, wait_until

from conftest import Embedder, start_server
from pe_common.codec import encode_prompt_embeds

MiB = 2**20
ADMISSION_LIMIT = 4
MAX_NUM_SEQS = 2
BYTES_IN_FLIGHT = 4 * MiB
# RSS the server may add under load: the admission budget plus allocator and engine slack.
RSS_BUDGET = BYTES_IN_FLIGHT + 48 * MiB
REJECT_WITHIN_S = 0.100
TEXT = "The quick brown fox jumps over the lazy dog"
ABORTED = 'pe_request_aborts_total{reason="client_disconnected"}'
REJECTED = 'pe_admission_rejections_total{reason="capacity"}'
# A rejected client waits this long before trying again (a fast, Retry-After-ignoring client).
RETRY_DELAY_S = 0.1


@pytest.fixture(scope="module")
def crowded(
    tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """Four admission slots, two engine sequences (so admitted requests queue), 16 MiB of
    bytes in flight, 1 MiB of embeds per request; keyless loopback."""
    flags = [
        "--enable-prompt-embeds", "--max-model-len", "2048", "--max-embeds-bytes", "1MiB",
        "--max-concurrent-requests", str(ADMISSION_LIMIT), "--max-num-seqs", str(MAX_NUM_SEQS),
        "--max-bytes-in-flight", str(BYTES_IN_FLIGHT), "--stream-write-timeout", "5",
    ]  # fmt: skip
    proc = start_server(
        tiny_llama_dir, tmp_path_factory.mktemp("crowded"), "crowded", flags, api_key=None
    )
    yield proc
    proc.stop()


@pytest.fixture(autouse=True)
def idle_after(crowded: ServerProcess) -> Iterator[None]:
    yield
    assert wait_until(crowded.is_idle, 2.0), crowded.metrics()
    assert crowded.metrics()["pe_http_requests_admitted"] == 0


# ---- the load generator ----------------------------------------------------------------------


@dataclass
class LoadResult:
    reject_latencies: list[float] = field(default_factory=list)
    num_completed: int = 0
    num_tokens: int = 0
    failures: list[str] = field(default_factory=list)


async def one_worker(
    session: aiohttp.ClientSession, url: str, body: bytes, stop_at: float, out: LoadResult
) -> None:
    """Send streaming requests back to back until ``stop_at``; a 503 is retried after
    RETRY_DELAY_S (far sooner than its Retry-After asks)."""
    headers = {"Content-Type": "application/json"}
    while time.monotonic() < stop_at:
        start = time.perf_counter()
        async with session.post(url, data=body, headers=headers) as response:
            latency = time.perf_counter() - start
            if response.status == 503:
                out.reject_latencies.append(latency)
                error = (await response.json())["error"]
                if not response.headers.get("Retry-After", "").isdigit():
                    out.failures.append("503 without Retry-After")
                if error["code"] != "server_overloaded":
                    out.failures.append(f"503 code {error['code']}")
                await asyncio.sleep(RETRY_DELAY_S)
                continue
            if response.status != 200:
                out.failures.append(f"status {response.status}: {await response.text()}")
                continue
            events = [line async for line in response.content if line.startswith(b"data: ")]
        if not events or events[-1].strip() != b"data: [DONE]":
            out.failures.append("stream ended without [DONE]")
        elif errors := [e for e in events[:-1] if "error" in json.loads(e[len(b"data: ") :])]:
            # parsed, not searched: a sampled delta's text may be the token "error" itself
            out.failures.append(f"stream carried an error event: {errors[0][:300]!r}")
        else:
            out.num_completed += 1
            out.num_tokens += len(events) - 1


async def hold_load(url: str, body: bytes, num_workers: int, seconds: float) -> LoadResult:
    out = LoadResult()
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        stop_at = time.monotonic() + seconds
        workers = [one_worker(session, url, body, stop_at, out) for _ in range(num_workers)]
        await asyncio.wait_for(asyncio.gather(*workers), seconds + 30)
    return out


def embeds_body(embedder: Embedder, max_tokens: int) -> bytes:
    return json.dumps({
        "model": MODEL,
        "prompt_embeds": encode_prompt_embeds(embedder(TEXT), "safetensors"),
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }).encode()  # fmt: skip


def test_overload_4x_admission_limit(crowded: ServerProcess, embedder: Embedder) -> None:
    body = embeds_body(embedder, max_tokens=16)
    with RssProbe(crowded) as rss:
        out = asyncio.run(
            hold_load(f"{crowded.root}/v1/completions", body, 4 * ADMISSION_LIMIT, seconds=4.0)
        )
    left = time.monotonic()
    assert wait_until(crowded.is_idle, 1.0), crowded.metrics()
    assert time.monotonic() - left <= 1.0
    assert out.failures == []
    latencies = sorted(out.reject_latencies)
    assert out.num_completed >= ADMISSION_LIMIT and len(latencies) >= 4 * ADMISSION_LIMIT
    p50, p99 = statistics.median(latencies), float(np.percentile(latencies, 99))
    print(
        f"\noverload: {out.num_completed} completed ({out.num_tokens} tokens), "
        f"{len(latencies)} rejected; 503 latency p50 {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms; {rss}"
    )
    assert p99 <= REJECT_WITHIN_S
    assert rss.peak_delta <= RSS_BUDGET, str(rss)
    metrics = crowded.metrics()
    assert metrics[REJECTED] >= len(latencies)


# ---- row 44: N concurrent maximum-size requests -----------------------------------------------


def read_reply(sock: socket.socket, reply: bytes = b"", timeout: float = 30.0) -> bytes:
    """One whole response (by its Content-Length): the server may keep the connection open
    for a while after refusing a body it never read."""
    sock.settimeout(timeout)
    while True:
        head, sep, rest = reply.partition(b"\r\n\r\n")
        if sep and b"content-length:" in head.lower():
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            if len(rest) >= length:
                return reply
        data = sock.recv(65536)
        if not data:
            return reply
        reply += data


def test_row44_concurrent_max_size_requests(crowded: ServerProcess, embedder: Embedder) -> None:
    """Six 341 kB bodies at once: the bytes budget (4 MiB at 5x per body byte) admits two;
    the rest get 503 + Retry-After before their bodies are read; the two complete."""
    rows = np.tile(embedder(TEXT), (1000 // len(embedder.ids(TEXT)), 1))[:1000]
    payload = encode_prompt_embeds(np.ascontiguousarray(rows), "raw")
    assert rows.nbytes <= MiB
    body = json.dumps({"model": MODEL, "prompt_embeds": payload, "max_tokens": 4}).encode()
    assert 2 * 5 * len(body) <= BYTES_IN_FLIGHT < 3 * 5 * len(body)
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{crowded.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    rejected = crowded.metrics().get(REJECTED, 0)
    with RssProbe(crowded) as rss:
        socks = [socket.create_connection(("127.0.0.1", crowded.port)) for _ in range(6)]
        try:
            for sock in socks:
                sock.sendall(head)
            assert wait_until(lambda: crowded.metrics().get(REJECTED, 0) == rejected + 4, 2.0)
            assert crowded.metrics()["pe_http_requests_admitted"] == 2
            replies: dict[int, bytes] = {}
            for i, sock in enumerate(socks):
                sock.setblocking(False)
                try:
                    first = sock.recv(65536)
                except BlockingIOError:
                    continue
                replies[i] = read_reply(sock, first)
            assert len(replies) == 4
            for reply in replies.values():
                assert reply.startswith(b"HTTP/1.1 503"), reply[:200]
                assert b"Retry-After: " in reply and b'"server_overloaded"' in reply
            admitted = [s for i, s in enumerate(socks) if i not in replies]
            for sock in admitted:
                sock.setblocking(True)
                sock.sendall(body)
            for sock in admitted:
                reply = read_reply(sock)
                assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
        finally:
            for sock in socks:
                sock.close()
    print(f"\nrow 44: {rss}")
    assert rss.peak_delta <= RSS_BUDGET, str(rss)


# ---- disconnects while queued -----------------------------------------------------------------


def open_request(port: int, body: dict[str, object]) -> socket.socket:
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return sock


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_disconnect_while_queued_frees_everything_within_a_second(
    crowded: ServerProcess, embedder: Embedder, stream: bool
) -> None:
    """Two long requests fill the engine's sequences; a third waits in its queue. The waiting
    client leaves: it is gone from the queue within 1 s. Then the running ones leave too: the KV
    pool is full and nothing runs or waits within 1 s."""
    payload = encode_prompt_embeds(embedder(TEXT), "safetensors")
    long = {"model": MODEL, "prompt_embeds": payload, "max_tokens": 2000, "ignore_eos": True}
    running = [open_request(crowded.port, {**long, "stream": True}) for _ in range(MAX_NUM_SEQS)]
    queued = None
    try:
        assert wait_until(lambda: crowded.metrics()["pe_num_requests_running"] == 2, 5.0)
        queued = open_request(crowded.port, {**long, "stream": stream})
        assert wait_until(lambda: crowded.metrics()["pe_num_requests_waiting"] == 1, 5.0)
        before = crowded.metrics().get(ABORTED, 0)
        queued.close()
        left = time.monotonic()
        assert wait_until(lambda: crowded.metrics()["pe_num_requests_waiting"] == 0, 1.0)
        assert time.monotonic() - left <= 1.0
        metrics = crowded.metrics()
        assert metrics["pe_num_requests_running"] == 2
        assert metrics[ABORTED] == before + 1
        assert metrics["pe_http_requests_admitted"] == 2
    finally:
        for sock in running:
            sock.close()
        if queued is not None:
            queued.close()
    left = time.monotonic()
    assert wait_until(crowded.is_idle, 1.0), crowded.metrics()
    assert time.monotonic() - left <= 1.0
