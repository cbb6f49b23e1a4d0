"""``POST /tokenize`` and ``POST /detokenize`` (vLLM's shapes)."""

from __future__ import annotations

from typing import Any

from pe_common.protocol.chat_message import ChatMessage, ChatMessageBody
from pe_common.protocol.common import RequestStruct, ResponseStruct


class _TokenizeFields(RequestStruct, kw_only=True):
    model: str | None = None
    prompt: str | None = None
    # None: True for ``prompt`` and False for ``messages`` (vLLM's defaults)
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool = False

    @property
    def effective_add_special_tokens(self) -> bool:
        if self.add_special_tokens is not None:
            return self.add_special_tokens
        return self.prompt is not None


class TokenizeRequest(_TokenizeFields, kw_only=True):
    """Tokenize a ``prompt`` text or chat ``messages`` (exactly one of them)."""

    messages: list[ChatMessage] | None = None


class TokenizeRequestBody(_TokenizeFields, kw_only=True):
    """The tokenize body as it arrives; decoding normalises it into :class:`TokenizeRequest`."""

    messages: list[ChatMessageBody] | None = None


class TokenizeResponse(ResponseStruct, kw_only=True):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(RequestStruct, kw_only=True):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(ResponseStruct, kw_only=True):
    prompt: str
