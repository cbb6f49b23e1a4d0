"""The OpenAI error envelope: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from pe_common.protocol.common import ResponseStruct


class ErrorInfo(ResponseStruct, kw_only=True):
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None


class ErrorResponse(ResponseStruct, kw_only=True):
    error: ErrorInfo
