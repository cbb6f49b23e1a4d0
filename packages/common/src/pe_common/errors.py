"""Typed errors for anything a caller can cause.

The server maps every :class:`PEValidationError` to an HTTP 400 envelope
``{"error": {"message", "type": "invalid_request_error", "param", "code"}}``.
Messages are fixed short texts: never decoder exception text, never user bytes.
"""

from __future__ import annotations

MAX_MESSAGE_CHARS = 300


class PEValidationError(ValueError):
    """Base class for request validation failures (a ``ValueError``)."""

    code: str
    param: str | None
    message: str

    def __init__(self, message: str, *, code: str, param: str | None = None) -> None:
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, param={self.param!r})"


class PromptEmbedsError(PEValidationError):
    """A prompt-embeddings payload was rejected by the tensor codec."""

    def __init__(self, message: str, *, code: str, param: str | None = "prompt_embeds") -> None:
        super().__init__(message, code=code, param=param)


class InvalidRequestError(PEValidationError):
    """A request failed schema or parameter validation."""
