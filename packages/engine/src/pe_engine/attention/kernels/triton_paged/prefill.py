"""Paged prefill: each chunk attends causally over its cached prefix (through the block
table) and over its own new K/V, with an online softmax."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from pe_engine.attention.kernels.triton_paged.pool import check_rows, pool_views


@triton.jit
def _paged_prefill_kernel(
    Q,
    K,
    V,
    K_CACHE,
    V_CACHE,
    SPANS,
    BLOCK_TABLES,
    OUT,
    scale,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ot,
    stride_oh,
    stride_ch,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    m_block = tl.program_id(0)
    head = tl.program_id(1)
    span = tl.program_id(2)
    q_start = tl.load(SPANS + span * 4).to(tl.int32)
    num_tokens = tl.load(SPANS + span * 4 + 1).to(tl.int32)
    num_computed = tl.load(SPANS + span * 4 + 2).to(tl.int32)
    table = BLOCK_TABLES + tl.load(SPANS + span * 4 + 3)
    m_lo = m_block * BLOCK_M
    if m_lo >= num_tokens:
        return
    kv_head = head // GROUP
    rows = m_lo + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    row_mask = rows < num_tokens
    d_mask = d < HEAD_DIM
    q_ptrs = Q + (q_start + rows)[:, None] * stride_qt + head * stride_qh + d[None, :]
    q = tl.load(q_ptrs, mask=row_mask[:, None] & d_mask[None, :], other=0.0).to(DOT_DTYPE)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    # 1. The cached prefix, positions [0, num_computed), through the block table. Every row
    # sees every column, so position 0 makes m_i finite before any fully masked step.
    k_base = K_CACHE + kv_head.to(tl.int64) * stride_ch
    v_base = V_CACHE + kv_head.to(tl.int64) * stride_ch
    for start in range(0, num_computed, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        valid = cols < num_computed
        block = tl.load(table + cols // BLOCK_SIZE, mask=valid, other=0)
        slots = block * BLOCK_SIZE + cols % BLOCK_SIZE
        kv_mask = valid[:, None] & d_mask[None, :]
        k = tl.load(k_base + slots[:, None] * HEAD_DIM + d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + slots[:, None] * HEAD_DIM + d[None, :], mask=kv_mask, other=0.0)
        k, v = k.to(DOT_DTYPE), v.to(DOT_DTYPE)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
        s = tl.where(valid[None, :], s, float("-inf"))
        m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc, DOT_PRECISION)

    # 2. The chunk's own K/V, causal: row i sees new tokens 0..i (column 0 is always visible).
    for start in range(0, tl.minimum(num_tokens, m_lo + BLOCK_M), BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        valid = cols < num_tokens
        kv_mask = valid[:, None] & d_mask[None, :]
        k_ptrs = K + (q_start + cols)[:, None] * stride_kt + kv_head * stride_kh + d[None, :]
        v_ptrs = V + (q_start + cols)[:, None] * stride_vt + kv_head * stride_vh + d[None, :]
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0).to(DOT_DTYPE)
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0).to(DOT_DTYPE)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
        s = tl.where(valid[None, :] & (cols[None, :] <= rows[:, None]), s, float("-inf"))
        m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc, DOT_PRECISION)

    out = acc / l_i[:, None]
    out_ptrs = OUT + (q_start + rows)[:, None] * stride_ot + head * stride_oh + d[None, :]
    tl.store(out_ptrs, out.to(OUT.dtype.element_ty), mask=row_mask[:, None] & d_mask[None, :])


@triton.jit
def _softmax_step(s, v, m_i, l_i, acc, DOT_PRECISION: tl.constexpr):
    """One online-softmax update of (max, sum, output) with scores ``s`` and values ``v``."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp(m_i - m_new)
    p = tl.exp(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


def paged_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache: torch.Tensor,
    spans: torch.Tensor,
    block_tables: torch.Tensor,
    max_num_tokens: int,
    scale: float,
    out: torch.Tensor,
) -> None:
    """Causal attention of prefill chunks, writing ``out`` rows of each chunk.

    ``q [num_rows, num_heads, head_dim]`` and ``k, v [num_rows, num_kv_heads, head_dim]`` hold
    the batch's new rows; ``spans [num_spans, 4]`` (int64) gives per chunk its first row, its
    number of new tokens, its number of cached positions and the offset of its block table in
    the flat ``block_tables`` (only read when cached positions > 0). ``max_num_tokens`` is the
    longest chunk (a host int: it sizes the grid).
    """
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_spans = spans.shape[0]
    if num_spans == 0:
        return
    check_rows(q, k, v, out)
    k_cache, v_cache = pool_views(kv_cache)
    group = num_heads // k_cache.shape[0]
    block_m = 32 if max_num_tokens > 16 else 16
    dot_dtype = _dot_dtype(q.dtype)
    grid = (triton.cdiv(max_num_tokens, block_m), num_heads, num_spans)
    _paged_prefill_kernel[grid](
        q,
        k,
        v,
        k_cache,
        v_cache,
        spans,
        block_tables,
        out,
        scale,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        BLOCK_SIZE=kv_cache.shape[3],
        HEAD_DIM=head_dim,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        GROUP=group,
        BLOCK_M=block_m,
        BLOCK_N=32,
        DOT_DTYPE=dot_dtype,
        DOT_PRECISION="ieee" if dot_dtype == tl.float32 else "tf32",
    )


def _dot_dtype(dtype: torch.dtype) -> tl.dtype:
    """The operand type of the prefill matmuls: the model's, except float32 for bfloat16 in
    the interpreter (its bfloat16 ``tl.dot`` multiplies the raw 16-bit patterns)."""
    if dtype == torch.float16:
        return tl.float16
    if dtype == torch.bfloat16 and not _interpreting():
        return tl.bfloat16
    return tl.float32


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
