"""``client.completions``: text, token-id and prompt-embeddings completions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal, Union, overload

from typing_extensions import Unpack

from pe_client._base import NOT_GIVEN, BodyBuilder, NotGiven, RequestOptions, TimeoutTypes
from pe_client.params import CompletionParams, checked_params
from pe_client.streaming import AsyncStream, Stream
from pe_client.tensors import EmbedsFormat, encode_embeds_list
from pe_common.protocol import CompletionResponse, CompletionStreamResponse

if TYPE_CHECKING:
    from pe_client.client import AsyncPEClient, PEClient

PromptInput = Union[str, list[str], list[int], list[list[int]]]


def completion_request(
    *,
    model: str,
    prompt: PromptInput | None,
    prompt_embeds: object | None,
    stream: bool,
    embeds_format: EmbedsFormat,
    params: Mapping[str, object],
    extra_headers: Mapping[str, str] | None,
    extra_body: Mapping[str, object] | None,
    timeout: TimeoutTypes | NotGiven,
) -> RequestOptions:
    """The POST /completions call; tensors are encoded when the body is built."""
    fields = checked_params(params, CompletionParams, "completions")

    def build(binary: bool) -> dict[str, object]:
        body: dict[str, object] = {"model": model}
        if prompt is not None:
            body["prompt"] = prompt
        if prompt_embeds is not None:
            body["prompt_embeds"] = encode_embeds_list(prompt_embeds, embeds_format, binary=binary)
        if stream:
            body["stream"] = True
        body.update(fields)
        return body

    builder: BodyBuilder = build
    return RequestOptions(
        method="POST",
        path="completions",
        build_body=builder,
        stream=stream,
        extra_headers=extra_headers,
        extra_body=extra_body,
        timeout=timeout,
    )


class Completions:
    """``client.completions``."""

    def __init__(self, client: PEClient) -> None:
        self._client = client

    @overload
    def create(
        self,
        *,
        model: str,
        prompt: PromptInput | None = None,
        prompt_embeds: object | None = None,
        stream: Literal[False] = False,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, object] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **params: Unpack[CompletionParams],
    ) -> CompletionResponse: ...

    @overload
    def create(
        self,
        *,
        model: str,
        prompt: PromptInput | None = None,
        prompt_embeds: object | None = None,
        stream: Literal[True],
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, object] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **params: Unpack[CompletionParams],
    ) -> Stream[CompletionStreamResponse]: ...

    @overload
    def create(
        self,
        *,
        model: str,
        prompt: PromptInput | None = None,
        prompt_embeds: object | None = None,
        stream: bool,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, object] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **params: Unpack[CompletionParams],
    ) -> CompletionResponse | Stream[CompletionStreamResponse]: ...

    def create(
        self,
        *,
        model: str,
        prompt: PromptInput | None = None,
        prompt_embeds: object | None = None,
        stream: bool = False,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, object] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **params: Unpack[CompletionParams],
    ) -> CompletionResponse | Stream[CompletionStreamResponse]:
        """Create a completion from text, token ids and/or prompt embeddings.

        Args:
            model: the served model name.
            prompt: text, a list of texts, token ids, or a list of token-id lists.
            prompt_embeds: one ``(num_tokens, hidden_size)`` tensor (numpy array, torch.Tensor,
                :class:`~pe_client.RawTensor`, or an already-encoded payload) or a list of them,
                one prompt each. Embeds prompts come first in ``choices``, then text prompts.
            stream: return a :class:`~pe_client.Stream` of chunks instead of one response.
            extra_headers / extra_body / timeout: per-request additions and overrides.
            **params: sampling and output fields (see :class:`pe_client.params.CompletionParams`):
                max_tokens, temperature, top_p, top_k, min_p, n, seed, stop, stop_token_ids,
                presence/frequency/repetition penalties, logprobs, min_tokens, ignore_eos, echo,
                suffix, stream_options, return_token_ids, prompt_logprobs, ...
        """
        options = completion_request(
            model=model,
            prompt=prompt,
            prompt_embeds=prompt_embeds,
            stream=stream,
            embeds_format=self._client.embeds_format,
            params=params,
            extra_headers=extra_headers,
            extra_body=extra_body,
            timeout=timeout,
        )
        if stream:
            return self._client.request_stream(options, CompletionStreamResponse)
        return self._client.request(options, CompletionResponse)


class AsyncCompletions:
    """``client.completions`` of :class:`~pe_client.AsyncPEClient`."""

    def __init__(self, client: AsyncPEClient) -> None:
        self._client = client

    @overload
    async def create(
        self,
        *,
        model: str,
        prompt: PromptInput | None = None,
        prompt_embeds: object | None = None,
        stream: Literal[False] = False,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, object] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **params: Unpack[CompletionParams],
    ) -> CompletionResponse: ...

    @overload
    async def create(
        self,
        *,
        model: str,
        prompt: PromptInput | None = None,
        prompt_embeds: object | None = None,
        stream: Literal[True],
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, object] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **params: Unpack[CompletionParams],
    ) -> AsyncStream[CompletionStreamResponse]: ...

    @overload
    async def create(
        self,
        *,
        model: str,
        prompt: PromptInput | None = None,
        prompt_embeds: object | None = None,
        stream: bool,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, object] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **params: Unpack[CompletionParams],
    ) -> CompletionResponse | AsyncStream[CompletionStreamResponse]: ...

    async def create(
        self,
        *,
        model: str,
        prompt: PromptInput | None = None,
        prompt_embeds: object | None = None,
        stream: bool = False,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, object] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **params: Unpack[CompletionParams],
    ) -> CompletionResponse | AsyncStream[CompletionStreamResponse]:
        """Create a completion; the arguments are :meth:`Completions.create`'s."""
        options = completion_request(
            model=model,
            prompt=prompt,
            prompt_embeds=prompt_embeds,
            stream=stream,
            embeds_format=self._client.embeds_format,
            params=params,
            extra_headers=extra_headers,
            extra_body=extra_body,
            timeout=timeout,
        )
        if stream:
            return await self._client.request_stream(options, CompletionStreamResponse)
        return await self._client.request(options, CompletionResponse)
