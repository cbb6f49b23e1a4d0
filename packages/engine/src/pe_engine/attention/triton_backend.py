"""TritonAttentionBackend: the CUDA attention backend over the paged KV pool.

Triton writes the new K/V and runs paged decode and paged prefill (chunks after a cached
prefix read it through their block table); FlashAttention, when installed, takes prefill steps
whose chunks have nothing cached (half-precision only). This module imports triton at load:
the runner imports it only for a CUDA device (or a test, with ``TRITON_INTERPRET=1`` on CPU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pe_engine.attention.backend import AttentionBackend, AttentionCall, AttentionMetadata
from pe_engine.attention.kernels import triton_paged
from pe_engine.models.batch import to_device

_FLASH_DTYPES = (torch.float16, torch.bfloat16)


@dataclass
class _PrefillPlan:
    """Per-step prefill tensors shared by every layer (built once by ``prepare``)."""

    metadata: AttentionMetadata
    spans: torch.Tensor  # [num_spans, 4] int64: first row, new tokens, cached tokens, table offset
    block_tables: torch.Tensor  # flat block tables of the spans with a cached prefix
    max_num_tokens: int
    # int32 [num_spans + 1], only when FlashAttention is installed and no span has a cached prefix
    cu_seqlens: torch.Tensor | None


class TritonAttentionBackend(AttentionBackend):
    """Triton paged kernels; FlashAttention varlen for cache-free prefills when installed.

    ``target_programs`` is the number of decode programs to aim for when splitting contexts
    (about two per streaming multiprocessor).
    """

    def __init__(self, *, use_flash_attn: bool = True, target_programs: int | None = None) -> None:
        self._flash_attn_varlen = _flash_attn_varlen() if use_flash_attn else None
        self._target_programs = target_programs or _default_target_programs()
        self._plan: _PrefillPlan | None = None

    def prepare(self, metadata: AttentionMetadata) -> None:
        self._plan = None
        if not metadata.prefills:
            return
        rows, tables, offset = [], [], 0
        for span in metadata.prefills:
            rows.append((span.start, span.num_tokens, span.num_computed_tokens, offset))
            if span.num_computed_tokens:
                tables.append(span.block_table)
                offset += int(span.block_table.shape[0])
        device = metadata.slot_mapping.device
        if tables:
            block_tables = torch.cat(tables)
        else:  # nothing cached: the kernel never reads the table, it only needs a pointer
            block_tables = torch.zeros(1, dtype=torch.long, device=device)
        lengths = [n for _, n, _, _ in rows]
        is_flash = self._flash_attn_varlen is not None and not tables
        self._plan = _PrefillPlan(
            metadata=metadata,
            spans=to_device(rows, torch.long, device),
            block_tables=block_tables,
            max_num_tokens=max(lengths),
            cu_seqlens=_cu_seqlens(lengths, device) if is_flash else None,
        )

    def _store_kv(self, call: AttentionCall) -> None:
        triton_paged.store_kv(call.k, call.v, call.kv_cache, call.metadata.slot_mapping)

    def _decode(self, call: AttentionCall) -> None:
        metadata, d = call.metadata, call.metadata.num_decode_tokens
        assert metadata.decode_block_tables is not None
        assert metadata.decode_context_lens is not None
        split = triton_paged.decode_split(
            metadata.decode_max_context_len, d, call.k.shape[1], self._target_programs
        )
        triton_paged.paged_decode(
            call.q[:d],
            call.kv_cache,
            metadata.decode_block_tables,
            metadata.decode_context_lens,
            call.scale,
            split,
            call.out[:d],
        )

    def _prefill(self, call: AttentionCall) -> None:
        plan = self._plan
        assert plan is not None and plan.metadata is call.metadata, "prepare() was not called"
        q, k, v, scale, out = call.q, call.k, call.v, call.scale, call.out
        d = call.metadata.num_decode_tokens
        flash = self._flash_attn_varlen
        if flash is not None and plan.cu_seqlens is not None and q.dtype in _FLASH_DTYPES:
            # Prefill rows follow the decode rows, chunk after chunk: one varlen call.
            out[d:] = flash(
                q[d:],
                k[d:],
                v[d:],
                cu_seqlens_q=plan.cu_seqlens,
                cu_seqlens_k=plan.cu_seqlens,
                max_seqlen_q=plan.max_num_tokens,
                max_seqlen_k=plan.max_num_tokens,
                softmax_scale=scale,
                causal=True,
            )
            return
        triton_paged.paged_prefill(
            q, k, v, call.kv_cache, plan.spans, plan.block_tables, plan.max_num_tokens, scale, out
        )


def _flash_attn_varlen() -> Callable[..., Any] | None:
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func  # type: ignore[no-any-return]


def _default_target_programs() -> int:
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return 2 * props.multi_processor_count
    return 8  # the interpreter runs programs one by one: few splits


def _cu_seqlens(lengths: list[int], device: torch.device) -> torch.Tensor:
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    return to_device(offsets, torch.int32, device)
