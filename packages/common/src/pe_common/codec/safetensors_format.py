"""safetensors files holding exactly one tensor named ``prompt_embeds``.

Layout: an 8-byte little-endian header length, a JSON header, then the tensor bytes. The
header is bounded and parsed (strict JSON) before any tensor byte is touched.
"""

from __future__ import annotations

import json
import struct
from typing import TypeGuard

from pe_common.codec.limits import ITEMSIZE, EmbedsLimits
from pe_common.codec.tensor_view import MAX_DIM, TensorView, contiguous_view
from pe_common.errors import PromptEmbedsError

TENSOR_NAME = "prompt_embeds"
MAX_METADATA_ENTRIES = 1024
MAX_RANK = 8
DTYPE_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
_CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
_LENGTH = struct.Struct("<Q")


def is_safetensors(buf: memoryview) -> bool:
    return len(buf) > _LENGTH.size and buf[_LENGTH.size] == ord("{")


def _invalid(detail: str) -> PromptEmbedsError:
    return PromptEmbedsError(f"`prompt_embeds` safetensors {detail}", code="invalid_safetensors")


def parse_safetensors(buf: memoryview, limits: EmbedsLimits) -> TensorView:
    """Return a view of the single tensor of a safetensors file."""
    header_len = _LENGTH.unpack_from(buf)[0] if len(buf) >= _LENGTH.size else 0
    if header_len > limits.max_header_bytes:
        raise _invalid("header is larger than the limit.")
    data_start = _LENGTH.size + header_len
    if header_len == 0 or data_start > len(buf):
        raise _invalid("header is truncated.")
    entry = _tensor_entry(_parse_header(bytes(buf[_LENGTH.size : data_start])))
    dtype, shape, begin, end = _entry_fields(entry)
    if begin != 0 or end != len(buf) - data_start:
        raise _invalid("data_offsets must cover exactly the bytes after the header.")
    if _byte_count(shape, ITEMSIZE[dtype], limit=end) != end:
        raise _invalid("shape does not match the size of its data.")
    return contiguous_view(buf[data_start:], dtype, shape)


def _reject_constant(name: str) -> object:
    raise ValueError("non-finite constant")


def _unique_object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _parse_header(raw: bytes) -> dict[str, object]:
    try:
        header = json.loads(
            raw.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_unique_object
        )
    except (ValueError, RecursionError):
        raise _invalid("header is not valid JSON.") from None
    if not isinstance(header, dict):
        raise _invalid("header is not a JSON object.")
    return header


def _tensor_entry(header: dict[str, object]) -> dict[str, object]:
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA_ENTRIES:
        raise _invalid("__metadata__ must be a small string-to-string object.")
    if not all(isinstance(value, str) for value in metadata.values()):
        raise _invalid("__metadata__ must be a small string-to-string object.")
    if list(header) != [TENSOR_NAME]:
        raise _invalid(f"file must hold exactly one tensor named {TENSOR_NAME!r}.")
    entry = header[TENSOR_NAME]
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _invalid("tensor entry must have dtype, shape and data_offsets.")
    return entry


def _entry_fields(entry: dict[str, object]) -> tuple[str, tuple[int, ...], int, int]:
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(code, str) or code not in _CODE_DTYPES:
        raise PromptEmbedsError(
            "`prompt_embeds` dtype must be float32, float16 or bfloat16 (F32, F16, BF16).",
            code="unsupported_dtype",
        )
    if not _is_int_list(shape) or len(shape) > MAX_RANK:
        raise _invalid("shape must be a short list of integers.")
    if any(size < 0 or size > MAX_DIM for size in shape):
        raise PromptEmbedsError(
            "`prompt_embeds` shape has a negative or oversized dimension.", code="invalid_shape"
        )
    if not _is_int_list(offsets) or len(offsets) != 2:
        raise _invalid("data_offsets must be two integers.")
    return _CODE_DTYPES[code], tuple(shape), offsets[0], offsets[1]


def _is_int_list(value: object) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(
        isinstance(item, int) and not isinstance(item, bool) for item in value
    )


def _byte_count(shape: tuple[int, ...], itemsize: int, *, limit: int) -> int:
    """Bytes the shape needs, stopping early once past ``limit`` (overflow-safe, cheap)."""
    if 0 in shape:
        return 0
    total = itemsize
    for size in shape:
        total *= size
        if total > limit:
            return limit + 1
    return total


def write_safetensors(data: bytes | memoryview, dtype: str, shape: tuple[int, ...]) -> bytes:
    """Serialise one little-endian tensor as a safetensors file (tensor ``prompt_embeds``)."""
    entry = {"dtype": DTYPE_CODES[dtype], "shape": list(shape), "data_offsets": [0, len(data)]}
    header = json.dumps({TENSOR_NAME: entry}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # align the data like the reference writer
    return b"".join((_LENGTH.pack(len(header)), header, data))
