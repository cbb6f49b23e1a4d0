"""Match a torch.save ``data.pkl`` against the template of one dense tensor, executing nothing.

``pickletools.genops`` only parses opcodes. A tiny stack machine records values for the
handful of opcodes the template needs; it never imports or calls anything. The template
(protocol 2, as torch.save writes it; protocols 3-5 framing is also understood) is::

    torch._utils._rebuild_tensor_v2(
        persistent_load(("storage", torch.<Float|Half|BFloat16>Storage, key, location, numel)),
        storage_offset, size_tuple, stride_tuple, requires_grad, collections.OrderedDict())

Any other global, opcode or shape of the stream is rejected.
"""

from __future__ import annotations

import pickletools
from collections.abc import Iterator
from dataclasses import dataclass

from pe_common.errors import PromptEmbedsError

_REBUILD = ("torch._utils", "_rebuild_tensor_v2")
_ORDERED_DICT = ("collections", "OrderedDict")
_STORAGE_DTYPES = {
    ("torch", "FloatStorage"): "float32",
    ("torch", "HalfStorage"): "float16",
    ("torch", "BFloat16Storage"): "bfloat16",
}
_LAYOUT_GLOBALS = {
    ("torch._utils", "_rebuild_sparse_tensor"),
    ("torch._utils", "_rebuild_sparse_csr_tensor"),
    ("torch.serialization", "_get_layout"),
}
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
class _Global:
    module: str
    name: str


class _EmptyOrderedDict:
    """The backward-hooks argument: ``OrderedDict()``."""


_EMPTY_ORDERED_DICT = _EmptyOrderedDict()


def _mismatch() -> PromptEmbedsError:
    return PromptEmbedsError(
        "`prompt_embeds` torch.save payload is not one dense tensor; only a plain "
        "float32/float16/bfloat16 tensor saved with torch.save is accepted.",
        code="unsupported_format",
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_tensor_pickle(data: bytes) -> PickledTensor:
    """Return the tensor record described by ``data``, or raise PromptEmbedsError."""
    machine = _Machine()
    for name, arg in _opcodes(data):
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
        self.storage: PickledStorage | None = None
        self.tensor: PickledTensor | None = None

    def step(self, name: str, arg: object) -> None:
        handler = _HANDLERS.get(name)
        if handler is None:
            raise _mismatch()
        handler(self, arg)

    def result(self) -> PickledTensor:
        if self.marks or len(self.stack) != 1 or not isinstance(self.stack[0], PickledTensor):
            raise _mismatch()
        return self.stack[0]

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
        if self.storage is not None:
            raise _mismatch()
        self.storage = _storage_record(self.pop())
        self.stack.append(self.storage)

    def on_reduce(self, arg: object) -> None:
        func, args = self.pop_many(2)
        if func == _Global(*_ORDERED_DICT) and args == ():
            self.stack.append(_EMPTY_ORDERED_DICT)
        elif func == _Global(*_REBUILD) and self.tensor is None:
            self.tensor = _tensor_record(args)
            self.stack.append(self.tensor)
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


def _resolve_global(module: str, name: str) -> _Global:
    """Accept only the template's globals; name the reason for known tensor kinds."""
    key = (module, name)
    if key in (_REBUILD, _ORDERED_DICT) or key in _STORAGE_DTYPES:
        return _Global(module, name)
    if key in _LAYOUT_GLOBALS:
        raise PromptEmbedsError(
            "`prompt_embeds` is a sparse tensor; only dense (strided) tensors are accepted.",
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
        "`prompt_embeds` dtype must be float32, float16 or bfloat16.", code="unsupported_dtype"
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
