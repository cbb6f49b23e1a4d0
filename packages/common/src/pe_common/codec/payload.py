"""Turn any accepted payload into a checked :class:`TensorView` (torch-free).

Formats are told apart by type and magic bytes, never by trusting a declared name:
base64 text or bytes holding a torch.save zip (``PK\\x03\\x04``) or a safetensors file
(8-byte length then ``{``); a mapping / struct with data, dtype and shape is raw bytes.
"""

from __future__ import annotations

from collections.abc import Mapping

from pe_common.codec.base64_text import decode_base64
from pe_common.codec.limits import ITEMSIZE, EmbedsLimits
from pe_common.codec.raw import load_raw, read_raw_spec
from pe_common.codec.safetensors_format import is_safetensors, parse_safetensors
from pe_common.codec.tensor_view import (
    TensorView,
    byte_view,
    check_layout,
    check_shape,
    squeeze_view,
)
from pe_common.codec.torch_zip import LEGACY_PICKLE_MAGIC, ZIP_MAGIC, parse_torch_zip
from pe_common.errors import PromptEmbedsError

_FORMATS_TEXT = (
    "a base64 torch.save zip of one tensor, a safetensors file with one tensor, "
    "or raw bytes with dtype and shape"
)


def decode_view(
    data: object, *, hidden_size: int, target_dtype: str, limits: EmbedsLimits
) -> TensorView:
    """Parse ``data`` and run every metadata check; no tensor bytes are copied (a sparse
    tensor is densified into a new buffer after its checks).

    ``target_dtype`` names the dtype the caller will materialise (float32, float16, bfloat16).
    """
    target_itemsize = ITEMSIZE[target_dtype]
    if isinstance(data, str):
        buf = byte_view(decode_base64(data, max_chars=limits.max_base64_chars))
        view = parse_file(buf, limits, target_dtype)
    elif isinstance(data, (bytes, bytearray, memoryview)):
        view = parse_file(byte_view(data), limits, target_dtype)
    elif _is_raw_spec(data):
        spec = read_raw_spec(data)
        itemsize = max(ITEMSIZE[spec.dtype], target_itemsize)
        check_shape(spec.shape, hidden_size=hidden_size, itemsize=itemsize, limits=limits)
        view = load_raw(spec, max_chars=limits.max_base64_chars)
    else:
        raise PromptEmbedsError(
            f"`prompt_embeds` must be {_FORMATS_TEXT}.", code="unsupported_format"
        )
    itemsize = max(ITEMSIZE[view.dtype], target_itemsize)
    check_shape(view.shape, hidden_size=hidden_size, itemsize=itemsize, limits=limits)
    view = squeeze_view(view)
    check_layout(view)
    return view


def parse_file(buf: memoryview, limits: EmbedsLimits, target_dtype: str) -> TensorView:
    """Detect a torch.save zip or a safetensors file by its first bytes and parse it."""
    if not buf:
        raise PromptEmbedsError("`prompt_embeds` payload is empty.", code="unsupported_format")
    if len(buf) > limits.max_payload_bytes:
        raise PromptEmbedsError(
            "`prompt_embeds` payload is larger than the size limit.", code="too_large"
        )
    if buf[:4] == ZIP_MAGIC:
        return parse_torch_zip(buf, limits, target_dtype)
    if is_safetensors(buf):
        return parse_safetensors(buf, limits)
    if buf[:2] == LEGACY_PICKLE_MAGIC:
        raise PromptEmbedsError(
            "`prompt_embeds` uses the legacy torch.save format; save with the default "
            "zip format instead.",
            code="unsupported_format",
        )
    raise PromptEmbedsError(f"`prompt_embeds` must be {_FORMATS_TEXT}.", code="unsupported_format")


def _is_raw_spec(value: object) -> bool:
    if isinstance(value, Mapping):
        return True
    # msgspec Structs such as pe_common.protocol.RawEmbeds
    fields = getattr(type(value), "__struct_fields__", ())
    return all(name in fields for name in ("data", "dtype", "shape"))
