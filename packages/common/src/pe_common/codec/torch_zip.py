"""torch.save zip archives: locate the records, match the pickle, view the storage bytes."""

from __future__ import annotations

import numpy as np

from pe_common.codec.limits import ITEMSIZE, EmbedsLimits
from pe_common.codec.materialize_numpy import to_array
from pe_common.codec.sparse import SparseArrays, dense_view, densify, invalid_sparse
from pe_common.codec.tensor_view import TensorView, contiguous_stride
from pe_common.codec.torch_pickle import parse_tensor_pickle
from pe_common.codec.torch_records import FLOAT_DTYPES, PickledSparse, PickledTensor
from pe_common.codec.zip_reader import read_stored_zip
from pe_common.errors import PromptEmbedsError

ZIP_MAGIC = b"PK\x03\x04"
LEGACY_PICKLE_MAGIC = b"\x80\x02"
STORAGE_ITEMSIZE = {
    **ITEMSIZE,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
    "complex64": 8,
    "complex128": 16,
}


def _missing_record() -> PromptEmbedsError:
    return PromptEmbedsError(
        "`prompt_embeds` torch.save archive lacks its data.pkl or storage record.",
        code="unsupported_format",
    )


def parse_torch_zip(buf: memoryview, limits: EmbedsLimits, target_dtype: str) -> TensorView:
    """Return a view of the one tensor a torch.save archive holds (nothing is unpickled).

    A sparse tensor is checked and densified into a new float32 buffer.
    """
    entries = read_stored_zip(buf)
    prefix = _archive_prefix(entries)
    pickle_bytes = entries[f"{prefix}/data.pkl"]
    if len(pickle_bytes) > limits.max_pickle_bytes:
        raise PromptEmbedsError(
            "`prompt_embeds` torch.save data.pkl is larger than one tensor needs.",
            code="unsupported_format",
        )
    _check_byteorder(entries.get(f"{prefix}/byteorder"))
    record = parse_tensor_pickle(bytes(pickle_bytes))
    if isinstance(record, PickledSparse):
        return dense_view(densify(_sparse_arrays(record, entries, prefix, target_dtype), limits))
    check_float(record.storage.dtype, target_dtype)
    return _storage_view(record, entries, prefix)


def check_float(dtype: str, target_dtype: str) -> None:
    """vLLM casts any floating payload to the model's dtype and refuses the rest."""
    if dtype not in FLOAT_DTYPES:
        raise not_floating_error(f"torch.{dtype}", f"torch.{target_dtype}")


def not_floating_error(dtype: str, target_dtype: str) -> PromptEmbedsError:
    """vLLM's words for a payload whose dtype is not floating-point (full torch names)."""
    return PromptEmbedsError(
        f"`prompt_embeds` dtype {dtype} is not a floating-point type, cannot safely cast to "
        f"the model's dtype {target_dtype}.",
        code="unsupported_dtype",
    )


def _storage_view(tensor: PickledTensor, entries: dict[str, memoryview], prefix: str) -> TensorView:
    storage = tensor.storage
    record = entries.get(f"{prefix}/data/{storage.key}")
    if record is None:
        raise _missing_record()
    if len(record) != storage.numel * STORAGE_ITEMSIZE[storage.dtype]:
        raise PromptEmbedsError(
            "`prompt_embeds` torch.save storage record size does not match its element count.",
            code="size_mismatch",
        )
    return TensorView(record, storage.dtype, tensor.size, tensor.stride, tensor.offset)


def _sparse_arrays(
    sparse: PickledSparse, entries: dict[str, memoryview], prefix: str, target_dtype: str
) -> SparseArrays:
    *index_parts, value_part = (_storage_view(part, entries, prefix) for part in sparse.parts)
    index_dtypes = {view.dtype for view in index_parts}
    allowed = ("int64",) if sparse.layout == "coo" else ("int64", "int32")
    if len(index_dtypes) != 1 or not index_dtypes <= set(allowed):
        raise invalid_sparse("indices must be int64 (or int32 for CSR/CSC), all of one dtype.")
    check_float(value_part.dtype, target_dtype)
    indices = tuple(_index_array(view) for view in index_parts)
    values = to_array(_packed(value_part), np.dtype(np.float32))
    return SparseArrays(sparse.layout, sparse.size, indices, values)


def _packed(view: TensorView) -> TensorView:
    """A sparse part must be a plain contiguous run inside its storage."""
    itemsize = STORAGE_ITEMSIZE[view.dtype]
    storage_numel = len(view.buffer) // itemsize
    if (
        any(size < 0 for size in view.shape)
        or view.offset < 0
        or not _is_row_major(view)
        or view.offset + view.numel > storage_numel
    ):
        raise invalid_sparse("parts must be contiguous and inside their storage.")
    return view


def _is_row_major(view: TensorView) -> bool:
    # The stride of a dimension of size 1 is never used, and torch leaves it arbitrary.
    expected = contiguous_stride(view.shape)
    return all(
        size == 1 or stride == want
        for size, stride, want in zip(view.shape, view.stride, expected, strict=True)
    )


def _index_array(view: TensorView) -> np.ndarray:
    view = _packed(view)
    itemsize = STORAGE_ITEMSIZE[view.dtype]
    flat = np.frombuffer(
        view.buffer, dtype=f"<i{itemsize}", count=view.numel, offset=view.offset * itemsize
    )
    return flat.reshape(view.shape)


def _archive_prefix(entries: dict[str, memoryview]) -> str:
    prefixes = [
        name[: -len("/data.pkl")]
        for name in entries
        if name.endswith("/data.pkl") and name.count("/") == 1
    ]
    if len(prefixes) != 1:
        raise _missing_record()
    return prefixes[0]


def _check_byteorder(record: memoryview | None) -> None:
    # torch.save writes "little" on little-endian hosts; archives without it predate the record.
    if record is not None and (len(record) != 6 or bytes(record) != b"little"):
        raise PromptEmbedsError(
            "`prompt_embeds` torch.save archive is not little-endian.", code="unsupported_format"
        )
