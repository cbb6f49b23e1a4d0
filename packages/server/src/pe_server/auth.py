"""Bearer API keys, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

BEARER = "bearer "


def bearer_token(header: str | None) -> str:
    """The key of an ``Authorization: Bearer <key>`` header ("" if there is none)."""
    if header is not None and header[: len(BEARER)].lower() == BEARER:
        return header[len(BEARER) :].strip()
    return ""


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class ApiKeyAuth:
    """Checks ``Authorization: Bearer <key>`` against one or more configured keys.

    Only SHA-256 digests are kept and compared (``hmac.compare_digest`` on fixed-length values,
    every key compared without early exit), so timing depends neither on the key's length nor on
    how much of it matches.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(digest(k) for k in keys)

    @property
    def is_enabled(self) -> bool:
        return bool(self._digests)

    def is_authorized(self, header: str | None) -> bool:
        if not self._digests:
            return True
        token = bearer_token(header)
        presented = digest(token)
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(presented, known)
        return matched and bool(token)
