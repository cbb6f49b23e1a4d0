"""Tensor detection and encoding glue between user objects and the pe_common codec.

numpy arrays are first-class: float32 and float16 go as they are, float64 is sent as float32
(servers cast to the model dtype anyway). PyTorch tensors are recognised without importing torch
(by their type's module); torch is imported only to encode a numpy array or a RawTensor with
``format="torch"``. bfloat16 without torch: :meth:`RawTensor.bfloat16`.
"""

from __future__ import annotations

import importlib
import json
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, cast

import numpy as np
import pybase64

from pe_client.embeds_object import is_reference, reference_item
from pe_client.errors import MissingDependencyError
from pe_common.codec.limits import ITEMSIZE, SUPPORTED_DTYPES

EmbedsFormat = Literal["safetensors", "torch", "raw"]
EMBEDS_FORMATS: tuple[EmbedsFormat, ...] = ("safetensors", "torch", "raw")

# What encode_embeds returns: base64 text, file bytes (binary transport) or a raw spec dict.
EncodedEmbeds = Union[str, bytes, dict[str, Any]]

_ITEMSIZE = {dtype: ITEMSIZE[dtype] for dtype in SUPPORTED_DTYPES}


@dataclass(frozen=True)
class RawTensor:
    """Little-endian tensor bytes with their dtype and shape, for dtypes numpy lacks.

    Build one with :meth:`bfloat16` to send bfloat16 embeddings without PyTorch.
    """

    data: bytes
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in _ITEMSIZE:
            raise ValueError(f"RawTensor dtype must be one of {sorted(_ITEMSIZE)}")
        numel = 1
        for dim in self.shape:
            numel *= dim
        if numel * _ITEMSIZE[self.dtype] != len(self.data):
            raise ValueError("RawTensor data length does not match its shape and dtype")

    @classmethod
    def bfloat16(cls, array: Any) -> RawTensor:
        """bfloat16 from numpy: uint16 bit patterns as they are, floats rounded to nearest even."""
        arr = np.asarray(array)
        if arr.dtype == np.uint16:
            bits = arr
        elif arr.dtype.kind == "f":
            bits = float_to_bfloat16_bits(arr)
        else:
            raise TypeError(
                "RawTensor.bfloat16 takes a float array or uint16 bfloat16 bit patterns"
            )
        data = np.ascontiguousarray(bits, dtype="<u2").tobytes()
        return cls(data=data, dtype="bfloat16", shape=tuple(int(d) for d in arr.shape))


def float_to_bfloat16_bits(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Round float values to bfloat16 (nearest, ties to even) and return the uint16 bit patterns."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    nan = np.isnan(np.asarray(array, dtype=np.float32))
    out = rounded.astype(np.uint16)
    out[nan] = 0x7FC0
    return out


def is_torch_tensor(x: object) -> bool:
    """True for a torch.Tensor, checked without importing torch."""
    return type(x).__module__.startswith("torch") and hasattr(x, "dtype") and hasattr(x, "shape")


def is_tensor(x: object) -> bool:
    """True for what :func:`encode_embeds` encodes: numpy arrays, torch tensors, RawTensor."""
    return isinstance(x, (np.ndarray, RawTensor)) or is_torch_tensor(x)


def is_encoded(x: object) -> bool:
    """True for an already-encoded payload: base64 text, file bytes, or a raw spec mapping."""
    return isinstance(x, (str, bytes, bytearray, memoryview)) or (
        isinstance(x, Mapping) and "data" in x
    )


def check_format(format: str) -> EmbedsFormat:
    """Validate an ``embeds_format`` value."""
    if format not in EMBEDS_FORMATS:
        raise ValueError(f"embeds format must be one of {list(EMBEDS_FORMATS)}, got {format!r}")
    return format  # narrowed to the Literal by the membership test


def encode_embeds(
    x: object, format: EmbedsFormat = "safetensors", *, binary: bool = False
) -> EncodedEmbeds:
    """Encode one 2-D ``(num_tokens, hidden_size)`` tensor for the wire.

    Already-encoded payloads (base64 str, file bytes, raw spec dict) pass through unchanged, so a
    tensor encoded once can be reused. An :class:`~pe_client.EmbedsObject` (or a ``{"id": ...}``
    item) becomes a reference ``{"id": ...}`` to the stored tensor. ``binary=True`` (msgpack transport) gives file bytes
    instead of base64 text; for ``"raw"`` it gives ``{"data": bytes, "dtype", "shape"}``.
    """
    check_format(format)
    if is_reference(x):
        return reference_item(x)
    if is_encoded(x):
        return _passthrough(x)
    if isinstance(x, RawTensor):
        return _encode_raw_tensor(x, format, binary)
    if is_torch_tensor(x):
        return _encode_torch(x, format, binary)
    if isinstance(x, np.ndarray):
        return _encode_numpy(x, format, binary)
    raise TypeError(
        "prompt embeddings must be a numpy array, a torch.Tensor, a pe_client.RawTensor, an "
        f"EmbedsObject or an already-encoded payload, not {type(x).__name__}"
    )


def _passthrough(x: object) -> EncodedEmbeds:
    if isinstance(x, (bytearray, memoryview)):
        return bytes(x)
    if isinstance(x, Mapping):
        return dict(x)
    return cast(Union[str, bytes], x)


def _codec_encode(x: object, format: EmbedsFormat, binary: bool) -> EncodedEmbeds:
    from pe_common.codec import encode_prompt_embeds

    tensor: Any = x
    return encode_prompt_embeds(tensor, format, binary=binary)


def _encode_numpy(x: np.ndarray[Any, Any], format: EmbedsFormat, binary: bool) -> EncodedEmbeds:
    if x.dtype == np.float64:
        x = x.astype(np.float32)
    elif x.dtype.name not in ("float32", "float16", "bfloat16"):  # bfloat16: ml_dtypes
        raise TypeError(
            f"numpy prompt embeddings must be float32 or float16, not {x.dtype}; "
            "use pe_client.RawTensor.bfloat16(...) for bfloat16"
        )
    if format == "torch":
        import_torch("embeds_format='torch'")
    return _codec_encode(np.ascontiguousarray(x), format, binary)


def _encode_torch(x: Any, format: EmbedsFormat, binary: bool) -> EncodedEmbeds:
    x = x.detach().cpu()
    if str(x.dtype) == "torch.float64":
        x = x.float()
    return _codec_encode(x.contiguous(), format, binary)


def _encode_raw_tensor(x: RawTensor, format: EmbedsFormat, binary: bool) -> EncodedEmbeds:
    if format == "raw":
        data: str | bytes = x.data if binary else pybase64.b64encode(x.data).decode("ascii")
        return {"data": data, "dtype": x.dtype, "shape": list(x.shape)}
    if format == "safetensors":
        from pe_common.codec.safetensors_format import write_safetensors

        blob = write_safetensors(x.data, x.dtype, x.shape)
        return blob if binary else pybase64.b64encode(blob).decode("ascii")
    torch = import_torch("embeds_format='torch'")
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    tensor = torch.frombuffer(bytearray(x.data), dtype=dtypes[x.dtype]).reshape(x.shape)
    return _codec_encode(tensor, format, binary)


def import_torch(purpose: str) -> Any:
    """Import torch for ``purpose``, or raise :class:`MissingDependencyError` saying so."""
    try:
        return importlib.import_module("torch")
    except ImportError:
        raise MissingDependencyError(
            f"{purpose} needs PyTorch, which is not installed: pip install 'pe-client[torch]', "
            "or use embeds_format='safetensors' or 'raw'"
        ) from None


def encode_embeds_list(
    x: object, format: EmbedsFormat = "safetensors", *, binary: bool = False
) -> EncodedEmbeds | list[EncodedEmbeds]:
    """Encode a completions ``prompt_embeds`` value: one tensor/payload or a list of them."""
    if isinstance(x, Sequence) and not isinstance(x, (str, bytes, bytearray)):
        if not x:
            raise ValueError("prompt_embeds must not be an empty list")
        return [encode_embeds(item, format, binary=binary) for item in x]
    return encode_embeds(x, format, binary=binary)


def as_json_payload(encoded: EncodedEmbeds) -> str | dict[str, Any]:
    """The JSON form of an encoded payload: file bytes become base64 text (raw specs too)."""
    if isinstance(encoded, bytes):
        return pybase64.b64encode(encoded).decode("ascii")
    if isinstance(encoded, dict) and isinstance(encoded.get("data"), (bytes, bytearray)):
        return {**encoded, "data": pybase64.b64encode(bytes(encoded["data"])).decode("ascii")}
    return encoded


def load_embeds_file(path: str | os.PathLike[str]) -> np.ndarray[Any, Any] | RawTensor:
    """Read one tensor from a ``.npy`` file or a single-tensor ``.safetensors`` file, no torch.

    bfloat16 safetensors come back as a :class:`RawTensor`; float32 / float16 as numpy arrays.
    """
    path = Path(path)
    if path.suffix == ".npy":
        return np.asarray(np.load(path, allow_pickle=False))
    if path.suffix == ".safetensors":
        return _read_safetensors(path.read_bytes(), str(path))
    raise ValueError(f"{path}: expected a .npy or .safetensors file")


def _read_safetensors(blob: bytes, name: str) -> np.ndarray[Any, Any] | RawTensor:
    if len(blob) < 8:
        raise ValueError(f"{name}: not a safetensors file")
    (header_len,) = struct.unpack_from("<Q", blob)
    try:
        header = json.loads(blob[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{name}: not a safetensors file") from None
    tensors = {key: value for key, value in header.items() if key != "__metadata__"}
    if len(tensors) != 1:
        raise ValueError(f"{name}: expected exactly one tensor, found {len(tensors)}")
    (entry,) = tensors.values()
    begin, end = entry["data_offsets"]
    data = blob[8 + header_len + begin : 8 + header_len + end]
    shape = tuple(int(d) for d in entry["shape"])
    dtypes = {"F32": "<f4", "F16": "<f2"}
    if entry["dtype"] == "BF16":
        return RawTensor(data=data, dtype="bfloat16", shape=shape)
    if entry["dtype"] not in dtypes:
        raise ValueError(f"{name}: unsupported dtype {entry['dtype']}")
    return np.frombuffer(data, dtype=dtypes[entry["dtype"]]).reshape(shape)
