"""What the sync and async clients share: configuration, request building, response parsing."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, Union, cast

import httpx
import msgspec
import numpy as np
from typing_extensions import Self

from pe_client._version import __version__
from pe_client.embeds_object import EMBEDS_NOT_FOUND
from pe_client.errors import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    NotFoundError,
    make_status_error,
)
from pe_client.retries import RetryPolicy, is_retryable_status
from pe_client.tensors import EmbedsFormat, check_format

if TYPE_CHECKING:
    from pe_client.embeds_object import EmbedsObject

T = TypeVar("T")
HttpT = TypeVar("HttpT", httpx.Client, httpx.AsyncClient)

Transport = Literal["json", "msgpack"]
TimeoutTypes = Union[float, httpx.Timeout, None]

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
DEFAULT_MAX_RETRIES = 2

JSON_TYPE = "application/json"
MSGPACK_TYPE = "application/msgpack"
SSE_TYPE = "text/event-stream"

# A request body: built lazily (the async client builds it in a worker thread, since encoding
# large tensors is CPU work) with `binary` telling whether tensors may stay raw bytes.
BodyBuilder = Callable[[bool], dict[str, Any]]


class NotGiven:
    """Sentinel for "use the client's setting" where ``None`` has its own meaning."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN = NotGiven()


@dataclass(frozen=True)
class RequestOptions:
    """One API call before it becomes an :class:`httpx.Request`."""

    method: str
    path: str
    build_body: BodyBuilder | None = None
    stream: bool = False
    extra_headers: Mapping[str, str] | None = None
    extra_body: Mapping[str, object] | None = None
    timeout: TimeoutTypes | NotGiven = NOT_GIVEN
    # EmbedsObjects the body references that keep their tensor: uploaded again on a 404.
    reuploadable: tuple[EmbedsObject, ...] = ()

    @property
    def has_body(self) -> bool:
        """Whether the call sends a body (a GET sends none unless ``extra_body`` asks)."""
        return self.build_body is not None or bool(self.extra_body)


def _enc_hook(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise NotImplementedError(f"cannot serialise {type(obj).__name__} in a request body")


_JSON_ENCODER = msgspec.json.Encoder(enc_hook=_enc_hook)
_MSGPACK_ENCODER = msgspec.msgpack.Encoder(enc_hook=_enc_hook)


class BaseClient(Generic[HttpT]):
    """Configuration and the I/O-free half of every request, for the sync and async shells.

    A shell sets ``_http_type``, attaches its resources in ``_init_resources`` and does the I/O:
    send, read, sleep between tries, close.
    """

    _http_type: type[HttpT]

    def __init__(
        self,
        *,
        base_url: str | httpx.URL | None = None,
        api_key: str | None = None,
        timeout: TimeoutTypes = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
        transport: Transport = "json",
        embeds_format: EmbedsFormat = "safetensors",
        http_client: HttpT | None = None,
    ) -> None:
        if transport not in ("json", "msgpack"):
            raise ValueError(f"transport must be 'json' or 'msgpack', got {transport!r}")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if base_url is None:
            base_url = os.environ.get("PE_BASE_URL") or DEFAULT_BASE_URL
        if api_key is None:
            api_key = os.environ.get("PE_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self.base_url = _with_trailing_slash(httpx.URL(str(base_url)))
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.default_headers = dict(default_headers or {})
        self.transport: Transport = transport
        self.embeds_format: EmbedsFormat = check_format(embeds_format)
        self._retry_policy = RetryPolicy(max_retries=max_retries)
        self._decoders: dict[tuple[str, type[Any]], Any] = {}
        self._owns_http = http_client is None
        self._http: HttpT = http_client or self._http_type(timeout=timeout)
        self._init_resources()

    def _init_resources(self) -> None:
        raise NotImplementedError

    @property
    def is_binary(self) -> bool:
        """True when tensors travel as raw bytes (msgpack transport)."""
        return self.transport == "msgpack"

    def with_options(self, **overrides: Any) -> Self:
        """A copy with some constructor arguments changed, sharing this client's connections."""
        kwargs = {
            "base_url": self.base_url,
            "api_key": self.api_key,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "default_headers": self.default_headers,
            "transport": self.transport,
            "embeds_format": self.embeds_format,
            "http_client": self._http,
        }
        return type(self)(**{**kwargs, **overrides})

    def request(self, options: RequestOptions, cast_to: type[T]) -> object:
        """Send ``options`` and decode the body into ``cast_to`` (awaitable in the async shell)."""
        raise NotImplementedError

    def request_stream(self, options: RequestOptions, chunk_type: type[T]) -> object:
        """Send ``options`` and return the open event stream (awaitable in the async shell)."""
        raise NotImplementedError

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _encode_body(self, options: RequestOptions) -> bytes | None:
        """The request body bytes (CPU work: tensor encoding happens here)."""
        if not options.has_body:
            return None
        body = options.build_body(self.is_binary) if options.build_body else {}
        if options.extra_body:
            body.update(options.extra_body)
        if self.is_binary:
            return _MSGPACK_ENCODER.encode(body)
        return _JSON_ENCODER.encode(body)

    def _build_request(self, options: RequestOptions, content: bytes | None) -> httpx.Request:
        headers = {
            "User-Agent": f"pe-client/{__version__}",
            "Accept": self._accept(options.stream),
            **self._auth_headers(),
            **self.default_headers,
        }
        if content is not None:
            headers["Content-Type"] = MSGPACK_TYPE if self.is_binary else JSON_TYPE
        if options.extra_headers:
            headers.update(options.extra_headers)
        timeout = self.timeout if isinstance(options.timeout, NotGiven) else options.timeout
        url = self.base_url.join(options.path.lstrip("/"))
        return self._http.build_request(
            options.method, url, content=content, headers=headers, timeout=timeout
        )

    def _accept(self, stream: bool) -> str:
        if stream:
            return SSE_TYPE
        return MSGPACK_TYPE if self.is_binary else JSON_TYPE

    def _delay_after_transport_error(
        self, exc: httpx.TransportError, request: httpx.Request, num_retries: int
    ) -> float:
        """Seconds to wait before the next try; raises the SDK error when no try is left."""
        if num_retries < self.max_retries:
            return self._retry_policy.delay(num_retries)
        raise connection_error(exc, request) from exc

    def _delay_after_error_status(self, response: httpx.Response, num_retries: int) -> float:
        """Seconds to wait before the next try; raises the typed error when this one is final."""
        if num_retries < self.max_retries and self._should_retry(response):
            return self._retry_policy.delay(num_retries, response.headers)
        raise self._status_error(response)

    def _can_reupload(self, exc: NotFoundError, options: RequestOptions) -> bool:
        """Whether a 404 is a stored tensor the server lost that this request can upload again
        (the shell then re-uploads ``options.reuploadable`` and sends once more)."""
        return exc.code == EMBEDS_NOT_FOUND and bool(options.reuploadable)

    def _should_retry(self, response: httpx.Response) -> bool:
        override = str(response.headers.get("x-should-retry", "")).lower()
        if override in ("true", "false"):
            return override == "true"
        return is_retryable_status(response.status_code)

    def _parse(self, response: httpx.Response, cast_to: type[T]) -> T:
        """Decode a successful, fully read response into ``cast_to``."""
        kind = "msgpack" if _is_msgpack(response) else "json"
        decoder = self._decoders.get((kind, cast_to))
        if decoder is None:
            module = msgspec.msgpack if kind == "msgpack" else msgspec.json
            decoder = module.Decoder(cast_to)
            self._decoders[(kind, cast_to)] = decoder
        try:
            return cast(T, decoder.decode(response.content))
        except msgspec.DecodeError as exc:
            raise APIResponseValidationError(
                f"response does not match {cast_to.__name__}: {exc}", response=response
            ) from None

    def _status_error(self, response: httpx.Response) -> Exception:
        """The typed error for a fully read error response."""
        return make_status_error(response, _decode_error_body(response))


def _is_msgpack(response: httpx.Response) -> bool:
    content_type = response.headers.get("content-type", "")
    return "msgpack" in content_type.split(";")[0]


def _decode_error_body(response: httpx.Response) -> object | None:
    body: object
    try:
        if _is_msgpack(response):
            body = msgspec.msgpack.decode(response.content)
        else:
            body = msgspec.json.decode(response.content)
    except (msgspec.DecodeError, httpx.ResponseNotRead):
        return None
    return body


def _with_trailing_slash(url: httpx.URL) -> httpx.URL:
    if url.raw_path.endswith(b"/"):
        return url
    return url.copy_with(raw_path=url.raw_path + b"/")


def connection_error(exc: httpx.TransportError, request: httpx.Request) -> APIConnectionError:
    """The SDK error for a transport failure: a timeout or any other connection error."""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(request=request)
    return APIConnectionError(request=request)
