"""Densify a sparse (COO, CSR or CSC) prompt-embeddings tensor safely, without torch.

vLLM densifies sparse payloads with ``to_dense()``; its CVE-2025-62164 came from doing that on
unchecked indices, and a valid sparse tensor with a huge declared shape is a decompression
bomb. Here the declared dense size is checked against the decode budget before anything is
allocated, every index is checked against that size, and the dense array is written by numpy
fancy indexing on checked indices (duplicate COO entries are summed, as ``to_dense`` does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pe_common.codec.limits import EmbedsLimits
from pe_common.codec.tensor_view import MAX_DIM, TensorView, contiguous_view, format_shape
from pe_common.errors import PromptEmbedsError

LAYOUTS = ("coo", "csr", "csc")
# The densified array is float32 whatever the payload dtype: bfloat16 and float16 widen exactly.
DENSE_DTYPE = "float32"
DENSE_ITEMSIZE = 4


@dataclass(frozen=True)
class SparseArrays:
    """A sparse tensor's parts as arrays: ``indices`` are (COO) the index matrix, or
    (CSR/CSC) the compressed then the plain indices; ``values`` are already float32."""

    layout: str
    size: tuple[int, ...]
    indices: tuple[np.ndarray, ...]
    values: np.ndarray


def invalid_sparse(detail: str) -> PromptEmbedsError:
    return PromptEmbedsError(
        f"`prompt_embeds` could not be deserialized as a torch tensor: sparse tensor {detail}",
        code="invalid_sparse",
    )


def check_dense_budget(size: tuple[int, ...], limits: EmbedsLimits) -> None:
    """The declared dense size must fit the decode budget before anything is allocated."""
    if len(size) > 8 or any(dim < 0 or dim > MAX_DIM for dim in size):
        raise PromptEmbedsError(
            "`prompt_embeds` shape has a negative or oversized dimension.", code="invalid_shape"
        )
    num_bytes = DENSE_ITEMSIZE
    for dim in size:
        num_bytes *= dim
    if num_bytes > limits.max_bytes:
        raise PromptEmbedsError(
            f"`prompt_embeds` declares shape {format_shape(size)}, which would allocate "
            f"{num_bytes} bytes ({num_bytes / 2**20:.1f} MiB) once densified, exceeding the "
            f"{limits.max_bytes} byte limit.",
            code="too_large",
        )


def densify(sparse: SparseArrays, limits: EmbedsLimits) -> np.ndarray:
    """Return ``sparse`` as a float32 array after checking its size and every index."""
    check_dense_budget(sparse.size, limits)
    if sparse.layout == "coo":
        return _coo_to_dense(sparse)
    return _compressed_to_dense(sparse)


def dense_view(dense: np.ndarray) -> TensorView:
    raw = dense.reshape(-1).data.cast("B")
    return contiguous_view(raw, DENSE_DTYPE, tuple(dense.shape))


def _coo_to_dense(sparse: SparseArrays) -> np.ndarray:
    (indices,) = sparse.indices
    size, values = sparse.size, sparse.values
    if indices.ndim != 2 or not 0 < indices.shape[0] <= len(size):
        raise invalid_sparse("indices must be a (sparse_dims, nnz) matrix.")
    sparse_dims, nnz = indices.shape
    if values.shape != (nnz, *size[sparse_dims:]):
        raise invalid_sparse("values do not match its indices and size.")
    dense = np.zeros(size, dtype=np.float32)
    if nnz == 0:
        return dense
    bounds = np.asarray(size[:sparse_dims], dtype=np.int64).reshape(-1, 1)
    if bool((indices < 0).any()) or bool((indices >= bounds).any()):
        raise invalid_sparse("has an index out of range.")
    if nnz > max(1, dense.size):
        raise invalid_sparse("has more entries than its dense size.")
    flat = np.ravel_multi_index(tuple(indices), size[:sparse_dims])
    target = dense.reshape(-1, *size[sparse_dims:])
    if np.unique(flat).size == nnz:
        target[flat] = values
    else:  # an uncoalesced tensor: duplicates add up, as to_dense() does
        np.add.at(target, flat, values)
    return dense


def _compressed_to_dense(sparse: SparseArrays) -> np.ndarray:
    """CSR compresses rows (plain indices are columns); CSC compresses columns."""
    compressed, plain = sparse.indices
    size, values = sparse.size, sparse.values
    if len(size) != 2 or compressed.ndim != 1 or plain.ndim != 1 or values.ndim != 1:
        raise invalid_sparse("in CSR/CSC layout must be 2-D without batch or dense dimensions.")
    num_major, num_minor = size if sparse.layout == "csr" else size[::-1]
    nnz = values.shape[0]
    if compressed.shape[0] != num_major + 1 or plain.shape[0] != nnz:
        raise invalid_sparse("index lengths do not match its size and values.")
    steps = np.diff(compressed)
    if compressed[0] != 0 or compressed[-1] != nnz or bool((steps < 0).any()):
        raise invalid_sparse("compressed indices must rise from 0 to the number of values.")
    if nnz and (bool((plain < 0).any()) or bool((plain >= num_minor).any())):
        raise invalid_sparse("has an index out of range.")
    major = np.repeat(np.arange(num_major, dtype=np.int64), steps)
    # Within each row (CSR) or column (CSC) the plain indices must strictly increase.
    rising = np.diff(plain.astype(np.int64)) > 0
    if not bool((rising | (np.diff(major) != 0)).all()):
        raise invalid_sparse("indices must be sorted and distinct within each row or column.")
    dense = np.zeros(size, dtype=np.float32)
    if sparse.layout == "csr":
        dense[major, plain] = values
    else:
        dense[plain, major] = values
    return dense
