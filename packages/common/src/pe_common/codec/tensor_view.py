"""A decoded but not yet materialised tensor, and the checks every format shares.

Parsers turn a payload into a :class:`TensorView` (bytes + dtype + shape + strides) without
copying tensor bytes; these checks run on that metadata before anything is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass

from pe_common.codec.limits import ITEMSIZE, EmbedsLimits
from pe_common.errors import PromptEmbedsError

# Largest dimension accepted at all; anything bigger is a malformed shape, not a big tensor.
MAX_DIM = 2**31 - 1


@dataclass(frozen=True)
class TensorView:
    """A strided little-endian view over ``buffer`` (strides and offset in elements)."""

    buffer: memoryview
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int = 0

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count

    @property
    def is_contiguous(self) -> bool:
        return self.stride == contiguous_stride(self.shape)


def contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride = []
    step = 1
    for size in reversed(shape):
        stride.append(step)
        step *= max(size, 1)
    return tuple(reversed(stride))


def contiguous_view(buffer: memoryview, dtype: str, shape: tuple[int, ...]) -> TensorView:
    return TensorView(buffer, dtype, shape, contiguous_stride(shape))


def byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    """A flat unsigned-byte view of ``data`` (no copy)."""
    try:
        return memoryview(data).cast("B")
    except (TypeError, ValueError):
        raise PromptEmbedsError(
            "`prompt_embeds` bytes must be one contiguous buffer.", code="unsupported_format"
        ) from None


def format_shape(shape: tuple[int, ...]) -> str:
    if len(shape) > 4 or any(not 0 <= size <= MAX_DIM for size in shape):
        return f"(rank {len(shape)})" if len(shape) <= 64 else "(rank > 64)"
    return "(" + ", ".join(str(size) for size in shape) + ")"


def check_shape(
    shape: tuple[int, ...],
    *,
    hidden_size: int,
    itemsize: int,
    limits: EmbedsLimits,
) -> tuple[int, int]:
    """Check a declared shape; return (rows, width) after squeezing a leading 1 of a 3-D shape.

    ``itemsize`` is the larger of the payload and target element sizes.
    """
    if any(size < 0 or size > MAX_DIM for size in shape):
        raise PromptEmbedsError(
            "`prompt_embeds` shape has a negative or oversized dimension.", code="invalid_shape"
        )
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 2:
        raise PromptEmbedsError(
            "`prompt_embeds` must be a 2D tensor of shape (num_tokens, hidden_size); "
            f"got shape {format_shape(shape)}.",
            code="invalid_shape",
        )
    rows, width = shape
    if width == 0:
        raise PromptEmbedsError("`prompt_embeds` has zero width.", code="invalid_shape")
    if width != hidden_size:
        raise PromptEmbedsError(
            f"`prompt_embeds` hidden_size {width} does not match the model's hidden_size "
            f"{hidden_size}.",
            code="hidden_size_mismatch",
        )
    if rows == 0:
        raise PromptEmbedsError("The decoder prompt cannot be empty", code="empty_prompt")
    if rows > limits.max_rows:
        raise PromptEmbedsError(
            f"`prompt_embeds` has more than {limits.max_rows} rows.", code="too_large"
        )
    if rows * width * itemsize > limits.max_bytes:
        raise PromptEmbedsError(
            f"`prompt_embeds` would take more than {limits.max_bytes} bytes once decoded.",
            code="too_large",
        )
    return rows, width


def squeeze_view(view: TensorView) -> TensorView:
    """Drop the leading dimension of size 1 of a 3-D view (the batch dimension)."""
    if len(view.shape) == 3 and view.shape[0] == 1:
        return TensorView(view.buffer, view.dtype, view.shape[1:], view.stride[1:], view.offset)
    return view


def check_layout(view: TensorView) -> None:
    """Require a non-overlapping view whose every index lies inside its storage.

    Sizes are already checked (>= 1). Dimensions are visited by increasing stride; each
    stride must step past everything the inner dimensions reach, which rules out stride 0
    and overlapping views while allowing offsets, transposes and a larger storage.
    """
    if view.offset < 0 or any(stride < 0 for stride in view.stride):
        raise PromptEmbedsError(
            "`prompt_embeds` has a negative stride or storage offset.", code="unsupported_layout"
        )
    span = 1
    for stride, size in sorted(zip(view.stride, view.shape, strict=True)):
        if size == 1:
            continue
        if stride < span:
            raise PromptEmbedsError(
                "`prompt_embeds` is an overlapping or stride-0 (expanded) view; "
                "send a contiguous tensor.",
                code="unsupported_layout",
            )
        span += (size - 1) * stride
    storage_numel = len(view.buffer) // ITEMSIZE[view.dtype]
    if view.offset + span > storage_numel:
        raise PromptEmbedsError(
            "`prompt_embeds` view reaches past the end of its storage.",
            code="unsupported_layout",
        )
