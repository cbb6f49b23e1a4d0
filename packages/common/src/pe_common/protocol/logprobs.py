"""Log-probability shapes: the completions format, the chat format and vLLM's prompt logprobs."""

from __future__ import annotations

import msgspec

from pe_common.protocol.common import ResponseStruct


class CompletionLogprobs(ResponseStruct, kw_only=True):
    """Completions ``logprobs``: parallel lists, one entry per generated token."""

    text_offset: list[int] = msgspec.field(default_factory=list)
    token_logprobs: list[float | None] = msgspec.field(default_factory=list)
    tokens: list[str] = msgspec.field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = msgspec.field(default_factory=list)


class TopLogprob(ResponseStruct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatCompletionTokenLogprob(ResponseStruct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = msgspec.field(default_factory=list)


class ChatCompletionLogprobs(ResponseStruct, kw_only=True):
    """Chat ``logprobs``: one entry per generated token with its top alternatives."""

    content: list[ChatCompletionTokenLogprob] | None = None


class PromptLogprob(ResponseStruct, kw_only=True):
    """One candidate in vLLM's ``prompt_logprobs`` (keyed by token id)."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# vLLM's prompt_logprobs: one entry per prompt position, None where there is none
# (the first position, and embed positions in pe).
PromptLogprobs = list[dict[int, PromptLogprob] | None]
