"""Helpers for users of the official ``openai`` package.

::

    from openai import OpenAI
    from pe_client.openai_compat import chat_part, completion_extra_body

    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-")
    client.completions.create(model=m, prompt=None, extra_body=completion_extra_body(embeds))
    client.chat.completions.create(
        model=m,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}, chat_part(embeds)]}],
    )

The format (``format=None``): a torch.Tensor is sent as ``torch.save`` (``"torch"``), the only
format a vLLM server reads, and one pe reads too; anything else (numpy arrays, RawTensor) is sent
as safetensors, which pe reads and which needs no PyTorch. Pass ``format=`` to choose.
"""

from __future__ import annotations

from typing import Any

from pe_client.messages import prompt_embeds_part
from pe_client.tensors import EmbedsFormat, as_json_payload, encode_embeds, is_torch_tensor

__all__ = ["chat_part", "completion_extra_body", "default_format"]


def default_format(x: object) -> EmbedsFormat:
    """``"torch"`` for a torch.Tensor (vLLM compatible), else ``"safetensors"``."""
    return "torch" if is_torch_tensor(x) else "safetensors"


def completion_extra_body(
    prompt_embeds: object, *, format: EmbedsFormat | None = None
) -> dict[str, Any]:
    """``{"prompt_embeds": ...}`` for ``openai.completions.create(..., extra_body=...)``.

    ``prompt_embeds`` is one tensor or a list of them (one prompt each).
    """
    if isinstance(prompt_embeds, (list, tuple)):
        if not prompt_embeds:
            raise ValueError("prompt_embeds must not be an empty list")
        return {"prompt_embeds": [_encode(item, format) for item in prompt_embeds]}
    return {"prompt_embeds": _encode(prompt_embeds, format)}


def chat_part(embeds: object, *, format: EmbedsFormat | None = None) -> dict[str, Any]:
    """``{"type": "prompt_embeds", "data": <base64>}`` to put in a message's content list."""
    return prompt_embeds_part(embeds, format=format or default_format(embeds))


def _encode(x: object, format: EmbedsFormat | None) -> str | dict[str, Any]:
    return as_json_payload(encode_embeds(x, format or default_format(x)))
