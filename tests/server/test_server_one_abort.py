"""One abort per request on every early exit (issue 19): the app in process on the native
backend with a tiny model, wrapped to count the server's ``abort`` calls and the aborts that
reach the engine thread (``LLMEngine.abort_request``)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from pe_server.app import create_app
from pe_server.backends.native import NativeBackend
from pe_server.config import ServerConfig

MODEL = "tiny"


class CountingBackend:
    """The native backend, counting aborts; ``fail_after`` deltas it raises (a backend error
    after the request started)."""

    def __init__(self, inner: NativeBackend) -> None:
        self.inner = inner
        self.aborts: Counter[str] = Counter()
        self.engine_aborts: Counter[str] = Counter()
        self.fail_after: int | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def is_healthy(self) -> bool:
        return self.inner.is_healthy

    async def start(self) -> None:
        await self.inner.start()
        engine = self.inner.engine.engine  # the LLMEngine on the engine thread
        abort_request = engine.abort_request

        def counted(request_id: str) -> Any:
            self.engine_aborts[request_id] += 1
            return abort_request(request_id)

        engine.abort_request = counted

    async def generate(self, prompt: Any, params: Any, request_id: str) -> AsyncIterator[Any]:
        num_outputs = 0
        async for output in self.inner.generate(prompt, params, request_id):
            if self.fail_after is not None and num_outputs >= self.fail_after:
                raise RuntimeError("backend failed mid-request")
            num_outputs += 1
            yield output

    async def abort(self, request_id: str) -> None:
        self.aborts[request_id] += 1
        await self.inner.abort(request_id)


@pytest.fixture
async def served(tiny_llama_dir: Path) -> AsyncIterator[tuple[TestClient, CountingBackend]]:
    config = ServerConfig(
        model=str(tiny_llama_dir),
        served_model_name=(MODEL,),
        dtype="float32",
        kv_cache_memory=64 * 2**20,
    )
    backend = CountingBackend(NativeBackend(config))
    app = create_app(config, backend=backend)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        yield client, backend


def long_request(stream: bool) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "Hello there", "max_tokens": 200, "ignore_eos": True,
            "stream": stream}  # fmt: skip


async def wait_idle(backend: CountingBackend) -> None:
    for _ in range(200):
        if backend.inner.stats().num_running == 0 and sum(backend.engine_aborts.values()):
            return
        await asyncio.sleep(0.02)


async def test_client_disconnect_aborts_once(
    served: tuple[TestClient, CountingBackend],
) -> None:
    client, backend = served
    response = await client.post("/v1/completions", json=long_request(stream=True))
    assert response.status == 200
    first = await response.content.readline()
    assert first.startswith(b"data: ")
    response.close()  # the client leaves mid-stream
    await wait_idle(backend)
    await asyncio.sleep(0.2)  # a second abort, if any, has time to arrive
    assert len(backend.aborts) == 1
    assert list(backend.aborts.values()) == [1]
    assert list(backend.engine_aborts.values()) == [1]


@pytest.mark.parametrize("stream", [True, False])
async def test_error_after_start_aborts_once(
    served: tuple[TestClient, CountingBackend], stream: bool
) -> None:
    client, backend = served
    backend.fail_after = 2
    response = await client.post("/v1/completions", json=long_request(stream=stream))
    if stream:
        assert response.status == 200
        events = [line for line in (await response.read()).split(b"\n") if line]
        assert events[-1] == b"data: [DONE]"
        error = json.loads(events[-2].removeprefix(b"data: "))["error"]
    else:
        assert response.status == 500
        error = (await response.json())["error"]
    assert error["code"] == "engine_error"
    await wait_idle(backend)
    await asyncio.sleep(0.2)
    assert list(backend.aborts.values()) == [1]
    assert list(backend.engine_aborts.values()) == [1]
