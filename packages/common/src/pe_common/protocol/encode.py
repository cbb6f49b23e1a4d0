"""Reused encoders for every wire type (requests and responses)."""

from __future__ import annotations

import msgspec

_JSON = msgspec.json.Encoder()
_MSGPACK = msgspec.msgpack.Encoder()


def encode_json(obj: object) -> bytes:
    """JSON bytes of a wire struct; ``bytes`` values become base64 text."""
    return _JSON.encode(obj)


def encode_msgpack(obj: object) -> bytes:
    """msgpack bytes of a wire struct; ``bytes`` values stay raw ``bin``."""
    return _MSGPACK.encode(obj)
