"""CpuAttentionBackend: the torch reference with decode attention read in place from the pool.

Decode steps dominate generation, and the reference backend's decode copies every context row
of every sequence out of the paged pool at every layer (``index_select``), pads the copies to
the longest context and runs a masked SDPA over them. The C kernel in
``kernels/cpu_attention.c`` instead walks each sequence's block table and reads each K and V row
once where it lies. Prefill, and the K/V writes, stay on the reference path (prefill attention
is a matrix product SDPA already does well).

The kernel is compiled once per machine with the system C compiler (``cc``, else ``gcc``) into
``$PE_CACHE_DIR/kernels`` (default ``~/.cache/pe/kernels``) and loaded with ctypes; ``available()``
says whether that worked. It covers float32 pools on the CPU; the runner picks this backend
for ``attention_backend="auto"`` on such a pool and keeps the reference otherwise.
"""

from __future__ import annotations

import ctypes
import logging
from functools import cache

import torch

from pe_engine.attention.backend import AttentionCall, AttentionMetadata, TorchAttentionBackend
from pe_engine.native_kernels import FLAGS, KernelBuildError, addresses, build_library

log = logging.getLogger("pe_engine")

_SOURCE = "cpu_attention.c"
_FLAGS = list(FLAGS)  # a module global: tests add a bad flag to see the build fail
_I64, _PTR = ctypes.c_int64, ctypes.c_void_p


class CpuAttentionBackend(TorchAttentionBackend):
    """Reference prefill, in-place paged decode (float32 CPU pools)."""

    def __init__(self) -> None:
        self._decode_f32 = _library().pe_paged_decode_f32
        self._store_kv_f32 = _library().pe_store_kv_f32

    def kernel_addresses(self) -> tuple[int, ...]:
        """The K/V store's and the paged decode's addresses (models/int8_layers.py)."""
        return addresses(self._store_kv_f32, self._decode_f32)

    def _store_kv(self, call: AttentionCall) -> None:
        k, v = call.k, call.v
        if k.stride() != v.stride() or k.stride(2) != 1 or k.stride(1) != k.shape[2]:
            super()._store_kv(call)  # rows not laid out as the kernel reads them
            return
        k_pool = call.k_pool
        num_kv_heads, num_slots, head_dim = k_pool.shape
        self._store_kv_f32(
            k.data_ptr(), v.data_ptr(), k.stride(0), k_pool.data_ptr(), call.v_pool.data_ptr(),
            call.metadata.slot_mapping.data_ptr(), k.shape[0], num_kv_heads, head_dim, num_slots,
        )  # fmt: skip

    def prepare(self, metadata: AttentionMetadata) -> None:
        # Decode reads the block tables directly: only prefill spans need derived tensors.
        self._prepare_prefills(metadata)

    def _decode(self, call: AttentionCall) -> None:
        metadata = call.metadata
        tables, lens = metadata.decode_block_tables, metadata.decode_context_lens
        assert tables is not None and lens is not None
        q, k_pool = call.q, call.k_pool
        if q.dtype != torch.float32 or q.device.type != "cpu":
            raise TypeError(f"CpuAttentionBackend needs a float32 CPU pool, not {q.dtype}")
        num_seqs = metadata.num_decode_tokens
        q = q[:num_seqs].contiguous()
        _, num_heads, head_dim = q.shape
        num_kv_heads, num_slots, _ = k_pool.shape
        # The kernel writes the decode rows of the (contiguous) output in place.
        status = self._decode_f32(
            q.data_ptr(),
            k_pool.data_ptr(),
            call.v_pool.data_ptr(),
            call.out.data_ptr(),
            tables.data_ptr(),
            lens.data_ptr(),
            num_seqs,
            num_heads,
            num_kv_heads,
            head_dim,
            num_slots // metadata.block_size,
            metadata.block_size,
            tables.stride(0),
            call.scale,
            torch.get_num_threads(),
        )
        if status != 0:
            raise MemoryError("paged decode attention could not allocate its scratch space")


def available() -> bool:
    """Whether the kernel is built (or builds now) and loads on this machine."""
    try:
        _library()
    except KernelBuildError as exc:
        log.info("CPU paged-attention kernel unavailable (%s); using the torch reference", exc)
        return False
    return True


def _library() -> ctypes.CDLL:
    """The loaded kernel library; raises KernelBuildError (the same reason every time: a
    failed build is not retried in this process)."""
    outcome = _build()
    if isinstance(outcome, KernelBuildError):
        raise KernelBuildError(*outcome.args)
    return outcome


@cache
def _build() -> ctypes.CDLL | KernelBuildError:
    try:
        return _build_and_load()
    except KernelBuildError as exc:
        return exc


def _build_and_load() -> ctypes.CDLL:
    lib = build_library("pe_engine.attention.kernels", _SOURCE, _FLAGS)
    fn = lib.pe_paged_decode_f32
    fn.restype = ctypes.c_int32
    fn.argtypes = [_PTR] * 6 + [_I64] * 7 + [ctypes.c_float, ctypes.c_int32]
    store = lib.pe_store_kv_f32
    store.restype = None
    store.argtypes = [_PTR, _PTR, _I64] + [_PTR] * 3 + [_I64] * 4
    return lib
