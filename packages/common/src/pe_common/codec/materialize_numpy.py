"""Copy a checked :class:`TensorView` into one owned numpy array (torch-free)."""

from __future__ import annotations

import numpy as np

from pe_common.codec.tensor_view import TensorView
from pe_common.errors import PromptEmbedsError

NUMPY_TARGETS = ("float32", "float16")
_SOURCE_DTYPES = {"float32": "<f4", "float16": "<f2", "bfloat16": "<u2", "float64": "<f8"}


def to_array(view: TensorView, dtype: np.dtype) -> np.ndarray:
    """Gather + cast into a fresh C-contiguous array; bfloat16 is widened by a 16-bit shift."""
    source = _source(view)
    if view.dtype == "bfloat16":
        source = (source.astype(np.uint32) << 16).view(np.float32)
    with np.errstate(over="ignore"):  # an overflow to inf is reported just below
        out = np.array(source, dtype=dtype, order="C", copy=True)
    if not np.isfinite(out).all():
        raise PromptEmbedsError(
            "`prompt_embeds` contains NaN or infinite values (after casting to the target dtype).",
            code="non_finite_values",
        )
    return out


def _source(view: TensorView) -> np.ndarray:
    flat = np.frombuffer(view.buffer, dtype=_SOURCE_DTYPES[view.dtype])
    strides = tuple(stride * flat.itemsize for stride in view.stride)
    return np.lib.stride_tricks.as_strided(
        flat[view.offset :], shape=view.shape, strides=strides, writeable=False
    )
