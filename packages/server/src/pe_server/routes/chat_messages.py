"""Chat messages -> the chat builder's input: text parts as they are, embeds parts as tensors."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pe_common.protocol import ChatMessage, PromptEmbedsPart, TextPart
from pe_server.errors import APIError

if TYPE_CHECKING:
    import torch


@dataclass
class ChatInput:
    """The request's messages with the positions of their embeds parts."""

    raw_messages: list[Any]
    payloads: list[Any]
    texts: list[str]

    def check_reserved_text(self) -> None:
        """With embeds enabled, text may not smuggle in splice markers (the chat builder's
        rule, checked here before anything is decoded)."""
        from pe_engine.inputs.chat import check_reserved_text

        check_reserved_text(*self.texts)

    def messages(self, tensors: list[torch.Tensor]) -> list[dict[str, Any]]:
        """Builder input: every embeds part replaced by its decoded tensor, in order."""
        assert len(tensors) == len(self.payloads)
        remaining = iter(tensors)
        built = []
        for message in self.raw_messages:
            entry: dict[str, Any] = {"role": message.role}
            if getattr(message, "name", None) is not None:
                entry["name"] = message.name
            content = message.content
            if isinstance(content, list):
                content = [part_dict(part, remaining) for part in content]
            entry["content"] = content
            if message.reasoning is not None:  # after the content, as collect_chat_input
                reasoning = message.reasoning
                entry["reasoning"] = (
                    reasoning if isinstance(reasoning, str) else part_dict(reasoning, remaining)
                )
            if message.tool_calls:
                entry["tool_calls"] = [tool_call_dict(call) for call in message.tool_calls]
            if message.tool_call_id is not None:
                entry["tool_call_id"] = message.tool_call_id
            built.append(entry)
        return built


def tool_call_dict(call: Any) -> dict[str, Any]:
    """An earlier call as chat templates expect it: ``arguments`` a dict (the wire's JSON
    string parsed; left a string when it is not JSON), as vLLM and transformers do."""
    arguments: Any = call.function.arguments
    with contextlib.suppress(ValueError):
        arguments = json.loads(arguments)
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.function.name, "arguments": arguments},
    }


def part_dict(part: Any, tensors: Any) -> dict[str, Any]:
    if isinstance(part, PromptEmbedsPart):
        return {"type": "prompt_embeds", "data": next(tensors)}
    return {"type": "text", "text": part.text}


def collect_chat_input(messages: list[ChatMessage]) -> ChatInput:
    """Gathers the embeds payloads (in message order: content, then reasoning) and the texts
    of the messages."""
    payloads: list[Any] = []
    texts: list[str] = []
    for message in messages:
        calls = [
            text
            for c in message.tool_calls or []
            for text in (c.function.name, c.function.arguments)
        ]
        for part in [*message_parts(message), message.reasoning, *calls]:
            if isinstance(part, PromptEmbedsPart):
                payloads.append(part.payload)
            elif isinstance(part, TextPart):
                texts.append(part.text)
            elif isinstance(part, str):
                texts.append(part)
    return ChatInput(list(messages), payloads, texts)


def message_parts(message: ChatMessage) -> list[Any]:
    """The content as a list: a string as itself, parts as they are, none as nothing."""
    content = message.content
    if isinstance(content, str):
        return [content]
    if content is not None and not content:
        raise APIError.bad_request(
            "Message content may not be an empty list of parts.",
            code="empty_prompt",
            param="messages",
        )
    return list(content or [])
