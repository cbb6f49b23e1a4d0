"""The decoder's checks for a tensor already in memory (the offline ``LLM`` API)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pe_common.codec.decode import check_hidden_size, param_scope
from pe_common.codec.limits import EmbedsLimits
from pe_common.codec.sparse import SparseArrays, check_dense_budget, densify
from pe_common.codec.tensor_view import check_shape
from pe_common.codec.torch_zip import not_floating_error
from pe_common.errors import PromptEmbedsError

if TYPE_CHECKING:
    import torch


_DEFAULT_LIMITS = EmbedsLimits()


def validate_prompt_embeds_tensor(
    t: torch.Tensor,
    *,
    hidden_size: int,
    dtype: torch.dtype,
    limits: EmbedsLimits = _DEFAULT_LIMITS,
    param: str = "prompt_embeds",
) -> torch.Tensor:
    """Check an in-memory tensor like a decoded payload and return an owned CPU copy.

    A leading dimension of 1 of a 3-D tensor is squeezed; the result is a contiguous
    ``(num_tokens, hidden_size)`` tensor in ``dtype`` (any floating source dtype is cast),
    detached, on the CPU, with only finite values.
    """
    import torch

    from pe_common.codec.materialize_torch import check_finite

    check_hidden_size(hidden_size)
    with param_scope(param):
        _check_kind(t)
        layout = _sparse_layout(t)
        if layout is not None:
            t = _densify(t, layout, limits)
        itemsize = max(t.element_size(), dtype.itemsize)
        check_shape(tuple(t.shape), hidden_size=hidden_size, itemsize=itemsize, limits=limits)
        if not t.is_floating_point():
            raise not_floating_error(str(t.dtype), str(dtype))
        source = t.detach()
        if source.dim() == 3:
            source = source[0]
        out = torch.empty(source.shape, dtype=dtype)
        out.copy_(source)
        check_finite(out)
        return out


def _sparse_layout(t: torch.Tensor) -> str | None:
    import torch

    return {torch.sparse_coo: "coo", torch.sparse_csr: "csr", torch.sparse_csc: "csc"}.get(t.layout)


def _densify(t: torch.Tensor, layout: str, limits: EmbedsLimits) -> torch.Tensor:
    """The codec's checked densify (never ``to_dense()`` on unchecked indices)."""
    import torch

    check_dense_budget(tuple(t.shape), limits)
    if not t.is_floating_point():
        return t  # refused below with the dtype message
    source = t.detach().cpu()
    if layout == "coo":
        indices: tuple[torch.Tensor, ...] = (source._indices(),)
        values = source._values()
    elif layout == "csr":
        indices, values = (source.crow_indices(), source.col_indices()), source.values()
    else:
        indices, values = (source.ccol_indices(), source.row_indices()), source.values()
    arrays = SparseArrays(
        layout,
        tuple(t.shape),
        tuple(index.numpy() for index in indices),
        values.to(torch.float32).numpy(),
    )
    return torch.from_numpy(densify(arrays, limits))


def _check_kind(t: object) -> None:
    import torch

    if not isinstance(t, torch.Tensor):
        raise PromptEmbedsError(
            "`prompt_embeds` must be a torch.Tensor.", code="unsupported_tensor_kind"
        )
    if t.layout != torch.strided and _sparse_layout(t) is None:
        raise PromptEmbedsError(
            "`prompt_embeds` sparse layout must be COO, CSR or CSC.", code="unsupported_layout"
        )
    if t.is_quantized or t.is_nested or t.is_meta:
        raise PromptEmbedsError(
            "`prompt_embeds` must be a plain tensor (not quantized, nested or meta).",
            code="unsupported_tensor_kind",
        )
