"""PEClient and AsyncPEClient: the entry points, shaped like ``openai.OpenAI`` / ``AsyncOpenAI``.

Both are thin shells over :class:`~pe_client._base.BaseClient`, which builds every request and
parses every answer; a shell only sends, reads, sleeps between tries, re-uploads stored embeds a
server has lost, and closes.
"""

from __future__ import annotations

import time
from typing import TypeVar

import anyio
import anyio.to_thread
import httpx

from pe_client._base import BaseClient, RequestOptions
from pe_client._closing import AsyncClosing, Closing
from pe_client.errors import NotFoundError
from pe_client.resources.chat import AsyncChat, Chat
from pe_client.resources.completions import AsyncCompletions, Completions
from pe_client.resources.embeds import AsyncEmbeds, Embeds, reupload_options
from pe_client.resources.models import AsyncModels, Models
from pe_client.streaming import AsyncStream, Stream
from pe_common.protocol.embeds import EmbedsObject as WireEmbedsObject

T = TypeVar("T")
ChunkT = TypeVar("ChunkT")


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


async def _async_sleep(seconds: float) -> None:
    await anyio.sleep(seconds)


class PEClient(BaseClient[httpx.Client], Closing):
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

    _http_type = httpx.Client

    def _init_resources(self) -> None:
        self.completions = Completions(self)
        self.chat = Chat(self)
        self.models = Models(self)
        self.embeds = Embeds(self)

    def request(self, options: RequestOptions, cast_to: type[T]) -> T:
        """Send ``options`` and decode the body into ``cast_to``."""
        response = self._send_with_embeds(options)
        try:
            response.read()
        finally:
            response.close()
        return self._parse(response, cast_to)

    def request_stream(self, options: RequestOptions, chunk_type: type[ChunkT]) -> Stream[ChunkT]:
        """Send ``options`` and return the open event stream."""
        return Stream(chunk_type, self._send_with_embeds(options))

    def _send_with_embeds(self, options: RequestOptions) -> httpx.Response:
        """Send; on a 404 for stored embeds this request can upload again, re-upload them all
        (a restarted or different server has lost every one) and send once more."""
        try:
            return self._send(options)
        except NotFoundError as exc:
            if not self._can_reupload(exc, options):
                raise
        for obj in options.reuploadable:
            obj.replace_with(self.request(reupload_options(obj, options), WireEmbedsObject))
        return self._send(options)

    def _send(self, options: RequestOptions) -> httpx.Response:
        request = self._build_request(options, self._encode_body(options))
        num_retries = 0
        while True:
            try:
                response = self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                delay = self._delay_after_transport_error(exc, request, num_retries)
            else:
                if not response.is_error:
                    return response
                response.read()
                response.close()
                delay = self._delay_after_error_status(response, num_retries)
            _sleep(delay)
            num_retries += 1

    def close(self) -> None:
        """Close the HTTP connections (only those of an http_client this client created)."""
        if self._owns_http:
            self._http.close()


class AsyncPEClient(BaseClient[httpx.AsyncClient], AsyncClosing):
    """Asynchronous client for a pe (or vLLM) server; the arguments are :class:`PEClient`'s.

    Request bodies are encoded in a worker thread, so large tensors do not stall the event loop.
    """

    _http_type = httpx.AsyncClient

    def _init_resources(self) -> None:
        self.completions = AsyncCompletions(self)
        self.chat = AsyncChat(self)
        self.models = AsyncModels(self)
        self.embeds = AsyncEmbeds(self)

    async def request(self, options: RequestOptions, cast_to: type[T]) -> T:
        """Send ``options`` and decode the body into ``cast_to``."""
        response = await self._send_with_embeds(options)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return self._parse(response, cast_to)

    async def request_stream(
        self, options: RequestOptions, chunk_type: type[ChunkT]
    ) -> AsyncStream[ChunkT]:
        """Send ``options`` and return the open event stream."""
        return AsyncStream(chunk_type, await self._send_with_embeds(options))

    async def _send_with_embeds(self, options: RequestOptions) -> httpx.Response:
        """:meth:`PEClient._send_with_embeds`, awaiting."""
        try:
            return await self._send(options)
        except NotFoundError as exc:
            if not self._can_reupload(exc, options):
                raise
        for obj in options.reuploadable:
            fresh = await self.request(reupload_options(obj, options), WireEmbedsObject)
            obj.replace_with(fresh)
        return await self._send(options)

    async def _send(self, options: RequestOptions) -> httpx.Response:
        content = None
        if options.has_body:
            content = await anyio.to_thread.run_sync(self._encode_body, options)
        request = self._build_request(options, content)
        num_retries = 0
        while True:
            try:
                response = await self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                delay = self._delay_after_transport_error(exc, request, num_retries)
            else:
                if not response.is_error:
                    return response
                await response.aread()
                await response.aclose()
                delay = self._delay_after_error_status(response, num_retries)
            await _async_sleep(delay)
            num_retries += 1

    async def close(self) -> None:
        """Close the HTTP connections (only those of an http_client this client created)."""
        if self._owns_http:
            await self._http.aclose()
