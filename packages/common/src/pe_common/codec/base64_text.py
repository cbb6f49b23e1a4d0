"""Strict standard base64 (padded, no whitespace, no URL-safe alphabet)."""

from __future__ import annotations

import pybase64

from pe_common.errors import PromptEmbedsError


def decode_base64(text: str, *, max_chars: int) -> bytearray:
    """Decode base64 text into a fresh writable buffer; the length is checked first."""
    if len(text) > max_chars:
        raise PromptEmbedsError(
            "`prompt_embeds` base64 text is larger than the size limit.", code="too_large"
        )
    try:
        return pybase64.b64decode_as_bytearray(text, validate=True)
    except (ValueError, TypeError):
        raise PromptEmbedsError(
            "`prompt_embeds` is not valid base64 (standard alphabet with padding, no whitespace).",
            code="invalid_base64",
        ) from None


def encode_base64(data: bytes | bytearray | memoryview) -> str:
    return pybase64.b64encode_as_string(data)
