"""``/v1/embeds`` (pe extension): stored prompt embeddings, referenced by id in later requests.

An upload is one embeds item as a completions request carries it (base64 of a ``torch.save`` or
safetensors file, or raw bytes with ``dtype`` and ``shape``); the answer describes the stored,
validated tensor. Ids are unguessable and per tenant.
"""

from __future__ import annotations

from typing import Literal

from pe_common.protocol.common import EmbedsRef, ResponseStruct

EMBEDS_ID_PREFIX = "emb_"
__all__ = ["EMBEDS_ID_PREFIX", "EmbedsDeleted", "EmbedsList", "EmbedsObject", "EmbedsRef"]


class EmbedsObject(ResponseStruct, kw_only=True):
    id: str
    object: Literal["prompt_embeds"] = "prompt_embeds"
    num_tokens: int
    hidden_size: int
    dtype: str
    bytes: int
    created_at: int
    expires_at: int


class EmbedsList(ResponseStruct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[EmbedsObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class EmbedsDeleted(ResponseStruct, kw_only=True):
    id: str
    object: Literal["prompt_embeds"] = "prompt_embeds"
    deleted: bool = True
