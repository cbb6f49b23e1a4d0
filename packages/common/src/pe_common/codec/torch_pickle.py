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

from pe_common.codec.torch_records import (
    EMPTY_ORDERED_DICT,
    GET_LAYOUT,
    ORDERED_DICT,
    REBUILD,
    REBUILD_SPARSE,
    TORCH_SIZE,
    Global,
    PickledSparse,
    PickledStorage,
    PickledTensor,
    layout_record,
    mismatch,
    resolve_global,
    size_record,
    sparse_record,
    storage_record,
    tensor_record,
)
from pe_common.errors import PromptEmbedsError

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
_ACCEPTED_PROTOCOLS = range(2, 6)


def _not_a_tensor() -> PromptEmbedsError:
    # vLLM's message for a torch.save of a dict, list, number, ...
    return PromptEmbedsError(
        "`prompt_embeds` payload did not deserialize to a torch.Tensor.",
        code="unsupported_format",
    )


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
            raise mismatch() from None
        except Exception:  # genops raises assorted errors on malformed input
            raise mismatch() from None
        yield opcode.name, arg
        if opcode.name == "STOP":
            if pos is None or pos + 1 != len(data):
                raise mismatch()
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
            raise mismatch()
        handler(self, arg)

    def result(self) -> PickledTensor | PickledSparse:
        if self.marks or len(self.stack) != 1:
            raise mismatch()
        top = self.stack[0]
        if isinstance(top, PickledTensor) and self.num_tensors == 1:
            return top
        if isinstance(top, PickledSparse) and top is self.sparse:
            return top
        raise mismatch()

    def pop(self) -> object:
        floor = self.marks[-1] if self.marks else 0
        if len(self.stack) <= floor:
            raise mismatch()
        return self.stack.pop()

    def pop_many(self, count: int) -> tuple[object, ...]:
        items = [self.pop() for _ in range(count)]
        return tuple(reversed(items))

    def top(self) -> object:
        floor = self.marks[-1] if self.marks else 0
        if len(self.stack) <= floor:
            raise mismatch()
        return self.stack[-1]

    # opcode handlers

    def on_proto(self, arg: object) -> None:
        if arg not in _ACCEPTED_PROTOCOLS:
            raise mismatch()

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
            raise mismatch()
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
            raise mismatch()
        self.stack.append(self.memo[arg])

    def on_global(self, arg: object) -> None:
        assert isinstance(arg, str)
        module, _, name = arg.partition(" ")
        self.stack.append(resolve_global(module, name))

    def on_stack_global(self, arg: object) -> None:
        module, name = self.pop_many(2)
        if not isinstance(module, str) or not isinstance(name, str):
            raise mismatch()
        self.stack.append(resolve_global(module, name))

    def on_persid(self, arg: object) -> None:
        storage = storage_record(self.pop())
        known = self.storages.get(storage.key)
        if (known is not None and known != storage) or len(self.storages) >= _MAX_STORAGES:
            raise mismatch()
        self.storages[storage.key] = storage
        self.stack.append(storage)

    def on_reduce(self, arg: object) -> None:
        func, args = self.pop_many(2)
        if func == Global(*ORDERED_DICT) and args == ():
            self.stack.append(EMPTY_ORDERED_DICT)
        elif func == Global(*REBUILD) and self.num_tensors < _MAX_STORAGES:
            self.num_tensors += 1
            self.stack.append(tensor_record(args))
        elif func == Global(*GET_LAYOUT):
            self.stack.append(layout_record(args))
        elif func == Global(*TORCH_SIZE):
            self.stack.append(size_record(args))
        elif func == Global(*REBUILD_SPARSE) and self.sparse is None:
            self.sparse = sparse_record(args, self.num_tensors)
            self.stack.append(self.sparse)
        else:
            raise mismatch()


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
