"""Public decoders: payload -> validated 2-D (num_tokens, hidden_size) tensor or array."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

import numpy as np

from pe_common.codec.limits import EmbedsLimits
from pe_common.codec.materialize_numpy import NUMPY_TARGETS, to_array
from pe_common.codec.payload import decode_view
from pe_common.errors import PromptEmbedsError

if TYPE_CHECKING:
    import torch


class RawEmbedsLike(Protocol):
    """Raw bytes with declared metadata, e.g. ``pe_common.protocol.RawEmbeds``."""

    data: str | bytes
    dtype: str
    shape: list[int]


EmbedsData = str | bytes | bytearray | memoryview | Mapping[str, object] | RawEmbedsLike

_DEFAULT_LIMITS = EmbedsLimits()


@contextmanager
def param_scope(param: str) -> Iterator[None]:
    """Report every codec error under ``param`` (e.g. a chat content part's path)."""
    try:
        yield
    except PromptEmbedsError as exc:
        if exc.param == param:
            raise
        raise PromptEmbedsError(exc.message, code=exc.code, param=param) from None


def check_hidden_size(hidden_size: int) -> None:
    if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size <= 0:
        raise ValueError("hidden_size must be a positive int")


def decode_prompt_embeds(
    data: EmbedsData,
    *,
    hidden_size: int,
    dtype: torch.dtype,
    limits: EmbedsLimits = _DEFAULT_LIMITS,
    param: str = "prompt_embeds",
) -> torch.Tensor:
    """Decode one untrusted prompt-embeddings payload.

    ``data`` is base64 text of a torch.save zip or a safetensors file, the file bytes
    themselves (msgpack transport), or a raw ``{"data", "dtype", "shape"}`` mapping/struct.
    Returns an owned contiguous ``(num_tokens, hidden_size)`` tensor in ``dtype`` with at least
    one row and only finite values. Raises :class:`PromptEmbedsError` otherwise.
    """
    import torch

    from pe_common.codec.materialize_torch import TORCH_NAMES, to_tensor

    check_hidden_size(hidden_size)
    if not isinstance(dtype, torch.dtype) or dtype not in TORCH_NAMES:
        raise ValueError("dtype must be torch.float32, torch.float16 or torch.bfloat16")
    with param_scope(param):
        view = decode_view(
            data, hidden_size=hidden_size, target_dtype=TORCH_NAMES[dtype], limits=limits
        )
        return to_tensor(view, dtype)


def decode_prompt_embeds_numpy(
    data: EmbedsData,
    *,
    hidden_size: int,
    dtype: str | np.dtype = "float32",
    limits: EmbedsLimits = _DEFAULT_LIMITS,
    param: str = "prompt_embeds",
) -> np.ndarray:
    """The same decoder without torch: returns a float32 (default) or float16 array.

    bfloat16 payloads are widened to float32 exactly, then cast to ``dtype``.
    """
    check_hidden_size(hidden_size)
    target = np.dtype(dtype)
    if target.name not in NUMPY_TARGETS:
        raise ValueError("dtype must be float32 or float16")
    with param_scope(param):
        view = decode_view(data, hidden_size=hidden_size, target_dtype=target.name, limits=limits)
        return to_array(view, target)
