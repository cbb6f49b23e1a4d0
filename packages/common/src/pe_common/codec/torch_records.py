"""The records a torch.save ``data.pkl`` may build: the globals it may name, and checked
constructors for storages, dense tensors and sparse tensors (nothing is imported or called).
"""

from __future__ import annotations

from dataclasses import dataclass

from pe_common.errors import PromptEmbedsError

REBUILD = ("torch._utils", "_rebuild_tensor_v2")
REBUILD_SPARSE = ("torch._utils", "_rebuild_sparse_tensor")
GET_LAYOUT = ("torch.serialization", "_get_layout")
TORCH_SIZE = ("torch", "Size")
ORDERED_DICT = ("collections", "OrderedDict")
# torch's storage classes -> dtype names. Only the float ones may hold embeddings; the others
# hold a sparse tensor's indices or are reported as "not a floating-point type".
_FLOAT_STORAGES = {
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "DoubleStorage": "float64",
}
_OTHER_STORAGES = {
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
_STORAGE_DTYPES = {
    ("torch", name): dtype for name, dtype in (_FLOAT_STORAGES | _OTHER_STORAGES).items()
}
FLOAT_DTYPES = tuple(_FLOAT_STORAGES.values())
_SPARSE_LAYOUTS = {"torch.sparse_coo": "coo", "torch.sparse_csr": "csr", "torch.sparse_csc": "csc"}
_OLD_LAYOUT_GLOBALS = {("torch._utils", "_rebuild_sparse_csr_tensor")}
_KIND_GLOBALS = {
    ("torch._utils", name)
    for name in (
        "_rebuild_qtensor",
        "_rebuild_nested_tensor",
        "_rebuild_meta_tensor_no_storage",
        "_rebuild_parameter",
        "_rebuild_parameter_with_state",
        "_rebuild_wrapper_subclass",
        "_rebuild_device_tensor_from_numpy",
        "_rebuild_device_tensor_from_cpu_tensor",
        "_rebuild_from_type",
        "_rebuild_from_type_v2",
        "_rebuild_subclass",
    )
}
# The opcodes that can build a top-level object other than a tensor (a dict, list, tuple,
# number, string, ...): a payload ending in one of them is answered as vLLM answers it.
_MAX_KEY_CHARS = 64


@dataclass(frozen=True)
class PickledStorage:
    dtype: str
    key: str
    location: str
    numel: int


@dataclass(frozen=True)
class PickledTensor:
    storage: PickledStorage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    requires_grad: bool


@dataclass(frozen=True)
class PickledSparse:
    """A sparse tensor: its layout ("coo", "csr", "csc"), dense size and dense parts."""

    layout: str
    size: tuple[int, ...]
    parts: tuple[PickledTensor, ...]


@dataclass(frozen=True)
class Layout:
    name: str


@dataclass(frozen=True)
class Size:
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Global:
    module: str
    name: str


class EmptyOrderedDict:
    """The backward-hooks argument: ``OrderedDict()``."""


EMPTY_ORDERED_DICT = EmptyOrderedDict()


def mismatch() -> PromptEmbedsError:
    return PromptEmbedsError(
        "`prompt_embeds` torch.save payload is not one tensor; only a plain float32/float16/"
        "bfloat16/float64 tensor (dense, or sparse COO/CSR/CSC) saved with torch.save is "
        "accepted.",
        code="unsupported_format",
    )


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_ACCEPTED_GLOBALS = (REBUILD, REBUILD_SPARSE, GET_LAYOUT, TORCH_SIZE, ORDERED_DICT)


def resolve_global(module: str, name: str) -> Global:
    """Accept only the template's globals; name the reason for known tensor kinds."""
    key = (module, name)
    if key in _ACCEPTED_GLOBALS or key in _STORAGE_DTYPES:
        return Global(module, name)
    if key in _OLD_LAYOUT_GLOBALS:
        raise PromptEmbedsError(
            "`prompt_embeds` is a sparse tensor in a format older torch versions wrote; "
            "save it with a current torch (COO, CSR or CSC).",
            code="unsupported_layout",
        )
    if key in _KIND_GLOBALS:
        raise PromptEmbedsError(
            "`prompt_embeds` must be a plain tensor (not quantized, nested, meta, a Parameter "
            "or a subclass).",
            code="unsupported_tensor_kind",
        )
    if key == ("torch._utils", "_rebuild_tensor_v3") or (
        module in ("torch", "torch.storage") and name.endswith("Storage")
    ):
        raise unsupported_dtype()
    raise mismatch()


def unsupported_dtype() -> PromptEmbedsError:
    return PromptEmbedsError(
        "`prompt_embeds` dtype must be float32, float16, bfloat16 or float64.",
        code="unsupported_dtype",
    )


def storage_record(pid: object) -> PickledStorage:
    if not isinstance(pid, tuple) or len(pid) != 5:
        raise mismatch()
    tag, cls, key, location, numel = pid
    if tag != "storage" or not isinstance(cls, Global):
        raise mismatch()
    dtype = _STORAGE_DTYPES.get((cls.module, cls.name))
    if dtype is None:
        raise unsupported_dtype()
    if (
        not isinstance(key, str)
        or not 0 < len(key) <= _MAX_KEY_CHARS
        or not (key.isascii() and key.isalnum())
    ):
        raise mismatch()
    if not isinstance(location, str) or not is_int(numel) or numel < 0:
        raise mismatch()
    return PickledStorage(dtype, key, location, numel)


def tensor_record(args: object) -> PickledTensor:
    if not isinstance(args, tuple) or len(args) != 6:
        raise mismatch()
    storage, offset, size, stride, requires_grad, hooks = args
    if not isinstance(storage, PickledStorage) or hooks is not EMPTY_ORDERED_DICT:
        raise mismatch()
    if not isinstance(requires_grad, bool) or not is_int(offset):
        raise mismatch()
    if not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride):
        raise mismatch()
    if not all(is_int(value) for value in size + stride):
        raise mismatch()
    return PickledTensor(storage, offset, size, stride, requires_grad)


def layout_record(args: object) -> Layout:
    if not isinstance(args, tuple) or len(args) != 1 or not isinstance(args[0], str):
        raise mismatch()
    layout = _SPARSE_LAYOUTS.get(args[0])
    if layout is None:
        raise PromptEmbedsError(
            "`prompt_embeds` sparse layout must be COO, CSR or CSC.", code="unsupported_layout"
        )
    return Layout(layout)


def size_record(args: object) -> Size:
    if not isinstance(args, tuple) or len(args) != 1 or not isinstance(args[0], tuple):
        raise mismatch()
    dims = args[0]
    if not all(is_int(dim) for dim in dims):
        raise mismatch()
    return Size(dims)


def sparse_record(args: object, num_tensors: int) -> PickledSparse:
    if not isinstance(args, tuple) or len(args) != 2:
        raise mismatch()
    layout, data = args
    if not isinstance(layout, Layout) or not isinstance(data, tuple):
        raise mismatch()
    if layout.name == "coo":
        # (indices, values, size) or (indices, values, size, is_coalesced)
        if len(data) == 4 and (isinstance(data[3], bool) or data[3] is None):
            data = data[:3]
        count = 2
    else:
        count = 3  # (compressed_indices, plain_indices, values, size)
    if len(data) != count + 1 or not isinstance(data[-1], Size):
        raise mismatch()
    parts = data[:count]
    if not all(isinstance(part, PickledTensor) for part in parts) or num_tensors != count:
        raise mismatch()
    return PickledSparse(layout.name, data[-1].dims, parts)
