"""Per-tenant prefix-cache salts: a request only ever hits blocks cached under its own key.

Without isolation, a tenant could time its requests (or read
``usage.prompt_tokens_details.cached_tokens``) to learn whether another tenant recently sent a
given prompt prefix. With API keys, every request's salt is a digest of the key's digest (never
the key) and of the request's own ``cache_salt``; a fixed-length key part keeps the two
unambiguous, so equal ``cache_salt`` values under different keys still differ. Without API
keys there is no tenant to tell apart: the request's ``cache_salt`` applies alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pe_server.auth import bearer_token, digest
from pe_server.state import STATE

if TYPE_CHECKING:
    from aiohttp import web

    from pe_engine.prompt import Prompt

_TENANT_TAG = b"pe-tenant-cache-salt\x00"


def tenant_cache_salt(key_digest: bytes, cache_salt: str | None) -> str:
    """The salt of a request made with the key whose SHA-256 is ``key_digest``."""
    h = hashlib.sha256(_TENANT_TAG + key_digest)
    if cache_salt is not None:  # "" is refused at validation: None and a salt never collide
        h.update(cache_salt.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def request_cache_salt(request: web.Request, cache_salt: str | None) -> str | None:
    """The effective salt of ``request`` (whose key the auth middleware already checked)."""
    if not request.app[STATE].auth.is_enabled:
        return cache_salt
    key = bearer_token(request.headers.get("Authorization"))
    return tenant_cache_salt(digest(key), cache_salt)


def salt_prompts(request: web.Request, cache_salt: str | None, prompts: Iterable[Prompt]) -> None:
    """Give every prompt of ``request`` its effective salt before it reaches the backend."""
    salt = request_cache_salt(request, cache_salt)
    for prompt in prompts:
        prompt.cache_salt = salt
