"""Copy a checked :class:`TensorView` into one owned contiguous torch tensor (imports torch)."""

from __future__ import annotations

import warnings

import torch

from pe_common.codec.limits import ITEMSIZE
from pe_common.codec.tensor_view import TensorView
from pe_common.errors import PromptEmbedsError

TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
# The dtypes a payload may be materialised in (an engine's model dtype).
TORCH_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def to_tensor(view: TensorView, dtype: torch.dtype) -> torch.Tensor:
    """One pass: gather + cast into a fresh tensor, then the finiteness check."""
    out = torch.empty(view.shape, dtype=dtype)
    out.copy_(_source(view))
    check_finite(out)
    return out


def check_finite(tensor: torch.Tensor) -> None:
    # A NaN or Inf anywhere makes the sum non-finite, so one cheap reduction clears the
    # common case; a non-finite sum (maybe an overflow of finite values) gets the exact test.
    if bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all()):
        return
    raise PromptEmbedsError(
        "`prompt_embeds` contains NaN or infinite values (after casting to the model dtype).",
        code="non_finite_values",
    )


def _source(view: TensorView) -> torch.Tensor:
    """A read-only view of the payload bytes; it never outlives ``to_tensor``."""
    itemsize = ITEMSIZE[view.dtype]
    if view.is_contiguous:
        start = view.offset * itemsize
        buffer = view.buffer[start : start + view.numel * itemsize]
        return _frombuffer(buffer, view.dtype).view(view.shape)
    return _frombuffer(view.buffer, view.dtype).as_strided(view.shape, view.stride, view.offset)


def _frombuffer(buffer: memoryview, dtype: str) -> torch.Tensor:
    if not buffer.readonly:
        return torch.frombuffer(buffer, dtype=TORCH_DTYPES[dtype])
    # Read-only request bytes are only read here, then copied; silence torch's one-time warning.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        return torch.frombuffer(buffer, dtype=TORCH_DTYPES[dtype])
