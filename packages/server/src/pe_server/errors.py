"""API errors and their OpenAI envelope: ``{"error": {"message", "type", "param", "code"}}``.

Every failure a client hears of is translated once, by :func:`to_api_error` (the error
middleware's answer and a stream's final error event), and sent through
:func:`error_response` or :meth:`APIError.to_bytes`; messages are fixed texts (or
``PEValidationError.message``, which is fixed by construction), never exception text, reprs or
paths. Status codes follow what the ``openai`` SDK maps to its exception classes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field

from aiohttp import web

from pe_common.errors import PEValidationError
from pe_common.protocol import ErrorInfo, ErrorResponse, encode_json
from pe_server.backends.base import EngineDeadError

log = logging.getLogger("pe_server")

TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    503: "server_overloaded",
}
ENABLE_EMBEDS_MESSAGE = "You must set `--enable-prompt-embeds` to input `prompt_embeds`."
# vLLM's chat path words it without the final period.
ENABLE_EMBEDS_CHAT_MESSAGE = "You must set `--enable-prompt-embeds` to input `prompt_embeds`"


class EngineRequestError(RuntimeError):
    """The backend failed while serving a request (``__cause__`` says how); the client is
    told only that the engine failed."""


@dataclass(eq=False)  # compared and hashed by identity, as exceptions are
class APIError(Exception):
    """An error answered with the OpenAI envelope."""

    status: int
    message: str
    _: KW_ONLY
    code: str
    param: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)
        self.headers = dict(self.headers)  # the caller's mapping stays the caller's

    @property
    def type(self) -> str:
        return TYPE_BY_STATUS.get(self.status, "internal_error")

    @classmethod
    def bad_request(cls, message: str, *, code: str, param: str | None = None) -> APIError:
        return cls(400, message, code=code, param=param)

    @classmethod
    def from_validation(cls, exc: PEValidationError) -> APIError:
        return cls(400, exc.message, code=exc.code, param=exc.param)

    @classmethod
    def embeds_disabled(cls, *, chat: bool = False) -> APIError:
        message = ENABLE_EMBEDS_CHAT_MESSAGE if chat else ENABLE_EMBEDS_MESSAGE
        return cls(400, message, code="prompt_embeds_disabled", param="prompt_embeds")

    @classmethod
    def unauthorized(cls) -> APIError:
        return cls(
            401,
            "Missing or invalid API key.",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )

    @classmethod
    def model_not_found(cls, model: str) -> APIError:
        # Bounded echo of the caller's own (short) string, as vLLM and OpenAI do.
        shown = model if len(model) <= 100 else model[:100] + "..."
        return cls(
            404, f"The model `{shown}` does not exist.", code="model_not_found", param="model"
        )

    @classmethod
    def route_not_found(cls) -> APIError:
        return cls(404, "Not found.", code="not_found")

    @classmethod
    def method_not_allowed(cls, allowed: set[str] | frozenset[str]) -> APIError:
        return cls(
            405,
            "Method not allowed.",
            code="method_not_allowed",
            headers={"Allow": ", ".join(sorted(allowed))},
        )

    @classmethod
    def request_too_large(cls, limit: int) -> APIError:
        return cls(
            413,
            f"Request body too large: the limit for this route is {limit} bytes.",
            code="request_too_large",
        )

    @classmethod
    def request_timeout(cls) -> APIError:
        return cls(408, "Request body was not received in time.", code="request_timeout")

    @classmethod
    def unsupported_media_type(cls) -> APIError:
        return cls(
            415,
            "Content-Type must be application/json or application/msgpack.",
            code="unsupported_media_type",
        )

    @classmethod
    def unsupported_encoding(cls) -> APIError:
        return cls(
            415,
            "Compressed request bodies are not accepted (Content-Encoding must be identity).",
            code="unsupported_content_encoding",
        )

    @classmethod
    def _retry_later(cls, status: int, message: str, code: str, retry_after: int) -> APIError:
        return cls(status, message, code=code, headers={"Retry-After": str(retry_after)})

    @classmethod
    def overloaded(cls, retry_after: int, *, code: str = "server_overloaded") -> APIError:
        return cls._retry_later(503, "The server is at capacity; retry later.", code, retry_after)

    @classmethod
    def rate_limited(cls, retry_after: int) -> APIError:
        message = "Too many concurrent requests for this API key; retry later."
        return cls._retry_later(429, message, "rate_limit_exceeded", retry_after)

    @classmethod
    def draining(cls, retry_after: int) -> APIError:
        message = "The server is shutting down; retry on another instance."
        return cls._retry_later(503, message, "server_draining", retry_after)

    @classmethod
    def engine_unavailable(cls, retry_after: int) -> APIError:
        message = "The inference engine is not available."
        return cls._retry_later(503, message, "engine_unavailable", retry_after)

    @classmethod
    def internal(cls) -> APIError:
        return cls(500, "The server failed to process the request.", code="internal_error")

    @classmethod
    def engine_failed(cls) -> APIError:
        message = "The inference engine failed while processing the request."
        return cls(500, message, code="engine_error")

    def to_struct(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.code)
        )

    def to_bytes(self) -> bytes:
        return encode_json(self.to_struct())


def error_response(error: APIError) -> web.Response:
    return web.Response(
        status=error.status,
        body=error.to_bytes(),
        content_type="application/json",
        headers=error.headers,
    )


def from_http_exception(exc: web.HTTPException) -> APIError:
    """aiohttp's own HTTP exceptions (routing, body size) as API errors."""
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return APIError.method_not_allowed(exc.allowed_methods)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return APIError(413, "Request body too large.", code="request_too_large")
    if exc.status == 404:
        return APIError.route_not_found()
    if exc.status in TYPE_BY_STATUS and exc.status < 500:
        return APIError(exc.status, exc.reason or "Bad request.", code="invalid_request")
    return APIError.internal()


def to_api_error(exc: BaseException, request_id: str | None = None) -> APIError:
    """The one translation of a failure into the OpenAI envelope; what is not the caller's
    doing is logged here (with ``request_id``) and answered with a fixed text."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, PEValidationError):
        return APIError.from_validation(exc)
    if isinstance(exc, web.HTTPException):
        return from_http_exception(exc)
    if isinstance(exc, EngineRequestError):
        if not isinstance(exc.__cause__, EngineDeadError):  # a dead engine was logged already
            log.error("engine request %s failed", request_id, exc_info=exc.__cause__)
        return APIError.engine_failed()
    log.error("request %s failed", request_id, exc_info=exc)
    return APIError.internal()
