"""PEClient and AsyncPEClient: the entry points, shaped like ``openai.OpenAI`` / ``AsyncOpenAI``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import httpx

from pe_client._base import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    BaseClient,
    RequestOptions,
    TimeoutTypes,
    Transport,
    connection_error,
)
from pe_client.resources.chat import AsyncChat, Chat
from pe_client.resources.completions import AsyncCompletions, Completions
from pe_client.resources.models import AsyncModels, Models
from pe_client.streaming import AsyncStream, Stream
from pe_client.tensors import EmbedsFormat

T = TypeVar("T")
ChunkT = TypeVar("ChunkT")


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


async def _async_sleep(seconds: float) -> None:
    await anyio.sleep(seconds)


class PEClient(BaseClient):
    """Synchronous client for a pe (or vLLM) server.

    Args:
        base_url: the API root; default ``$PE_BASE_URL``, else ``http://127.0.0.1:8000/v1``.
        api_key: sent as ``Authorization: Bearer``; default ``$PE_API_KEY``, else
            ``$OPENAI_API_KEY``, else no header.
        timeout: seconds (or an :class:`httpx.Timeout`); default 600 s, 5 s to connect.
        max_retries: retries on connection errors, 408, 429 and 5xx, with exponential backoff
            and jitter, honouring ``Retry-After``; other 4xx are never retried.
        default_headers: headers sent with every request.
        transport: ``"json"`` (tensors as base64) or ``"msgpack"`` (tensors as raw bytes, a pe
            extension).
        embeds_format: how tensors are encoded: ``"safetensors"`` (default), ``"torch"``
            (``torch.save``, what vLLM reads; needs PyTorch) or ``"raw"`` (bytes + dtype + shape).
        http_client: an :class:`httpx.Client` to use instead of creating one (left open by
            :meth:`close`).
    """

    completions: Completions
    chat: Chat
    models: Models

    def __init__(
        self,
        *,
        base_url: str | httpx.URL | None = None,
        api_key: str | None = None,
        timeout: TimeoutTypes = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
        transport: Transport = "json",
        embeds_format: EmbedsFormat = "safetensors",
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
            transport=transport,
            embeds_format=embeds_format,
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=timeout)
        self.completions = Completions(self)
        self.chat = Chat(self)
        self.models = Models(self)

    def with_options(self, **overrides: Any) -> PEClient:
        """A copy with some constructor arguments changed, sharing this client's connections."""
        kwargs = {**self._option_kwargs(), "http_client": self._http, **overrides}
        return PEClient(**kwargs)

    def request(self, options: RequestOptions, cast_to: type[T]) -> T:
        """Send ``options`` and decode the body into ``cast_to``."""
        response = self._send(options)
        try:
            response.read()
        finally:
            response.close()
        return self._parse(response, cast_to)

    def request_stream(self, options: RequestOptions, chunk_type: type[ChunkT]) -> Stream[ChunkT]:
        """Send ``options`` and return the open event stream."""
        return Stream(chunk_type, self._send(options))

    def _send(self, options: RequestOptions) -> httpx.Response:
        request = self._build_request(self._http, options, self._encode_body(options))
        num_retries = 0
        while True:
            try:
                response = self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                if num_retries < self.max_retries:
                    _sleep(self._retry_policy.delay(num_retries))
                    num_retries += 1
                    continue
                raise connection_error(exc, request) from exc
            if not response.is_error:
                return response
            response.read()
            response.close()
            if num_retries < self.max_retries and self._should_retry(response):
                _sleep(self._retry_policy.delay(num_retries, response.headers))
                num_retries += 1
                continue
            raise self._status_error(response)

    def close(self) -> None:
        """Close the HTTP connections (only those of an http_client this client created)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> PEClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncPEClient(BaseClient):
    """Asynchronous client for a pe (or vLLM) server; the arguments are :class:`PEClient`'s.

    Request bodies are encoded in a worker thread, so large tensors do not stall the event loop.
    """

    completions: AsyncCompletions
    chat: AsyncChat
    models: AsyncModels

    def __init__(
        self,
        *,
        base_url: str | httpx.URL | None = None,
        api_key: str | None = None,
        timeout: TimeoutTypes = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
        transport: Transport = "json",
        embeds_format: EmbedsFormat = "safetensors",
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
            transport=transport,
            embeds_format=embeds_format,
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=timeout)
        self.completions = AsyncCompletions(self)
        self.chat = AsyncChat(self)
        self.models = AsyncModels(self)

    def with_options(self, **overrides: Any) -> AsyncPEClient:
        """A copy with some constructor arguments changed, sharing this client's connections."""
        kwargs = {**self._option_kwargs(), "http_client": self._http, **overrides}
        return AsyncPEClient(**kwargs)

    async def request(self, options: RequestOptions, cast_to: type[T]) -> T:
        """Send ``options`` and decode the body into ``cast_to``."""
        response = await self._send(options)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return self._parse(response, cast_to)

    async def request_stream(
        self, options: RequestOptions, chunk_type: type[ChunkT]
    ) -> AsyncStream[ChunkT]:
        """Send ``options`` and return the open event stream."""
        return AsyncStream(chunk_type, await self._send(options))

    async def _send(self, options: RequestOptions) -> httpx.Response:
        content = None
        if options.build_body is not None or options.extra_body:
            content = await anyio.to_thread.run_sync(self._encode_body, options)
        request = self._build_request(self._http, options, content)
        num_retries = 0
        while True:
            try:
                response = await self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                if num_retries < self.max_retries:
                    await _async_sleep(self._retry_policy.delay(num_retries))
                    num_retries += 1
                    continue
                raise connection_error(exc, request) from exc
            if not response.is_error:
                return response
            await response.aread()
            await response.aclose()
            if num_retries < self.max_retries and self._should_retry(response):
                await _async_sleep(self._retry_policy.delay(num_retries, response.headers))
                num_retries += 1
                continue
            raise self._status_error(response)

    async def close(self) -> None:
        """Close the HTTP connections (only those of an http_client this client created)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncPEClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
