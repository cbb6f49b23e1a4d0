"""Fixtures for the client's unit tests: a scripted fake server, refused ports, no sleeping."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from client_fakes import FakeServer, Reply


@pytest.fixture(scope="session")
def _fake_server_session() -> Iterator[FakeServer]:
    server = FakeServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fake_server(_fake_server_session: FakeServer) -> FakeServer:
    _fake_server_session.script(Reply(status=500, body={"error": {"message": "unscripted"}}))
    return _fake_server_session


@pytest.fixture
def refused_url() -> str:
    """A base URL where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the client's backoff sleeps instead of sleeping."""
    delays: list[float] = []

    async def async_sleep(seconds: float) -> None:
        delays.append(seconds)

    monkeypatch.setattr("pe_client.client._sleep", delays.append)
    monkeypatch.setattr("pe_client.client._async_sleep", async_sleep)
    return delays
