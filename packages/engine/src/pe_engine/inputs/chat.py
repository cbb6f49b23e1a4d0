"""Chat prompts with ``prompt_embeds`` content parts (vLLM's sentinel-token approach).

Each embeds part becomes a unique marker text; one render pass finds which markers the
template kept and in what order; the markers then become one special sentinel token each
(in a copy of the tokenizer), and each sentinel expands to as many placeholder positions as
its tensor has rows.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Literal

import torch

from pe_common.errors import InvalidRequestError, PEValidationError
from pe_engine.core.row_keys import prompt_row_keys
from pe_engine.inputs.chat_render import (
    PROMPT_EMBEDS_TOKEN,
    RENDERER_ARGS,
    ChatRenderPool,
    render_chat,
    with_sentinel,
)
from pe_engine.inputs.prompt_builder import PLACEHOLDER_TOKEN_ID, embeds_disabled_error
from pe_engine.prompt import Prompt

MARKER_PREFIX = PROMPT_EMBEDS_TOKEN + "__pe_embed_"
_MARKER_RE = re.compile(re.escape(MARKER_PREFIX) + r"(\d+)__")

ContentFormat = Literal["string", "openai"]
REASONING_KEYS = ("reasoning", "reasoning_content")


def check_reserved_text(*texts: str) -> None:
    """Text may not smuggle in the sentinel that marks embeds splice positions (vLLM's rule
    and wording; checked only where prompt embeds are enabled)."""
    if any(PROMPT_EMBEDS_TOKEN in text for text in texts):
        raise InvalidRequestError(
            f"Text content may not contain the reserved placeholder '{PROMPT_EMBEDS_TOKEN}'. "
            "This placeholder is used internally to mark `prompt_embeds` splice positions in "
            "the tokenized prompt.",
            code="reserved_placeholder",
            param="messages",
        )


def make_marker(index: int) -> str:
    return f"{MARKER_PREFIX}{index}__"


class ChatPromptBuilder:
    """Renders OpenAI-style messages, whose content may hold ``prompt_embeds`` parts, to a Prompt.

    Content parts: ``{"type": "text", "text": str}`` and ``{"type": "prompt_embeds", "data":
    tensor}`` where the tensor is already decoded and validated (2-D, model dtype and width).
    """

    def __init__(self, tokenizer: Any, *, enable_prompt_embeds: bool = True) -> None:
        self.tokenizer = tokenizer
        self.enable_prompt_embeds = enable_prompt_embeds
        self._embeds_tokenizer: Any = None
        self._sentinel_id = -1

    def build(
        self,
        messages: list[dict[str, Any]],
        *,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
        content_format: ContentFormat | Literal["auto"] = "auto",
        renderer: ChatRenderPool | None = None,
    ) -> Prompt:
        """Apply the chat template and return the prompt (compact embeds, mask, placeholder 0).

        ``renderer``: a pool of render processes, each render within a time and memory budget
        (the server's); without one the template runs in this thread (the offline ``LLM``,
        whose caller is the one who chose the template).
        """
        _check_template_kwargs(chat_template_kwargs)
        if content_format == "auto":
            content_format = detect_content_format(self._template_source(chat_template))
        conversation, tensors = self._parse_messages(messages, content_format)
        options: dict[str, Any] = {
            "chat_template": chat_template,
            "add_generation_prompt": add_generation_prompt and not continue_final_message,
            "continue_final_message": continue_final_message,
            "tools": tools,
        }
        embeds = bool(tensors)
        if renderer is not None:
            text = renderer.render(conversation, options, chat_template_kwargs, embeds=embeds)
        else:
            tokenizer = self.embeds_tokenizer() if embeds else self.tokenizer
            text = render_chat(tokenizer, conversation, options, chat_template_kwargs)
        if not embeds:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            return Prompt(token_ids=list(ids), prompt_embeds=None, is_token_ids=None, text=text)
        tokenizer = self.embeds_tokenizer()
        text, kept = _keep_rendered_markers(text, tensors)
        ids = tokenizer.encode(text, add_special_tokens=False)
        return self._expand_sentinels(list(ids), kept, text)

    def embeds_tokenizer(self) -> Any:
        """A copy of the tokenizer with the ``<prompt_embeds>`` sentinel as a special token."""
        if self._embeds_tokenizer is None:
            self._embeds_tokenizer, self._sentinel_id = with_sentinel(self.tokenizer)
        return self._embeds_tokenizer

    def _template_source(self, chat_template: str | None) -> str:
        source = chat_template or getattr(self.tokenizer, "chat_template", None) or ""
        return source if isinstance(source, str) else ""

    def _parse_messages(
        self, messages: list[dict[str, Any]], content_format: ContentFormat
    ) -> tuple[list[dict[str, Any]], list[torch.Tensor]]:
        if not isinstance(messages, list) or not messages:
            raise InvalidRequestError(
                "messages must be a non-empty list.", code="invalid_messages", param="messages"
            )
        tensors: list[torch.Tensor] = []
        conversation = []
        for message in messages:
            if not isinstance(message, dict):
                raise InvalidRequestError(
                    "Each message must be an object.", code="invalid_messages", param="messages"
                )
            parsed = {k: v for k, v in message.items() if k not in REASONING_KEYS}
            parsed["content"] = self._parse_content(message.get("content"), content_format, tensors)
            reasoning = _reasoning_of(message)
            if reasoning is not None:
                # vLLM hands templates the text under both names; one marker, at most one span.
                text = self._parse_reasoning(reasoning, tensors)
                parsed["reasoning"] = parsed["reasoning_content"] = text
            conversation.append(parsed)
        return conversation, tensors

    def _parse_reasoning(self, reasoning: Any, tensors: list[torch.Tensor]) -> str:
        if isinstance(reasoning, str):
            self._check_reserved(reasoning)
            return reasoning
        if isinstance(reasoning, dict) and reasoning.get("type") == "prompt_embeds":
            return self._parse_part(reasoning, tensors)
        raise InvalidRequestError(
            "An assistant message's reasoning must be a string or one prompt_embeds part.",
            code="invalid_content",
            param="messages",
        )

    def _parse_content(
        self, content: Any, content_format: ContentFormat, tensors: list[torch.Tensor]
    ) -> Any:
        if content is None:
            return None
        if isinstance(content, str):
            self._check_reserved(content)
            return content
        if not isinstance(content, list):
            raise InvalidRequestError(
                "Message content must be a string or a list of content parts.",
                code="invalid_content",
                param="messages",
            )
        texts = [self._parse_part(part, tensors) for part in content]
        if content_format == "string":
            return "\n".join(texts)
        return [{"type": "text", "text": t} for t in texts]

    def _parse_part(self, part: Any, tensors: list[torch.Tensor]) -> str:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            text: str = part["text"]
            self._check_reserved(text)
            return text
        if kind == "prompt_embeds":
            if not self.enable_prompt_embeds:
                raise embeds_disabled_error(period=False)
            tensors.append(_check_part_tensor(part.get("data")))
            return make_marker(len(tensors) - 1)
        raise InvalidRequestError(
            f"Unsupported content part type {str(kind)[:40]!r}: expected 'text' or "
            "'prompt_embeds'.",
            code="unsupported_content_part",
            param="messages",
        )

    def _check_reserved(self, text: str) -> None:
        # Only a server that splices embeds reserves the sentinel (as vLLM): without the flag the
        # text is rendered with the plain tokenizer and the string is ordinary text.
        if self.enable_prompt_embeds:
            check_reserved_text(text)

    def _expand_sentinels(self, ids: list[int], tensors: list[torch.Tensor], text: str) -> Prompt:
        positions = [i for i, t in enumerate(ids) if t == self._sentinel_id]
        if len(positions) != len(tensors):
            raise PEValidationError(
                f"Expected {len(tensors)} prompt_embeds placeholder spans in the rendered chat, "
                f"found {len(positions)}.",
                code="invalid_chat_template",
                param="messages",
            )
        if not tensors:  # the template dropped every part
            return Prompt(token_ids=ids, prompt_embeds=None, is_token_ids=None, text=text)
        token_ids: list[int] = []
        is_token_ids: list[bool] = []
        start = 0
        for pos, tensor in zip(positions, tensors, strict=True):
            token_ids += ids[start:pos] + [PLACEHOLDER_TOKEN_ID] * tensor.shape[0]
            is_token_ids += [True] * (pos - start) + [False] * tensor.shape[0]
            start = pos + 1
        token_ids += ids[start:]
        is_token_ids += [True] * (len(ids) - start)
        embeds = torch.cat(tensors) if len(tensors) > 1 else tensors[0]
        return Prompt(
            token_ids=token_ids,
            prompt_embeds=embeds,
            is_token_ids=is_token_ids,
            text=text,
            embeds_row_keys=prompt_row_keys(tensors),
        )


def _reasoning_of(message: dict[str, Any]) -> Any:
    """An assistant's ``reasoning`` (else legacy ``reasoning_content``); vLLM reads no other
    role's."""
    if message.get("role") != "assistant":
        return None
    reasoning = message.get("reasoning")
    return message.get("reasoning_content") if reasoning is None else reasoning


def _check_template_kwargs(kwargs: dict[str, Any] | None) -> None:
    if kwargs is None:
        return
    if not isinstance(kwargs, dict):
        raise InvalidRequestError(
            "chat_template_kwargs must be an object.",
            code="invalid_parameter",
            param="chat_template_kwargs",
        )
    reserved = sorted(set(kwargs) & RENDERER_ARGS)
    if reserved:
        raise InvalidRequestError(
            f"chat_template_kwargs may not set the renderer's own argument {reserved[0]!r}; "
            "use the request field of that name.",
            code="invalid_parameter",
            param=f"chat_template_kwargs.{reserved[0]}",
        )


def _check_part_tensor(data: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor) or data.dim() != 2 or data.shape[0] < 1:
        raise PEValidationError(
            "prompt_embeds content part requires a decoded 2-D (num_tokens, hidden_size) tensor "
            "in `data`.",
            code="invalid_shape",
            param="prompt_embeds",
        )
    return data


def _keep_rendered_markers(
    text: str, tensors: list[torch.Tensor]
) -> tuple[str, list[torch.Tensor]]:
    """Tensors in the order the template rendered their markers; dropped markers drop theirs."""
    order = [int(m.group(1)) for m in _MARKER_RE.finditer(text)]
    if len(set(order)) != len(order):
        raise PEValidationError(
            "The chat template rendered a prompt_embeds part more than once; each placeholder "
            "must appear at most once.",
            code="invalid_chat_template",
            param="messages",
        )
    if any(i >= len(tensors) for i in order):
        raise PEValidationError(
            "The chat template produced an unknown prompt_embeds placeholder.",
            code="invalid_chat_template",
            param="messages",
        )
    return _MARKER_RE.sub(PROMPT_EMBEDS_TOKEN, text), [tensors[i] for i in order]


@functools.lru_cache(maxsize=32)
def detect_content_format(chat_template: str) -> ContentFormat:
    """ "openai" when the template loops over a message's content parts, else "string"."""
    import jinja2
    from jinja2 import nodes

    try:
        ast = jinja2.Environment().parse(chat_template)
    except (jinja2.TemplateSyntaxError, RecursionError):
        return "string"
    content_vars = {
        node.target.name
        for node in ast.find_all(nodes.Assign)
        if isinstance(node.target, nodes.Name) and _is_content_access(node.node)
    }
    for loop in ast.find_all(nodes.For):
        target = _unwrap_filters(loop.iter)
        if _is_content_access(target):
            return "openai"
        if isinstance(target, nodes.Name) and target.name in content_vars:
            return "openai"
    return "string"


def _unwrap_filters(node: Any) -> Any:
    from jinja2 import nodes

    while isinstance(node, nodes.Filter) and node.node is not None:
        node = node.node
    return node


def _is_content_access(node: Any) -> bool:
    from jinja2 import nodes

    node = _unwrap_filters(node)
    if isinstance(node, nodes.Getattr):
        return node.attr == "content"
    if isinstance(node, nodes.Getitem):
        return isinstance(node.arg, nodes.Const) and node.arg.value == "content"
    return False
