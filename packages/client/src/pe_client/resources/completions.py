"""``client.completions``: text, token-id and prompt-embeddings completions."""

from __future__ import annotations

from collections.abc import Coroutine, Mapping
from typing import Any, Literal, overload

from typing_extensions import Unpack

from pe_client._base import NOT_GIVEN, BodyBuilder, NotGiven, TimeoutTypes
from pe_client.embeds_object import EmbedsObject, reuploadable_in
from pe_client.params import (
    CompletionArgs,
    CompletionParams,
    PromptInput,
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
from pe_client.tensors import EmbedsFormat, encode_embeds_list
from pe_common.protocol import CompletionResponse, CompletionStreamResponse

COMPLETIONS = Endpoint("POST", "completions", CompletionResponse, CompletionStreamResponse)


def completion_body(
    model: str,
    prompt: PromptInput | None,
    prompt_embeds: object | None,
    stream: bool,
    params: Mapping[str, object],
    embeds_format: EmbedsFormat,
) -> BodyBuilder:
    """The POST /completions body, built when it is sent (tensors are encoded then)."""
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

    return build


def reuploadable_embeds(prompt_embeds: object | None) -> tuple[EmbedsObject, ...]:
    """The reuploadable EmbedsObjects a ``prompt_embeds`` value (one item or a list) holds."""
    if isinstance(prompt_embeds, (list, tuple)):
        return reuploadable_in(prompt_embeds)
    return reuploadable_in([prompt_embeds])


class BaseCompletions(APIResource[ResponseT, StreamT]):
    """``client.completions`` for either client, generic in what ``create`` returns."""

    @overload
    def create(
        self, *, stream: Literal[False] = False, **params: Unpack[CompletionArgs]
    ) -> ResponseT: ...
    @overload
    def create(self, *, stream: Literal[True], **params: Unpack[CompletionArgs]) -> StreamT: ...
    @overload
    def create(self, *, stream: bool, **params: Unpack[CompletionArgs]) -> ResponseT | StreamT: ...

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
    ) -> ResponseT | StreamT:
        """Create a completion from text, token ids and/or prompt embeddings.

        Args:
            model: the served model name.
            prompt: text, a list of texts, token ids, or a list of token-id lists.
            prompt_embeds: one ``(num_tokens, hidden_size)`` tensor (numpy array, torch.Tensor,
                :class:`~pe_client.RawTensor`, or an already-encoded payload) or a list of them,
                one prompt each. Embeds prompts come first in ``choices``, then text prompts.
                An :class:`~pe_client.EmbedsObject` (from ``client.embeds.create``) is sent as a
                reference ``{"id": ...}`` and mixes with tensors in a list; one created with
                ``reupload=True`` is uploaded again if the server has lost it (a 404
                ``embeds_not_found``), and the request is retried once.
            stream: return a :class:`~pe_client.Stream` of chunks instead of one response.
            extra_headers / extra_body / timeout: per-request additions and overrides.
            **params: sampling and output fields (see :class:`pe_client.params.CompletionParams`):
                max_tokens, temperature, top_p, top_k, min_p, n, seed, stop, stop_token_ids,
                presence/frequency/repetition penalties, logprobs, min_tokens, ignore_eos, echo,
                suffix, stream_options, return_token_ids, prompt_logprobs, ...
        """
        body = completion_body(
            model, prompt, prompt_embeds, stream, params, self._client.embeds_format
        )
        extras = RequestExtras(extra_headers=extra_headers, extra_body=extra_body, timeout=timeout)
        reuploadable = reuploadable_embeds(prompt_embeds)
        return self._call(COMPLETIONS, extras, body, stream, reuploadable)


class Completions(BaseCompletions[CompletionResponse, Stream[CompletionStreamResponse]]):
    """``client.completions``."""


class AsyncCompletions(
    BaseCompletions[
        Coroutine[Any, Any, CompletionResponse],
        Coroutine[Any, Any, AsyncStream[CompletionStreamResponse]],
    ]
):
    """``client.completions`` of :class:`~pe_client.AsyncPEClient`."""

    create = coroutine_method(BaseCompletions.create)
