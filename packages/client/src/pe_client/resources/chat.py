"""``client.chat.completions``: chat messages whose content mixes text and prompt embeddings."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, overload

from typing_extensions import Unpack

from pe_client._base import NOT_GIVEN, NotGiven, RequestOptions, TimeoutTypes
from pe_client.params import ChatCompletionParams, checked_params
from pe_client.streaming import AsyncStream, Stream
from pe_client.tensors import EmbedsFormat, encode_embeds, is_tensor
from pe_common.protocol import ChatCompletionResponse, ChatCompletionStreamResponse

if TYPE_CHECKING:
    from pe_client.client import AsyncPEClient, PEClient


def encode_messages(
    messages: Iterable[Mapping[str, Any]], embeds_format: EmbedsFormat, *, binary: bool
) -> list[dict[str, Any]]:
    """Copies of ``messages`` with every tensor in a content part encoded.

    A part ``{"type": "prompt_embeds", "data": tensor}`` gets its ``data`` encoded (a raw-format
    tensor also adds ``dtype`` / ``shape``); a bare tensor in a content list becomes such a part
    and a bare string a text part. Already-encoded parts go through unchanged.
    """
    out = []
    for msg in messages:
        if not isinstance(msg, Mapping):
            raise TypeError(f"each message must be a dict, not {type(msg).__name__}")
        copy = dict(msg)
        content = copy.get("content")
        if isinstance(content, (list, tuple)):
            copy["content"] = [_encode_part(part, embeds_format, binary) for part in content]
        elif is_tensor(content):
            copy["content"] = [_encode_part(content, embeds_format, binary)]
        out.append(copy)
    return out


def _encode_part(part: object, embeds_format: EmbedsFormat, binary: bool) -> object:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if is_tensor(part):
        part = {"type": "prompt_embeds", "data": part}
    if not isinstance(part, Mapping) or not is_tensor(part.get("data")):
        return part
    encoded = encode_embeds(part["data"], embeds_format, binary=binary)
    if isinstance(encoded, dict):
        return {**part, **encoded}
    return {**part, "data": encoded}


def chat_request(
    *,
    model: str,
    messages: Iterable[Mapping[str, Any]],
    stream: bool,
    embeds_format: EmbedsFormat,
    params: Mapping[str, object],
    extra_headers: Mapping[str, str] | None,
    extra_body: Mapping[str, object] | None,
    timeout: TimeoutTypes | NotGiven,
) -> RequestOptions:
    """The POST /chat/completions call; tensors are encoded when the body is built."""
    fields = checked_params(params, ChatCompletionParams, "chat.completions")
    message_list = list(messages)

    def build(binary: bool) -> dict[str, object]:
        body: dict[str, object] = {
            "model": model,
            "messages": encode_messages(message_list, embeds_format, binary=binary),
        }
        if stream:
            body["stream"] = True
        body.update(fields)
        return body

    return RequestOptions(
        method="POST",
        path="chat/completions",
        build_body=build,
        stream=stream,
        extra_headers=extra_headers,
        extra_body=extra_body,
        timeout=timeout,
    )


class ChatCompletions:
    """``client.chat.completions``."""

    def __init__(self, client: PEClient) -> None:
        self._client = client

    @overload
    def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: Literal[False] = False,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, object] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **params: Unpack[ChatCompletionParams],
    ) -> ChatCompletionResponse: ...

    @overload
    def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: Literal[True],
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, object] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **params: Unpack[ChatCompletionParams],
    ) -> Stream[ChatCompletionStreamResponse]: ...

    @overload
    def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: bool,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, object] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **params: Unpack[ChatCompletionParams],
    ) -> ChatCompletionResponse | Stream[ChatCompletionStreamResponse]: ...

    def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: bool = False,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, object] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **params: Unpack[ChatCompletionParams],
    ) -> ChatCompletionResponse | Stream[ChatCompletionStreamResponse]:
        """Create a chat completion.

        Args:
            model: the served model name.
            messages: OpenAI-shaped message dicts (build them with :mod:`pe_client.messages`).
                Content parts may hold tensors directly, ``{"type": "prompt_embeds", "data":
                array}``: they are encoded with the client's ``embeds_format`` and transport.
            stream: return a :class:`~pe_client.Stream` of chunks instead of one response.
            extra_headers / extra_body / timeout: per-request additions and overrides.
            **params: see :class:`pe_client.params.ChatCompletionParams`: max_tokens,
                max_completion_tokens, temperature, top_p, top_k, min_p, n, seed, stop,
                logprobs, top_logprobs, penalties, chat_template, chat_template_kwargs, ...
        """
        options = chat_request(
            model=model,
            messages=messages,
            stream=stream,
            embeds_format=self._client.embeds_format,
            params=params,
            extra_headers=extra_headers,
            extra_body=extra_body,
            timeout=timeout,
        )
        if stream:
            return self._client.request_stream(options, ChatCompletionStreamResponse)
        return self._client.request(options, ChatCompletionResponse)


class AsyncChatCompletions:
    """``client.chat.completions`` of :class:`~pe_client.AsyncPEClient`."""

    def __init__(self, client: AsyncPEClient) -> None:
        self._client = client

    @overload
    async def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: Literal[False] = False,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, object] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **params: Unpack[ChatCompletionParams],
    ) -> ChatCompletionResponse: ...

    @overload
    async def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: Literal[True],
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, object] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **params: Unpack[ChatCompletionParams],
    ) -> AsyncStream[ChatCompletionStreamResponse]: ...

    @overload
    async def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: bool,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, object] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **params: Unpack[ChatCompletionParams],
    ) -> ChatCompletionResponse | AsyncStream[ChatCompletionStreamResponse]: ...

    async def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: bool = False,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, object] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **params: Unpack[ChatCompletionParams],
    ) -> ChatCompletionResponse | AsyncStream[ChatCompletionStreamResponse]:
        """Create a chat completion; the arguments are :meth:`ChatCompletions.create`'s."""
        options = chat_request(
            model=model,
            messages=messages,
            stream=stream,
            embeds_format=self._client.embeds_format,
            params=params,
            extra_headers=extra_headers,
            extra_body=extra_body,
            timeout=timeout,
        )
        if stream:
            return await self._client.request_stream(options, ChatCompletionStreamResponse)
        return await self._client.request(options, ChatCompletionResponse)


class Chat:
    """``client.chat``."""

    def __init__(self, client: PEClient) -> None:
        self.completions = ChatCompletions(client)


class AsyncChat:
    """``client.chat`` of :class:`~pe_client.AsyncPEClient`."""

    def __init__(self, client: AsyncPEClient) -> None:
        self.completions = AsyncChatCompletions(client)
