"""Client-side encoder: tensor or array -> wire payload (base64 text, bytes or a raw dict)."""

from __future__ import annotations

import io
import sys
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from pe_common.codec.base64_text import encode_base64
from pe_common.codec.limits import SUPPORTED_DTYPES
from pe_common.codec.safetensors_format import write_safetensors

if TYPE_CHECKING:
    import torch

EmbedsFormat = Literal["safetensors", "torch", "raw"]
FORMATS = ("safetensors", "torch", "raw")


def encode_prompt_embeds(
    x: torch.Tensor | np.ndarray,
    format: EmbedsFormat = "safetensors",
    *,
    binary: bool = False,
) -> str | bytes | dict[str, object]:
    """Encode one prompt-embeddings tensor for the wire.

    ``x`` is a torch tensor (float32/float16/bfloat16) or a numpy array (float32/float16:
    numpy has no bfloat16, so a bfloat16 array raises TypeError); numpy input never imports
    torch except for ``format="torch"``.

    - ``"safetensors"`` (pe's default): one tensor named ``prompt_embeds``.
    - ``"torch"``: ``torch.save`` bytes, exactly what vLLM's ``tensor2base64`` sends, so the
      result also works against vLLM. Views are cloned first so only the tensor's bytes travel.
    - ``"raw"``: ``{"data", "dtype", "shape"}`` with little-endian bytes (pe extension).

    Returns base64 text (JSON transport) or, with ``binary=True``, the bytes (msgpack).
    Raises TypeError for other inputs or dtypes, ValueError for an unknown format.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    if format == "torch":
        payload = _torch_save_bytes(x)
        return payload if binary else encode_base64(payload)
    dtype, shape, data = _little_endian_bytes(x)
    if format == "raw":
        return {
            "data": bytes(data) if binary else encode_base64(data),
            "dtype": dtype,
            "shape": list(shape),
        }
    payload = write_safetensors(data, dtype, shape)
    return payload if binary else encode_base64(payload)


def _is_torch_tensor(x: object) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _little_endian_bytes(x: object) -> tuple[str, tuple[int, ...], memoryview]:
    if _is_torch_tensor(x):
        return _torch_bytes(cast(Any, x))
    if isinstance(x, np.ndarray):
        return _numpy_bytes(x)
    raise TypeError("prompt embeds must be a torch.Tensor or a numpy.ndarray")


def _numpy_bytes(x: np.ndarray) -> tuple[str, tuple[int, ...], memoryview]:
    name = x.dtype.name
    if name not in ("float32", "float16"):
        raise TypeError(
            f"numpy prompt embeds must be float32 or float16 (got {name}); numpy has no "
            "bfloat16, so send bfloat16 embeddings as a torch tensor"
        )
    array = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<"))
    # Through a flat uint8 view: memoryview.cast refuses shapes with a zero in them.
    return name, x.shape, array.reshape(-1).view(np.uint8).data


def _torch_bytes(x: torch.Tensor) -> tuple[str, tuple[int, ...], memoryview]:
    import torch

    t = _plain_cpu_tensor(x)
    flat = t.reshape(-1).view(torch.uint8)
    return str(t.dtype).removeprefix("torch."), tuple(t.shape), flat.numpy().data.cast("B")


def _plain_cpu_tensor(x: torch.Tensor) -> torch.Tensor:
    import torch

    name = str(x.dtype).removeprefix("torch.")
    if name not in SUPPORTED_DTYPES or x.layout != torch.strided or x.is_quantized:
        raise TypeError(
            f"prompt embeds must be a dense float32, float16 or bfloat16 tensor (got {x.dtype})"
        )
    t = x.detach().cpu().contiguous()
    if t.storage_offset() != 0 or t.untyped_storage().nbytes() != t.nbytes:
        t = t.clone()  # a view would drag its whole storage onto the wire
    return t


def _torch_save_bytes(x: object) -> bytes:
    try:
        import torch
    except ImportError:
        raise TypeError("format='torch' needs torch; use format='safetensors' or 'raw'") from None
    if isinstance(x, np.ndarray):
        x = _numpy_to_torch(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError("prompt embeds must be a torch.Tensor or a numpy.ndarray")
    buffer = io.BytesIO()
    torch.save(_plain_cpu_tensor(x), buffer)
    return buffer.getvalue()


def _numpy_to_torch(x: np.ndarray) -> torch.Tensor:
    import torch

    name, _, _ = _numpy_bytes(x)  # checks the dtype
    return torch.from_numpy(np.array(x, dtype=name, order="C"))  # a native-order copy
