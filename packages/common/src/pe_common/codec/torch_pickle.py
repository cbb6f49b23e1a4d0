"""Match a torch.save ``data.pkl`` against the template of one tensor, executing nothing.

``pickletools.genops`` only parses opcodes. A tiny stack machine records values for the
handful of opcodes the templates need; it never imports or calls anything. The dense template
(protocol 2, as torch.save writes it; protocols 3-5 framing is also understood) is::

    torch._utils._rebuild_tensor_v2(
        persistent_load(("storage", torch.<Float|Half|BFloat16|...>Storage, key, location, n)),
        storage_offset, size_tuple, stride_tuple, requires_grad, collections.OrderedDict())

and a sparse tensor (COO, CSR, CSC) wraps two or three such dense parts::

    torch._utils._rebuild_sparse_tensor(
        torch.serialization._get_layout("torch.sparse_coo"),
        (indices, values, torch.Size(size), is_coalesced))      # COO
    ... _get_layout("torch.sparse_csr"), (crow_indices, col_indices, values, torch.Size(size)))

Any other global, opcode or shape of the stream is rejected.
"""

from __future__ import annotations

import pickletools
from collections.abc import Iterator
from dataclasses import dataclass

from pe_common.errors import PromptEmbedsError

_REBUILD = ("torch._utils", "_rebuild_tensor_v2")
_REBUILD_SPARSE = ("torch._utils", "_rebuild_sparse_tensor")
_GET_LAYOUT = ("torch.serialization", "_get_layout")
_TORCH_SIZE = ("torch", "Size")
_ORDERED_DICT = ("collections", "OrderedDict")
# Storage classes -> dtype names; only the float ones may hold embeddings, the integer ones
# hold a sparse tensor's indices or are reported as "not a floating-point type".
_STORAGE_DTYPES = {
    ("torch", "FloatStorage"): "float32",
    ("torch", "HalfStorage"): "float16",
    ("torch", "BFloat16Storage"): "bfloat16",
    ("torch", "DoubleStorage"): "float64",
    ("torch", "LongStorage"): "int64",
    ("torch", "IntStorage"): "int32",
    ("torch", "ShortStorage"): "int16",
    ("torch", "CharStorage"): "int8",
    ("torch", "ByteStorage"): "uint8",
    ("torch", "BoolStorage"): "bool",
    ("torch", "ComplexFloatStorage"): "complex64",
    ("torch", "ComplexDoubleStorage"): "complex128",
}
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")
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
_NOT_TENSOR_OPCODES = frozenset(
    (
        "EMPTY_DICT",
        "DICT",
        "SETITEM",
        "SETITEMS",
        "EMPTY_LIST",
        "LIST",
        "APPEND",
        "APPENDS",
        "EMPTY_TUPLE",
        "TUPLE",
        "TUPLE1",
        "TUPLE2",
        "TUPLE3",
        "EMPTY_SET",
        "FROZENSET",
        "ADDITEMS",
        "NONE",
        "NEWTRUE",
        "NEWFALSE",
        "INT",
        "BININT",
        "BININT1",
        "BININT2",
        "LONG",
        "LONG1",
        "LONG4",
        "FLOAT",
        "BINFLOAT",
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        "UNICODE",
        "BINUNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE8",
        "BINBYTES",
        "SHORT_BINBYTES",
        "BINBYTES8",
        "BYTEARRAY8",
    )
)
_MEMO_OPCODES = frozenset(("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "FRAME"))
_MAX_STORAGES = 3
_MAX_KEY_CHARS = 64
_ACCEPTED_PROTOCOLS = range(2, 6)


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
class _Layout:
    name: str


@dataclass(frozen=True)
class _Size:
    dims: tuple[int, ...]


@dataclass(frozen=True)
class _Global:
    module: str
    name: str


class _EmptyOrderedDict:
    """The backward-hooks argument: ``OrderedDict()``."""


_EMPTY_ORDERED_DICT = _EmptyOrderedDict()


def _mismatch() -> PromptEmbedsError:
    return PromptEmbedsError(
        "`prompt_embeds` torch.save payload is not one tensor; only a plain float32/float16/"
        "bfloat16/float64 tensor (dense, or sparse COO/CSR/CSC) saved with torch.save is "
        "accepted.",
        code="unsupported_format",
    )


def _not_a_tensor() -> PromptEmbedsError:
    # vLLM's message for a torch.save of a dict, list, number, ...
    return PromptEmbedsError(
        "`prompt_embeds` payload did not deserialize to a torch.Tensor.",
        code="unsupported_format",
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_tensor_pickle(data: bytes) -> PickledTensor | PickledSparse:
    """Return the tensor record described by ``data``, or raise PromptEmbedsError."""
    ops = list(_opcodes(data))
    built = [name for name, _ in ops if name not in _MEMO_OPCODES and name != "STOP"]
    if built and built[-1] in _NOT_TENSOR_OPCODES:
        raise _not_a_tensor()
    machine = _Machine()
    for name, arg in ops:
        machine.step(name, arg)
    return machine.result()


def _opcodes(data: bytes) -> Iterator[tuple[str, object]]:
    ops = pickletools.genops(data)
    while True:
        try:
            opcode, arg, pos = next(ops)
        except StopIteration:
            raise _mismatch() from None
        except Exception:  # genops raises assorted errors on malformed input
            raise _mismatch() from None
        yield opcode.name, arg
        if opcode.name == "STOP":
            if pos is None or pos + 1 != len(data):
                raise _mismatch()
            return


class _Machine:
    def __init__(self) -> None:
        self.stack: list[object] = []
        self.marks: list[int] = []
        self.memo: dict[int, object] = {}
        self.storages: dict[str, PickledStorage] = {}
        self.num_tensors = 0
        self.sparse: PickledSparse | None = None

    def step(self, name: str, arg: object) -> None:
        handler = _HANDLERS.get(name)
        if handler is None:
            raise _mismatch()
        handler(self, arg)

    def result(self) -> PickledTensor | PickledSparse:
        if self.marks or len(self.stack) != 1:
            raise _mismatch()
        top = self.stack[0]
        if isinstance(top, PickledTensor) and self.num_tensors == 1:
            return top
        if isinstance(top, PickledSparse) and top is self.sparse:
            return top
        raise _mismatch()

    def pop(self) -> object:
        floor = self.marks[-1] if self.marks else 0
        if len(self.stack) <= floor:
            raise _mismatch()
        return self.stack.pop()

    def pop_many(self, count: int) -> tuple[object, ...]:
        items = [self.pop() for _ in range(count)]
        return tuple(reversed(items))

    def top(self) -> object:
        floor = self.marks[-1] if self.marks else 0
        if len(self.stack) <= floor:
            raise _mismatch()
        return self.stack[-1]

    # opcode handlers

    def on_proto(self, arg: object) -> None:
        if arg not in _ACCEPTED_PROTOCOLS:
            raise _mismatch()

    def on_ignore(self, arg: object) -> None:
        pass

    def on_push(self, arg: object) -> None:
        self.stack.append(arg)

    def on_true(self, arg: object) -> None:
        self.stack.append(True)

    def on_false(self, arg: object) -> None:
        self.stack.append(False)

    def on_none(self, arg: object) -> None:
        self.stack.append(None)

    def on_empty_tuple(self, arg: object) -> None:
        self.stack.append(())

    def on_tuple1(self, arg: object) -> None:
        self.stack.append(self.pop_many(1))

    def on_tuple2(self, arg: object) -> None:
        self.stack.append(self.pop_many(2))

    def on_tuple3(self, arg: object) -> None:
        self.stack.append(self.pop_many(3))

    def on_mark(self, arg: object) -> None:
        self.marks.append(len(self.stack))

    def on_tuple(self, arg: object) -> None:
        if not self.marks:
            raise _mismatch()
        start = self.marks.pop()
        items = tuple(self.stack[start:])
        del self.stack[start:]
        self.stack.append(items)

    def on_put(self, arg: object) -> None:
        assert isinstance(arg, int)
        self.memo[arg] = self.top()

    def on_memoize(self, arg: object) -> None:
        self.memo[len(self.memo)] = self.top()

    def on_get(self, arg: object) -> None:
        assert isinstance(arg, int)
        if arg not in self.memo:
            raise _mismatch()
        self.stack.append(self.memo[arg])

    def on_global(self, arg: object) -> None:
        assert isinstance(arg, str)
        module, _, name = arg.partition(" ")
        self.stack.append(_resolve_global(module, name))

    def on_stack_global(self, arg: object) -> None:
        module, name = self.pop_many(2)
        if not isinstance(module, str) or not isinstance(name, str):
            raise _mismatch()
        self.stack.append(_resolve_global(module, name))

    def on_persid(self, arg: object) -> None:
        storage = _storage_record(self.pop())
        known = self.storages.get(storage.key)
        if (known is not None and known != storage) or len(self.storages) >= _MAX_STORAGES:
            raise _mismatch()
        self.storages[storage.key] = storage
        self.stack.append(storage)

    def on_reduce(self, arg: object) -> None:
        func, args = self.pop_many(2)
        if func == _Global(*_ORDERED_DICT) and args == ():
            self.stack.append(_EMPTY_ORDERED_DICT)
        elif func == _Global(*_REBUILD) and self.num_tensors < _MAX_STORAGES:
            self.num_tensors += 1
            self.stack.append(_tensor_record(args))
        elif func == _Global(*_GET_LAYOUT):
            self.stack.append(_layout_record(args))
        elif func == _Global(*_TORCH_SIZE):
            self.stack.append(_size_record(args))
        elif func == _Global(*_REBUILD_SPARSE) and self.sparse is None:
            self.sparse = _sparse_record(args, self.num_tensors)
            self.stack.append(self.sparse)
        else:
            raise _mismatch()


_HANDLERS = {
    "PROTO": _Machine.on_proto,
    "FRAME": _Machine.on_ignore,
    "STOP": _Machine.on_ignore,
    "BINUNICODE": _Machine.on_push,
    "SHORT_BINUNICODE": _Machine.on_push,
    "BININT": _Machine.on_push,
    "BININT1": _Machine.on_push,
    "BININT2": _Machine.on_push,
    "LONG1": _Machine.on_push,
    "NEWTRUE": _Machine.on_true,
    "NEWFALSE": _Machine.on_false,
    "NONE": _Machine.on_none,
    "EMPTY_TUPLE": _Machine.on_empty_tuple,
    "TUPLE1": _Machine.on_tuple1,
    "TUPLE2": _Machine.on_tuple2,
    "TUPLE3": _Machine.on_tuple3,
    "MARK": _Machine.on_mark,
    "TUPLE": _Machine.on_tuple,
    "BINPUT": _Machine.on_put,
    "LONG_BINPUT": _Machine.on_put,
    "MEMOIZE": _Machine.on_memoize,
    "BINGET": _Machine.on_get,
    "LONG_BINGET": _Machine.on_get,
    "GLOBAL": _Machine.on_global,
    "STACK_GLOBAL": _Machine.on_stack_global,
    "BINPERSID": _Machine.on_persid,
    "REDUCE": _Machine.on_reduce,
}


_ACCEPTED_GLOBALS = (_REBUILD, _REBUILD_SPARSE, _GET_LAYOUT, _TORCH_SIZE, _ORDERED_DICT)


def _resolve_global(module: str, name: str) -> _Global:
    """Accept only the template's globals; name the reason for known tensor kinds."""
    key = (module, name)
    if key in _ACCEPTED_GLOBALS or key in _STORAGE_DTYPES:
        return _Global(module, name)
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
        raise _unsupported_dtype()
    raise _mismatch()


def _unsupported_dtype() -> PromptEmbedsError:
    return PromptEmbedsError(
        "`prompt_embeds` dtype must be float32, float16, bfloat16 or float64.",
        code="unsupported_dtype",
    )


def _storage_record(pid: object) -> PickledStorage:
    if not isinstance(pid, tuple) or len(pid) != 5:
        raise _mismatch()
    tag, cls, key, location, numel = pid
    if tag != "storage" or not isinstance(cls, _Global):
        raise _mismatch()
    dtype = _STORAGE_DTYPES.get((cls.module, cls.name))
    if dtype is None:
        raise _unsupported_dtype()
    if (
        not isinstance(key, str)
        or not 0 < len(key) <= _MAX_KEY_CHARS
        or not (key.isascii() and key.isalnum())
    ):
        raise _mismatch()
    if not isinstance(location, str) or not _is_int(numel) or numel < 0:
        raise _mismatch()
    return PickledStorage(dtype, key, location, numel)


def _tensor_record(args: object) -> PickledTensor:
    if not isinstance(args, tuple) or len(args) != 6:
        raise _mismatch()
    storage, offset, size, stride, requires_grad, hooks = args
    if not isinstance(storage, PickledStorage) or hooks is not _EMPTY_ORDERED_DICT:
        raise _mismatch()
    if not isinstance(requires_grad, bool) or not _is_int(offset):
        raise _mismatch()
    if not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride):
        raise _mismatch()
    if not all(_is_int(value) for value in size + stride):
        raise _mismatch()
    return PickledTensor(storage, offset, size, stride, requires_grad)


def _layout_record(args: object) -> _Layout:
    if not isinstance(args, tuple) or len(args) != 1 or not isinstance(args[0], str):
        raise _mismatch()
    layout = _SPARSE_LAYOUTS.get(args[0])
    if layout is None:
        raise PromptEmbedsError(
            "`prompt_embeds` sparse layout must be COO, CSR or CSC.", code="unsupported_layout"
        )
    return _Layout(layout)


def _size_record(args: object) -> _Size:
    if not isinstance(args, tuple) or len(args) != 1 or not isinstance(args[0], tuple):
        raise _mismatch()
    dims = args[0]
    if not all(_is_int(dim) for dim in dims):
        raise _mismatch()
    return _Size(dims)


def _sparse_record(args: object, num_tensors: int) -> PickledSparse:
    if not isinstance(args, tuple) or len(args) != 2:
        raise _mismatch()
    layout, data = args
    if not isinstance(layout, _Layout) or not isinstance(data, tuple):
        raise _mismatch()
    if layout.name == "coo":
        # (indices, values, size) or (indices, values, size, is_coalesced)
        if len(data) == 4 and (isinstance(data[3], bool) or data[3] is None):
            data = data[:3]
        count = 2
    else:
        count = 3  # (compressed_indices, plain_indices, values, size)
    if len(data) != count + 1 or not isinstance(data[-1], _Size):
        raise _mismatch()
    parts = data[:count]
    if not all(isinstance(part, PickledTensor) for part in parts) or num_tensors != count:
        raise _mismatch()
    return PickledSparse(layout.name, data[-1].dims, parts)
