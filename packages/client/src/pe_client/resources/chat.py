"""``client.chat.completions``: chat messages whose content mixes text and prompt embeddings."""

from __future__ import annotations

from collections.abc import Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, overload

from typing_extensions import Unpack

from pe_client._base import NOT_GIVEN, BodyBuilder, NotGiven, TimeoutTypes
from pe_client.embeds_object import (
    EmbedsObject,
    is_embeds_object,
    is_reference,
    reference_item,
    reuploadable_in,
)
from pe_client.params import (
    ChatCompletionArgs,
    ChatCompletionParams,
    RequestExtras,
    checked_params,
)
from pe_client.resources._resource import (
    APIResource,
    Endpoint,
    ResponseT,
    StreamT,
    coroutine_method,
)
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
    and a bare string a text part. An EmbedsObject becomes ``{"type": "prompt_embeds", "id": ...}``
    and an id part built earlier gets the latest id of a re-uploaded object. Already-encoded parts
    go through unchanged.
    """
    out = []
    for msg in messages:
        if not isinstance(msg, Mapping):
            raise TypeError(f"each message must be a dict, not {type(msg).__name__}")
        copy = dict(msg)
        content = copy.get("content")
        if isinstance(content, (list, tuple)):
            copy["content"] = [_encode_part(part, embeds_format, binary) for part in content]
        elif is_tensor(content) or is_embeds_object(content):
            copy["content"] = [_encode_part(content, embeds_format, binary)]
        out.append(copy)
    return out


def reuploadable_in_messages(messages: Iterable[Mapping[str, Any]]) -> tuple[EmbedsObject, ...]:
    """The reuploadable EmbedsObjects the messages' content parts reference."""
    parts: list[object] = []
    for msg in messages:
        content = msg.get("content") if isinstance(msg, Mapping) else None
        parts.extend(content if isinstance(content, (list, tuple)) else [content])
    return reuploadable_in(parts)


def _encode_part(part: object, embeds_format: EmbedsFormat, binary: bool) -> object:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if is_embeds_object(part):
        return {"type": "prompt_embeds", **reference_item(part)}
    if is_tensor(part):
        part = {"type": "prompt_embeds", "data": part}
    if not isinstance(part, Mapping):
        return part
    if part.get("type") == "prompt_embeds" and is_reference(part):
        return reference_item(part)
    if not is_tensor(part.get("data")):
        return part
    encoded = encode_embeds(part["data"], embeds_format, binary=binary)
    if isinstance(encoded, dict):
        return {**part, **encoded}
    return {**part, "data": encoded}


CHAT_COMPLETIONS = Endpoint(
    "POST", "chat/completions", ChatCompletionResponse, ChatCompletionStreamResponse
)


def chat_body(
    model: str,
    messages: Iterable[Mapping[str, Any]],
    stream: bool,
    params: Mapping[str, object],
    embeds_format: EmbedsFormat,
) -> BodyBuilder:
    """The POST /chat/completions body, built when it is sent (tensors are encoded then)."""
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

    return build


class BaseChatCompletions(APIResource[ResponseT, StreamT]):
    """``client.chat.completions`` for either client, generic in what ``create`` returns."""

    @overload
    def create(
        self, *, stream: Literal[False] = False, **params: Unpack[ChatCompletionArgs]
    ) -> ResponseT: ...
    @overload
    def create(self, *, stream: Literal[True], **params: Unpack[ChatCompletionArgs]) -> StreamT: ...
    @overload
    def create(
        self, *, stream: bool, **params: Unpack[ChatCompletionArgs]
    ) -> ResponseT | StreamT: ...

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
    ) -> ResponseT | StreamT:
        """Create a chat completion.

        Args:
            model: the served model name.
            messages: OpenAI-shaped message dicts (build them with :mod:`pe_client.messages`).
                Content parts may hold tensors directly, ``{"type": "prompt_embeds", "data":
                array}``: they are encoded with the client's ``embeds_format`` and transport.
                An :class:`~pe_client.EmbedsObject` is sent as a reference to the stored
                tensor; one created with ``reupload=True`` is uploaded again if the server has
                lost it (a 404 ``embeds_not_found``), and the request is retried once.
            stream: return a :class:`~pe_client.Stream` of chunks instead of one response.
            extra_headers / extra_body / timeout: per-request additions and overrides.
            **params: see :class:`pe_client.params.ChatCompletionParams`: max_tokens,
                max_completion_tokens, temperature, top_p, top_k, min_p, n, seed, stop,
                logprobs, top_logprobs, penalties, chat_template, chat_template_kwargs, ...
        """
        message_list = list(messages)
        body = chat_body(model, message_list, stream, params, self._client.embeds_format)
        extras = RequestExtras(extra_headers=extra_headers, extra_body=extra_body, timeout=timeout)
        reuploadable = reuploadable_in_messages(message_list)
        return self._call(CHAT_COMPLETIONS, extras, body, stream, reuploadable)


class ChatCompletions(
    BaseChatCompletions[ChatCompletionResponse, Stream[ChatCompletionStreamResponse]]
):
    """``client.chat.completions``."""


class AsyncChatCompletions(
    BaseChatCompletions[
        Coroutine[Any, Any, ChatCompletionResponse],
        Coroutine[Any, Any, AsyncStream[ChatCompletionStreamResponse]],
    ]
):
    """``client.chat.completions`` of :class:`~pe_client.AsyncPEClient`."""

    create = coroutine_method(BaseChatCompletions.create)


class Chat:
    """``client.chat``."""

    def __init__(self, client: PEClient) -> None:
        self.completions = ChatCompletions(client)


class AsyncChat:
    """``client.chat`` of :class:`~pe_client.AsyncPEClient`."""

    def __init__(self, client: AsyncPEClient) -> None:
        self.completions = AsyncChatCompletions(client)
