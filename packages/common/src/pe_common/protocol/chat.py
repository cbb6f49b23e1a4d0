"""``POST /v1/chat/completions``: the request (OpenAI fields plus vLLM's extras) and responses."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from pe_common.protocol.chat_message import ChatMessage, ChatMessageBody, ToolCall
from pe_common.protocol.common import ChoicesResponse, GenerateFields, ResponseStruct
from pe_common.protocol.logprobs import ChatCompletionLogprobs, PromptLogprobs


class _ChatFields(GenerateFields, kw_only=True):
    """Every chat field whose wire type is also its decoded type."""

    logprobs: bool = False
    top_logprobs: int | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    # None: "auto" with tools, "none" without (as vLLM)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False

    @property
    def effective_max_tokens(self) -> int | None:
        """``max_completion_tokens`` when given, else the deprecated ``max_tokens``."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens


class ChatCompletionRequest(_ChatFields, kw_only=True):
    """A decoded chat request (see :func:`decode_chat_request`); ``stop`` is a list."""

    messages: list[ChatMessage]
    stop: list[str] | None = None


class ChatCompletionRequestBody(_ChatFields, kw_only=True):
    """The chat body as it arrives; decoding normalises it into :class:`ChatCompletionRequest`."""

    messages: list[ChatMessageBody]
    stop: str | list[str] | None = None


class ChatCompletionMessage(ResponseStruct, kw_only=True):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)


class ChatCompletionChoice(ResponseStruct, kw_only=True):
    index: int
    message: ChatCompletionMessage
    logprobs: ChatCompletionLogprobs | None = None
    finish_reason: str
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None


class ChatCompletionResponse(ChoicesResponse[ChatCompletionChoice], kw_only=True):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatCompletionChoice]
    prompt_token_ids: list[int] | None = None
    prompt_logprobs: PromptLogprobs | None = None


class DeltaFunctionCall(ResponseStruct, omit_defaults=True, kw_only=True):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(ResponseStruct, omit_defaults=True, kw_only=True):
    """A piece of a streamed call, as OpenAI sends them: ``index``, ``id``, ``type`` and the
    name once, then ``arguments`` fragments under the same ``index``."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall | None = None


class DeltaMessage(ResponseStruct, omit_defaults=True, kw_only=True):
    """A stream delta: only the fields that changed (``{}`` on the final chunk)."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatCompletionChunkChoice(ResponseStruct, kw_only=True):
    index: int
    delta: DeltaMessage = msgspec.field(default_factory=DeltaMessage)
    logprobs: ChatCompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None


class ChatCompletionStreamResponse(ChoicesResponse[ChatCompletionChunkChoice], kw_only=True):
    """One ``data:`` event of a chat stream."""

    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    prompt_token_ids: list[int] | None = None
