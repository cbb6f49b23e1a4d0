"""The OpenAI error envelope: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from pe_common.errors import PEValidationError
from pe_common.protocol.common import ResponseStruct


class ErrorInfo(ResponseStruct, kw_only=True):
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None


class ErrorResponse(ResponseStruct, kw_only=True):
    error: ErrorInfo

    @classmethod
    def from_validation_error(cls, exc: PEValidationError) -> ErrorResponse:
        """The 400 body for a validation error: its fixed message, param and code."""
        return cls(error=ErrorInfo(message=exc.message, param=exc.param, code=exc.code))
