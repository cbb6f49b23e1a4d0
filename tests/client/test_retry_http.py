"""Retries against a real (fake) HTTP server: what is retried, how often, how long it waits."""

from __future__ import annotations

import pytest
from client_fakes import FakeServer, Reply, completion_json

import pe_client
from pe_client import AsyncPEClient, PEClient

BUSY = {"error": {"message": "busy", "type": "server_error", "param": None, "code": "busy"}}


def test_503_with_retry_after_then_200(fake_server: FakeServer, no_sleep: list[float]) -> None:
    fake_server.script(
        Reply(status=503, body=BUSY, headers={"Retry-After": "0.25"}),
        Reply(body=completion_json("after retry")),
    )
    with PEClient(base_url=fake_server.base_url) as client:
        result = client.completions.create(model="m", prompt="x")
    assert result.choices[0].text == "after retry"
    assert len(fake_server.requests) == 2
    assert no_sleep == [0.25]
    assert fake_server.requests[0].body == fake_server.requests[1].body


@pytest.mark.parametrize("status", [408, 429, 500, 502, 504])
def test_retryable_statuses_back_off(
    fake_server: FakeServer, no_sleep: list[float], status: int
) -> None:
    fake_server.script(Reply(status=status, body=BUSY), Reply(body=completion_json()))
    with PEClient(base_url=fake_server.base_url) as client:
        client.completions.create(model="m", prompt="x")
    assert len(fake_server.requests) == 2
    assert len(no_sleep) == 1 and 0.375 <= no_sleep[0] <= 0.5


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_other_4xx_are_not_retried(
    fake_server: FakeServer, no_sleep: list[float], status: int
) -> None:
    fake_server.script(Reply(status=status, body=BUSY), Reply(body=completion_json()))
    with (
        PEClient(base_url=fake_server.base_url, max_retries=5) as client,
        pytest.raises(pe_client.APIStatusError),
    ):
        client.completions.create(model="m", prompt="x")
    assert len(fake_server.requests) == 1 and no_sleep == []


def test_retries_give_up_after_max_retries(fake_server: FakeServer, no_sleep: list[float]) -> None:
    fake_server.script(Reply(status=503, body=BUSY))
    with (
        PEClient(base_url=fake_server.base_url, max_retries=3) as client,
        pytest.raises(pe_client.ServiceUnavailableError),
    ):
        client.completions.create(model="m", prompt="x")
    assert len(fake_server.requests) == 4
    assert len(no_sleep) == 3
    assert no_sleep[0] <= 0.5 < no_sleep[1] <= 1.0 < no_sleep[2] <= 2.0  # exponential


def test_max_retries_zero(fake_server: FakeServer, no_sleep: list[float]) -> None:
    fake_server.script(Reply(status=500, body=BUSY), Reply(body=completion_json()))
    with (
        PEClient(base_url=fake_server.base_url, max_retries=0) as client,
        pytest.raises(pe_client.InternalServerError),
    ):
        client.completions.create(model="m", prompt="x")
    assert len(fake_server.requests) == 1


def test_x_should_retry_header_overrides(fake_server: FakeServer, no_sleep: list[float]) -> None:
    fake_server.script(
        Reply(status=500, body=BUSY, headers={"x-should-retry": "false"}),
        Reply(body=completion_json()),
    )
    with (
        PEClient(base_url=fake_server.base_url) as client,
        pytest.raises(pe_client.InternalServerError),
    ):
        client.completions.create(model="m", prompt="x")
    assert len(fake_server.requests) == 1


def test_connection_refused_is_retried_then_raised(refused_url: str, no_sleep: list[float]) -> None:
    with (
        PEClient(base_url=refused_url, max_retries=2) as client,
        pytest.raises(pe_client.APIConnectionError) as info,
    ):
        client.completions.create(model="m", prompt="x")
    assert type(info.value) is pe_client.APIConnectionError
    assert info.value.status_code is None
    assert len(no_sleep) == 2


def test_timeout_raises_api_timeout_error(fake_server: FakeServer, no_sleep: list[float]) -> None:
    fake_server.script(Reply(body=completion_json(), delay=1.0))
    with (
        PEClient(base_url=fake_server.base_url, max_retries=1, timeout=0.1) as client,
        pytest.raises(pe_client.APITimeoutError),
    ):
        client.completions.create(model="m", prompt="x")
    assert len(no_sleep) == 1


def test_per_request_timeout_overrides_the_client(fake_server: FakeServer) -> None:
    fake_server.script(Reply(body=completion_json(), delay=0.3))
    with PEClient(base_url=fake_server.base_url, max_retries=0, timeout=0.05) as client:
        assert client.completions.create(model="m", prompt="x", timeout=5.0).choices


async def test_async_retry_after_then_200(fake_server: FakeServer, no_sleep: list[float]) -> None:
    fake_server.script(
        Reply(status=429, body=BUSY, headers={"retry-after-ms": "10"}),
        Reply(body=completion_json("async ok")),
    )
    async with AsyncPEClient(base_url=fake_server.base_url) as client:
        result = await client.completions.create(model="m", prompt="x")
    assert result.choices[0].text == "async ok"
    assert no_sleep == [0.01]


async def test_async_connection_refused(refused_url: str, no_sleep: list[float]) -> None:
    async with AsyncPEClient(base_url=refused_url, max_retries=1) as client:
        with pytest.raises(pe_client.APIConnectionError):
            await client.models.list()
    assert len(no_sleep) == 1


async def test_async_400_not_retried(fake_server: FakeServer, no_sleep: list[float]) -> None:
    fake_server.script(Reply(status=400, body=BUSY))
    async with AsyncPEClient(base_url=fake_server.base_url) as client:
        with pytest.raises(pe_client.BadRequestError):
            await client.completions.create(model="m", prompt="x")
    assert len(fake_server.requests) == 1 and no_sleep == []
