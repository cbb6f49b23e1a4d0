"""Exceptions raised by pe-client, keyed by HTTP status like openai-python's.

Every exception the SDK raises on purpose derives from :class:`PEClientError`. Errors that come
from the server (or from failing to reach it) derive from :class:`APIError`:

- :class:`APIStatusError` and its subclasses: the server answered with a 4xx / 5xx status;
- :class:`APIConnectionError` / :class:`APITimeoutError`: no answer at all;
- :class:`APIResponseValidationError`: an answer that does not match the wire schema;
- a plain :class:`APIError`: an ``error`` event inside a stream that had already started.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx


class PEClientError(Exception):
    """Base class of every exception pe-client raises on purpose."""


class MissingDependencyError(PEClientError, ImportError):
    """An optional dependency (PyTorch) is needed for what was asked."""


class APIError(PEClientError):
    """An error reported by (or while talking to) the server.

    Attributes:
        message: the server's message, or a short description of the failure.
        status_code: the HTTP status, ``None`` when there was no response or the error arrived
            inside a stream.
        code: the machine-readable ``error.code`` of the envelope (a string on pe, an int on vLLM).
        param: the request parameter the error is about, when the server named one.
        type: the ``error.type`` of the envelope.
        request_id: the ``x-request-id`` response header, when present.
        body: the decoded error body (the ``error`` object when the envelope had one).
        request: the :class:`httpx.Request` that failed.
    """

    status_code: int | None = None

    def __init__(
        self,
        message: str,
        *,
        request: httpx.Request | None,
        body: object | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.request = request
        self.body = body
        self.request_id = request_id
        info = body if isinstance(body, Mapping) else {}
        code = info.get("code")
        self.code: str | int | None = code if isinstance(code, (str, int)) else None
        param = info.get("param")
        self.param: str | None = param if isinstance(param, str) else None
        error_type = info.get("type")
        self.type: str | None = error_type if isinstance(error_type, str) else None

    def __str__(self) -> str:
        if self.status_code is None:
            return self.message
        return f"Error code: {self.status_code} - {self.message}"


class APIStatusError(APIError):
    """The server answered with a 4xx or 5xx status."""

    def __init__(
        self,
        message: str,
        *,
        response: httpx.Response,
        body: object | None = None,
    ) -> None:
        super().__init__(
            message,
            request=response.request,
            body=body,
            request_id=response.headers.get("x-request-id"),
        )
        self.response = response
        self.status_code = response.status_code


class BadRequestError(APIStatusError):
    """400: the request was invalid (for instance a malformed ``prompt_embeds``)."""


class AuthenticationError(APIStatusError):
    """401: missing or wrong API key."""


class PermissionDeniedError(APIStatusError):
    """403: the key may not do this."""


class NotFoundError(APIStatusError):
    """404: unknown model or route."""


class ConflictError(APIStatusError):
    """409: the request conflicts with the server's state."""


class RequestTooLargeError(APIStatusError):
    """413: the request body is over the server's limit."""


class UnprocessableEntityError(APIStatusError):
    """422: the body was well-formed but could not be processed."""


class RateLimitError(APIStatusError):
    """429: too many requests."""


class InternalServerError(APIStatusError):
    """5xx: the server failed."""


class ServiceUnavailableError(InternalServerError):
    """503: the server is overloaded, starting or shutting down."""


class APIConnectionError(APIError):
    """The server could not be reached, or the connection broke before an answer."""

    def __init__(self, *, request: httpx.Request, message: str = "Connection error.") -> None:
        super().__init__(message, request=request)


class APITimeoutError(APIConnectionError):
    """The request timed out."""

    def __init__(self, *, request: httpx.Request) -> None:
        super().__init__(request=request, message="Request timed out.")


class APIResponseValidationError(APIError):
    """The server's answer did not match the expected wire schema."""

    def __init__(self, message: str, *, response: httpx.Response) -> None:
        super().__init__(
            message,
            request=response.request,
            request_id=response.headers.get("x-request-id"),
        )
        self.response = response
        self.status_code = response.status_code


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: RequestTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def status_error_class(status_code: int) -> type[APIStatusError]:
    """The exception class for an HTTP error status."""
    if status_code in _STATUS_ERRORS:
        return _STATUS_ERRORS[status_code]
    if status_code >= 500:
        return InternalServerError
    return APIStatusError


def make_status_error(response: httpx.Response, body: object | None) -> APIStatusError:
    """Build the exception for an error response whose body was already read and decoded.

    ``body`` is the decoded body: the ``{"error": {...}}`` envelope, any other JSON value, or
    ``None`` when it could not be decoded.
    """
    info = body.get("error") if isinstance(body, Mapping) else None
    error_body: object | None = info if isinstance(info, Mapping) else body
    message = None
    if isinstance(error_body, Mapping):
        raw = error_body.get("message")
        message = raw if isinstance(raw, str) else None
    if message is None:
        text = _body_text(response)
        message = text or response.reason_phrase or f"HTTP {response.status_code}"
    cls = status_error_class(response.status_code)
    return cls(message, response=response, body=error_body)


def _body_text(response: httpx.Response, limit: int = 500) -> str:
    try:
        text = response.text
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        return ""
    return text[:limit]
