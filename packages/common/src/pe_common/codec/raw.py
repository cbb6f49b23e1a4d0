"""Raw little-endian tensor bytes with declared metadata: {"data", "dtype", "shape"}.

Every size is checked against the declared shape before the base64 text is decoded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pe_common.codec.base64_text import decode_base64
from pe_common.codec.limits import ITEMSIZE, SUPPORTED_DTYPES, base64_length
from pe_common.codec.tensor_view import MAX_DIM, TensorView, byte_view, contiguous_view
from pe_common.errors import PromptEmbedsError

MAX_RAW_RANK = 8


@dataclass(frozen=True)
class RawSpec:
    """Structurally checked raw metadata; ``data`` is still encoded."""

    data: str | bytes | bytearray | memoryview
    dtype: str
    shape: tuple[int, ...]

    @property
    def num_bytes(self) -> int:
        total = ITEMSIZE[self.dtype]
        for size in self.shape:
            total *= size
        return total


def read_raw_spec(value: object) -> RawSpec:
    if isinstance(value, Mapping):
        data, dtype, shape = value.get("data"), value.get("dtype"), value.get("shape")
    else:
        data, dtype, shape = value.data, value.dtype, value.shape  # type: ignore[attr-defined]
    if not isinstance(data, (str, bytes, bytearray, memoryview)):
        raise PromptEmbedsError(
            "raw `prompt_embeds` needs `data` as base64 text or bytes.", code="unsupported_format"
        )
    if not isinstance(dtype, str) or dtype not in SUPPORTED_DTYPES:
        raise PromptEmbedsError(
            "raw `prompt_embeds` dtype must be one of float32, float16, bfloat16.",
            code="unsupported_dtype",
        )
    return RawSpec(data, dtype, _read_shape(shape))


def _read_shape(shape: object) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or not 0 < len(shape) <= MAX_RAW_RANK:
        raise PromptEmbedsError(
            "raw `prompt_embeds` shape must be a list like [num_tokens, hidden_size].",
            code="invalid_shape",
        )
    for size in shape:
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_DIM:
            raise PromptEmbedsError(
                "raw `prompt_embeds` shape must hold non-negative integers.", code="invalid_shape"
            )
    return tuple(shape)


def load_raw(spec: RawSpec, *, max_chars: int) -> TensorView:
    """Decode the bytes of a spec whose shape was already checked against the limits."""
    expected = spec.num_bytes
    data = spec.data
    if isinstance(data, str):
        if len(data) != base64_length(expected):
            raise _size_mismatch()
        data = decode_base64(data, max_chars=max_chars)
    buf = byte_view(data)
    if len(buf) != expected:
        raise _size_mismatch()
    return contiguous_view(buf, spec.dtype, spec.shape)


def _size_mismatch() -> PromptEmbedsError:
    return PromptEmbedsError(
        "raw `prompt_embeds` data length does not match its dtype and shape.",
        code="size_mismatch",
    )
