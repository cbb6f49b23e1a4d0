"""Chat message builders that mix text and prompt embeddings.

They return plain OpenAI-shaped dicts with the tensors already encoded (base64), so the same
messages work with pe-client, with the official ``openai`` client and with ``requests``::

    from pe_client.messages import system, user

    messages = [
        system("You are terse."),
        user("Summarise:", doc_embeds, "in one line"),
    ]

A single string gives plain string content (``{"role": "user", "content": "hi"}``); anything
else gives a list of ``text`` and ``prompt_embeds`` parts in the order given. Use
``format="torch"`` for a vLLM server (it only reads ``torch.save`` payloads); pe reads all three.

An :class:`~pe_client.EmbedsObject` (from ``client.embeds.create``) gives a reference part
``{"type": "prompt_embeds", "id": ...}``: the tensor was uploaded once and is not sent again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pe_client.embeds_object import is_embeds_object
from pe_client.tensors import EmbedsFormat, as_json_payload, encode_embeds, is_encoded, is_tensor

__all__ = ["assistant", "message", "prompt_embeds_part", "system", "text_part", "user"]


def text_part(text: str) -> dict[str, Any]:
    """``{"type": "text", "text": text}``."""
    if not isinstance(text, str):
        raise TypeError(f"text_part takes a str, not {type(text).__name__}")
    return {"type": "text", "text": text}


def prompt_embeds_part(embeds: object, *, format: EmbedsFormat = "safetensors") -> dict[str, Any]:
    """``{"type": "prompt_embeds", "data": <base64>}`` for one ``(num_tokens, hidden)`` tensor.

    ``embeds`` is a numpy array, a torch.Tensor, a :class:`~pe_client.RawTensor` or an
    already-encoded payload. ``format="raw"`` adds the ``dtype`` and ``shape`` keys (a pe
    extension). An :class:`~pe_client.EmbedsObject` gives ``{"type": "prompt_embeds", "id": ...}``.
    """
    encoded = as_json_payload(encode_embeds(embeds, format))
    if isinstance(encoded, dict):
        return {"type": "prompt_embeds", **encoded}
    return {"type": "prompt_embeds", "data": encoded}


def message(
    role: str,
    *content: object,
    format: EmbedsFormat = "safetensors",
    name: str | None = None,
) -> dict[str, Any]:
    """One chat message of ``role`` whose content is ``content`` (strings, tensors, parts)."""
    if not content:
        raise ValueError(f"a {role} message needs at least one piece of content")
    msg: dict[str, Any] = {"role": role, "content": _content(content, format)}
    if name is not None:
        msg["name"] = name
    return msg


def system(
    *content: object, format: EmbedsFormat = "safetensors", name: str | None = None
) -> dict[str, Any]:
    """A system message: ``system("You are terse.")`` or ``system("Context:", embeds)``."""
    return message("system", *content, format=format, name=name)


def user(
    *content: object, format: EmbedsFormat = "safetensors", name: str | None = None
) -> dict[str, Any]:
    """A user message: ``user("Summarise:", doc_embeds, "in one line")``."""
    return message("user", *content, format=format, name=name)


def assistant(
    *content: object, format: EmbedsFormat = "safetensors", name: str | None = None
) -> dict[str, Any]:
    """An assistant message (a previous turn), text and/or embeddings."""
    return message("assistant", *content, format=format, name=name)


def _content(content: tuple[object, ...], format: EmbedsFormat) -> str | list[dict[str, Any]]:
    if len(content) == 1 and isinstance(content[0], str):
        return content[0]
    return [_part(item, format) for item in content]


def _part(item: object, format: EmbedsFormat) -> dict[str, Any]:
    if isinstance(item, str):
        return text_part(item)
    if isinstance(item, Mapping) and "type" in item:
        return dict(item)  # an already-built part
    if is_tensor(item) or is_encoded(item) or is_embeds_object(item):
        return prompt_embeds_part(item, format=format)
    raise TypeError(
        "message content must be str, a content part dict, a tensor "
        f"(numpy array, torch.Tensor, RawTensor) or an EmbedsObject, not {type(item).__name__}"
    )
