"""One decoding entry point per request type, for JSON and msgpack bodies.

Each entry point decodes the wire body with a reused msgspec decoder, normalises the
polymorphic fields (see :mod:`pe_common.protocol.normalize`) and runs the model-free checks
(see :mod:`pe_common.protocol.validation`). A body the strict decoder refuses is read once
more with vLLM's lax scalars (see :mod:`pe_common.protocol.lax`). Anything wrong with the
body becomes an :class:`InvalidRequestError` with a fixed message that names the field path
and never echoes body bytes; no other exception escapes for any input.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

import msgspec

from pe_common.errors import InvalidRequestError
from pe_common.protocol.chat import ChatCompletionRequest, ChatCompletionRequestBody
from pe_common.protocol.completion import CompletionRequest, CompletionRequestBody
from pe_common.protocol.lax import LaxFields
from pe_common.protocol.limits import DEFAULT_LIMITS, RequestLimits
from pe_common.protocol.normalize import (
    chat_request_from_body,
    completion_request_from_body,
    tokenize_request_from_body,
)
from pe_common.protocol.tokenize import DetokenizeRequest, TokenizeRequest, TokenizeRequestBody
from pe_common.protocol.validation import (
    validate_chat_request,
    validate_completion_request,
    validate_detokenize_request,
    validate_tokenize_request,
)

BodyKind = Literal["json", "msgpack"]
Body = bytes | bytearray | memoryview

T = TypeVar("T", bound=msgspec.Struct)
R = TypeVar("R")

_FORMAT_NAMES = {"json": "JSON", "msgpack": "msgpack"}
_CODES = {"json": "invalid_json", "msgpack": "invalid_msgpack"}
# "<what> - at `<path>`" or "<what> - at `key` in `<path>`"
_MSGSPEC_ERROR = re.compile(r"(?P<what>.*?) - at (?P<key>`key` in )?`(?P<path>\$[^`]*)`", re.S)
_SAFE_PATH = re.compile(r"\$(?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\]|\[\.\.\.\])*")
_EXPECTED = re.compile(r"Expected `[^`'\"]{1,80}`(?:, got `[A-Za-z_ ]{1,30}`)?")
_MISSING_FIELD = re.compile(r"Object missing required field `(?P<name>[A-Za-z_][A-Za-z0-9_]*)`")
_OUT_OF_RANGE = ("Number out of range", "Integer value out of range")
_BYTE_OFFSET = re.compile(r"\(byte (\d+)\)$")


class _BodyDecoder(Generic[T]):
    """The reused JSON and msgpack decoders of one body type."""

    def __init__(self, kind: type[T]) -> None:
        self.kind = kind
        self.json = msgspec.json.Decoder(kind)
        self.msgpack = msgspec.msgpack.Decoder(kind)
        self.lax_fields = LaxFields(kind)

    def decode(self, body: Body, kind: BodyKind) -> T:
        if kind == "json":
            decoder: msgspec.json.Decoder[T] | msgspec.msgpack.Decoder[T] = self.json
        elif kind == "msgpack":
            decoder = self.msgpack
        else:
            raise ValueError(f"unknown body kind {kind!r}; expected 'json' or 'msgpack'")
        try:
            return decoder.decode(body)
        except msgspec.ValidationError as exc:
            strict_error = str(exc)
        except msgspec.DecodeError as exc:
            raise _malformed(f"is not valid {_FORMAT_NAMES[kind]}", str(exc), kind) from None
        except UnicodeDecodeError:
            raise _malformed("contains invalid UTF-8", "", kind) from None
        except RecursionError:
            raise _malformed("is nested too deeply", "", kind) from None
        return self._decode_lax(body, kind, strict_error)

    def _decode_lax(self, body: Body, kind: BodyKind, strict_error: str) -> T:
        """Read vLLM's lax scalars (``"5"``, ``true`` for numbers, ``1`` for flags), or
        raise the strict error when the body has none; paid only by refused bodies."""
        try:
            raw = msgspec.json.decode(body) if kind == "json" else msgspec.msgpack.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, TypeError):
            # TypeError: a msgpack map keyed by an ext or an array, which the typed decoder
            # refused as a type error but the untyped one cannot build (unhashable key)
            raw = None
        if not isinstance(raw, dict) or not self.lax_fields.coerce(raw):
            raise _validation_error(strict_error, kind)
        try:
            return msgspec.convert(raw, self.kind, str_keys=kind == "json")
        except msgspec.ValidationError as exc:
            raise _validation_error(str(exc), kind) from None


class _RequestDecoder(Generic[T, R]):
    """A body type's decoder, then its normalisation into the request type and its checks."""

    def __init__(
        self,
        body_type: type[T],
        from_body: Callable[[T], R],
        validate: Callable[[R, RequestLimits], None],
    ) -> None:
        self.bodies = _BodyDecoder(body_type)
        self.from_body = from_body
        self.validate = validate

    def decode(self, body: Body, kind: BodyKind, limits: RequestLimits) -> R:
        req = self.from_body(self.bodies.decode(body, kind))
        self.validate(req, limits)
        return req


def _as_is(body: DetokenizeRequest) -> DetokenizeRequest:
    return body  # the detokenize body needs no normalising


_COMPLETION = _RequestDecoder(
    CompletionRequestBody, completion_request_from_body, validate_completion_request
)
_CHAT = _RequestDecoder(ChatCompletionRequestBody, chat_request_from_body, validate_chat_request)
_TOKENIZE = _RequestDecoder(
    TokenizeRequestBody, tokenize_request_from_body, validate_tokenize_request
)
_DETOKENIZE = _RequestDecoder(DetokenizeRequest, _as_is, validate_detokenize_request)


def decode_completion_request(
    body: Body, kind: BodyKind, *, limits: RequestLimits = DEFAULT_LIMITS
) -> CompletionRequest:
    """Decode, normalise and check a ``/v1/completions`` body.

    Raises :class:`~pe_common.errors.InvalidRequestError` for any invalid body.
    """
    return _COMPLETION.decode(body, kind, limits)


def decode_chat_request(
    body: Body, kind: BodyKind, *, limits: RequestLimits = DEFAULT_LIMITS
) -> ChatCompletionRequest:
    """Decode, normalise and check a ``/v1/chat/completions`` body."""
    return _CHAT.decode(body, kind, limits)


def decode_tokenize_request(
    body: Body, kind: BodyKind, *, limits: RequestLimits = DEFAULT_LIMITS
) -> TokenizeRequest:
    """Decode, normalise and check a ``/tokenize`` body."""
    return _TOKENIZE.decode(body, kind, limits)


def decode_detokenize_request(
    body: Body, kind: BodyKind, *, limits: RequestLimits = DEFAULT_LIMITS
) -> DetokenizeRequest:
    """Decode and check a ``/detokenize`` body."""
    return _DETOKENIZE.decode(body, kind, limits)


def _validation_error(text: str, kind: BodyKind) -> InvalidRequestError:
    match = _MSGSPEC_ERROR.fullmatch(text)
    if match is None or match.group("path") == "$":
        return _root_error(match.group("what") if match else text, kind)
    what, path = match.group("what"), match.group("path")
    if not _SAFE_PATH.fullmatch(path):
        # msgspec paths hold only schema field names and indices; never echo anything else
        return InvalidRequestError("Invalid value in the request body.", code="invalid_parameter")
    param = path[2:].split("[", 1)[0].split(".", 1)[0]
    where = f"`key` in `{path}`" if match.group("key") else f"`{path}`"
    if what in _OUT_OF_RANGE:
        return InvalidRequestError(f"{what} - at {where}", code="invalid_number", param=param)
    if _MISSING_FIELD.fullmatch(what):
        return InvalidRequestError(f"{what} - at {where}", code="missing_parameter", param=param)
    if what.startswith("Invalid enum value"):
        what = "Invalid enum value"  # msgspec quotes the value; never echo it
    elif not _EXPECTED.fullmatch(what):
        what = "Invalid value"
    return InvalidRequestError(f"{what} - at {where}", code="invalid_parameter", param=param)


def _root_error(what: str, kind: BodyKind) -> InvalidRequestError:
    missing = _MISSING_FIELD.fullmatch(what)
    if missing:
        name = missing.group("name")
        return InvalidRequestError(
            f"Missing required parameter `{name}`.", code="missing_parameter", param=name
        )
    if what in _OUT_OF_RANGE:
        return InvalidRequestError(f"{what}.", code="invalid_number")
    container = "a JSON object" if kind == "json" else "a msgpack map with string keys"
    return InvalidRequestError(f"The request body must be {container}.", code=_CODES[kind])


def _malformed(what: str, detail: str, kind: BodyKind) -> InvalidRequestError:
    offset = _BYTE_OFFSET.search(detail)
    where = f" (byte {offset.group(1)})" if offset else ""
    return InvalidRequestError(f"The request body {what}{where}.", code=_CODES[kind])
