"""vLLM's lax reading of scalar request fields, for bodies the strict decoder refuses.

vLLM's request models are pydantic models in lax mode, so clients send ``"max_tokens": "5"``,
``"prompt_logprobs": true`` or ``"stream": 1`` and get an answer. pe reads the scalar
``int`` / ``float`` / ``bool`` fields (top level and in ``stream_options``) by pydantic's
conversion table:

- ``int``: ``true``/``false``; a float with no fraction (``5.0``); a decimal string
  (``"5"``, ``" -5 "``, ``"1_000"``, ``"5.0"``).
- ``float``: ``true``/``false``; a number string (``"0.5"``, ``"1e-3"``, ``"nan"``).
- ``bool``: ``0``/``1`` (``0.0``/``1.0``); the strings ``0 1 f t n y no on off yes false true``
  in any case.

Everything else stays strict: strings, enums, lists (token ids, ``stop``), ``logit_bias``,
messages and the tensor payloads. msgspec's own ``strict=False`` is not used: it refuses
``true`` for a number (the case clients hit) and reads ``"null"`` as null, which vLLM does not.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable
from typing import Any, Union, get_args, get_origin

import msgspec

# Longer strings are never numbers a client meant; they keep the strict type error.
_MAX_NUMBER_CHARS = 64
_INT_TEXT = re.compile(r"\s*([+-]?\d+(?:_\d+)*)(?:\.0+)?\s*", re.ASCII)
_TRUE_TEXTS = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE_TEXTS = frozenset({"0", "off", "f", "false", "n", "no"})

_Coerce = Callable[[Any], Any]


def lax_int(value: Any) -> Any:
    """``value`` as an int where pydantic's lax mode reads it as one, else unchanged."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and len(value) <= _MAX_NUMBER_CHARS:
        match = _INT_TEXT.fullmatch(value)
        if match:
            return int(match.group(1))
    return value


def lax_float(value: Any) -> Any:
    """``value`` as a float where pydantic's lax mode reads it as one, else unchanged."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and len(value) <= _MAX_NUMBER_CHARS and value.isascii():
        try:
            return float(value)  # non-finite values fail the field's own range check
        except ValueError:
            return value
    return value


def lax_bool(value: Any) -> Any:
    """``value`` as a bool where pydantic's lax mode reads it as one, else unchanged."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return value == 1
    if isinstance(value, str) and len(value) <= 5:
        text = value.lower()
        if text in _TRUE_TEXTS:
            return True
        if text in _FALSE_TEXTS:
            return False
    return value


_SCALARS: dict[Any, _Coerce] = {int: lax_int, float: lax_float, bool: lax_bool}


class LaxFields:
    """The lax-read scalar fields of one request struct, by wire name."""

    def __init__(self, struct: type[msgspec.Struct]) -> None:
        self.scalars: dict[str, _Coerce] = {}
        self.nested: dict[str, LaxFields] = {}
        for field in msgspec.structs.fields(struct):
            kind = _without_none(field.type)
            if kind in _SCALARS:
                self.scalars[field.encode_name] = _SCALARS[kind]
            elif isinstance(kind, type) and issubclass(kind, msgspec.Struct):
                self.nested[field.encode_name] = LaxFields(kind)

    def coerce(self, obj: dict[Any, Any]) -> bool:
        """Rewrite ``obj``'s lax-read values in place; True when any value changed."""
        changed = False
        for name, coerce in self.scalars.items():
            if name in obj:
                value = obj[name]
                new = coerce(value)
                if new is not value:
                    obj[name] = new
                    changed = True
        for name, fields in self.nested.items():
            inner = obj.get(name)
            if isinstance(inner, dict) and fields.coerce(inner):
                changed = True
        return changed


def _without_none(kind: Any) -> Any:
    """``T | None`` -> ``T``; any other type unchanged."""
    if get_origin(kind) in (Union, types.UnionType):
        args = [arg for arg in get_args(kind) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return kind
