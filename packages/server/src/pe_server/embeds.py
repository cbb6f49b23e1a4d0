"""The server's side of stored embeddings: whose objects a request sees, the wire form of an
object, and resolving ``{"id": ...}`` references while a request holds them.

A request that names an object pins it (it cannot be evicted or freed under the request) until
the request's handler returns, streaming included (the admission middleware releases the pins).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from aiohttp import web

from pe_common.protocol import EmbedsObject, EmbedsRef
from pe_server.auth import bearer_token, digest
from pe_server.errors import APIError
from pe_server.state import STATE

if TYPE_CHECKING:
    import torch

    from pe_engine.inputs.embeds_store import StoredEmbeds

EMBEDS_PINS = web.RequestKey("pe_embeds_pins", list)


def store_tenant(request: web.Request) -> str:
    """The owner of the objects a request may see: a digest of its API key (never the key);
    one shared space on a server without keys."""
    if not request.app[STATE].auth.is_enabled:
        return ""
    return digest(bearer_token(request.headers.get("Authorization"))).hex()


def wire_object(obj: StoredEmbeds) -> EmbedsObject:
    return EmbedsObject(
        id=obj.id,
        num_tokens=obj.num_tokens,
        hidden_size=obj.hidden_size,
        dtype=obj.dtype,
        bytes=obj.nbytes,
        created_at=int(obj.created_at),
        expires_at=math.ceil(obj.expires_at),
    )


def embeds_not_found(embeds_id: str, param: str) -> APIError:
    shown = embeds_id if len(embeds_id) <= 64 else embeds_id[:64] + "..."
    return APIError(
        404,
        f"No prompt embeds object with id `{shown}` (unknown, expired or deleted).",
        code="embeds_not_found",
        param=param,
    )


def put_embeds(request: web.Request, tensor: torch.Tensor) -> StoredEmbeds:
    """Store ``tensor`` for the request's tenant; 413 when it can never fit, 429 while the
    room it needs is held by objects in use."""
    from pe_engine.inputs.embeds_store import EmbedsStoreFullError, EmbedsTooLargeError

    state = request.app[STATE]
    try:
        return state.embeds_store.put(tensor, store_tenant(request))
    except EmbedsTooLargeError as exc:
        raise APIError(
            413,
            f"The tensor ({exc.size} bytes) is larger than the embeds store allows "
            f"({exc.limit} bytes).",
            code="too_large",
            param="data",
        ) from None
    except EmbedsStoreFullError:
        raise APIError._retry_later(
            429,
            "The embeds store has no room now: the bytes it needs are held by objects in use.",
            "embeds_store_full",
            state.config.retry_after,
        ) from None


def resolve(request: web.Request, ref: EmbedsRef) -> torch.Tensor:
    """The tensor of a referenced object, pinned for the rest of the request; a 404 naming
    where the reference was for a missing one."""
    from pe_engine.inputs.embeds_store import EmbedsNotFoundError

    store = request.app[STATE].embeds_store
    try:
        obj = store.get(ref.id, store_tenant(request), pin=True)
    except EmbedsNotFoundError:
        raise embeds_not_found(ref.id, ref.path) from None
    pins = request.get(EMBEDS_PINS)
    if pins is None:
        pins = request[EMBEDS_PINS] = []
    pins.append(obj)
    return obj.tensor


def release_pins(request: web.Request) -> None:
    store = request.app[STATE].embeds_store
    for obj in request.get(EMBEDS_PINS, ()):
        store.unpin(obj)
