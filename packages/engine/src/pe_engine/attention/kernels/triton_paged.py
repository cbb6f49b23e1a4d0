"""Triton kernels over the head-major paged KV pool (see :mod:`pe_engine.attention.backend`).

Per layer the pool is ``[2, num_kv_heads, num_blocks, block_size, head_dim]``: the K (or V) of
KV head ``h`` at cache slot ``s`` lives at ``h * num_slots * head_dim + s * head_dim``.

- :func:`store_kv` writes new K/V at ``slot_mapping`` (slot -1 skips the row: padded rows of a
  CUDA-graph batch never write).
- :func:`paged_decode` attends one query per sequence over its block table, the query heads of a
  KV head together (GQA), the context split across programs (flash-decoding) and combined by a
  second kernel, so a batch of one still fills the GPU. The grid depends only on the batch size
  and ``split_len``, never on a context length, so the launch can be captured in a CUDA graph.
- :func:`paged_prefill` attends each prefill chunk causally over its cached prefix (read
  through the block table: prefix-cache hits, earlier chunks) and over its own new K/V.

The kernels also run in Triton's interpreter (``TRITON_INTERPRET=1``) on CPU tensors, which is
how the tests check them against the torch reference without a GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

DECODE_BLOCK_N = 32  # context positions per decode inner step
_MIN_SPLIT_TOKENS = 256  # a decode split shorter than this costs more to combine than it gains
_MAX_SPLITS = 32


@dataclass(frozen=True)
class DecodeSplit:
    """How decode divides each context: ``num_splits`` programs of ``split_len`` positions."""

    num_splits: int
    split_len: int


def decode_split(
    max_context_len: int, num_seqs: int, num_kv_heads: int, target_programs: int = 256
) -> DecodeSplit:
    """Enough splits to give about ``target_programs`` programs, none shorter than 256 positions
    (one split for short contexts). ``split_len`` is a multiple of :data:`DECODE_BLOCK_N`."""
    by_length = triton.cdiv(max(max_context_len, 1), _MIN_SPLIT_TOKENS)
    by_occupancy = triton.cdiv(target_programs, num_seqs * num_kv_heads)
    num_splits = max(1, min(by_length, by_occupancy, _MAX_SPLITS))
    split_len = triton.cdiv(triton.cdiv(max(max_context_len, 1), num_splits), DECODE_BLOCK_N)
    split_len *= DECODE_BLOCK_N
    return DecodeSplit(triton.cdiv(max(max_context_len, 1), split_len), split_len)


# ---- KV write ---------------------------------------------------------------------------------


@triton.jit
def _store_kv_kernel(
    K,
    V,
    K_CACHE,
    V_CACHE,
    SLOT_MAPPING,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ch,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)
    slot = tl.load(SLOT_MAPPING + token)
    if slot < 0:
        return
    d = tl.arange(0, BLOCK_D)
    mask = d < HEAD_DIM
    k = tl.load(K + token * stride_kt + head * stride_kh + d, mask=mask)
    v = tl.load(V + token * stride_vt + head * stride_vh + d, mask=mask)
    dst = head * stride_ch + slot * HEAD_DIM + d
    tl.store(K_CACHE + dst, k, mask=mask)
    tl.store(V_CACHE + dst, v, mask=mask)


def store_kv(
    k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write ``k, v [num_tokens, num_kv_heads, head_dim]`` at ``slot_mapping [num_tokens]``
    into a layer's ``kv_cache``; rows with slot -1 are skipped."""
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    _check_rows(k, v)
    k_cache, v_cache = _pool_views(kv_cache)
    _store_kv_kernel[(num_tokens, num_kv_heads)](
        k,
        v,
        k_cache,
        v_cache,
        slot_mapping,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        k_cache.stride(0),
        HEAD_DIM=head_dim,
        BLOCK_D=triton.next_power_of_2(head_dim),
    )


# ---- decode -----------------------------------------------------------------------------------


@triton.jit
def _paged_decode_kernel(
    Q,
    K_CACHE,
    V_CACHE,
    BLOCK_TABLES,
    CONTEXT_LENS,
    O_PART,
    M_PART,
    L_PART,
    scale,
    stride_qt,
    stride_qh,
    stride_ch,
    stride_bt,
    split_len,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    num_heads = tl.num_programs(1) * GROUP
    context_len = tl.load(CONTEXT_LENS + seq).to(tl.int32)
    lo = split * split_len
    hi = tl.minimum(lo + split_len, context_len)

    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    heads = kv_head * GROUP + g
    g_mask = g < GROUP
    d_mask = d < HEAD_DIM
    q_ptrs = Q + seq * stride_qt + heads[:, None] * stride_qh + d[None, :]
    q = tl.load(q_ptrs, mask=g_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
    q = q * scale
    k_base = K_CACHE + kv_head.to(tl.int64) * stride_ch
    v_base = V_CACHE + kv_head.to(tl.int64) * stride_ch
    table = BLOCK_TABLES + seq.to(tl.int64) * stride_bt

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        pos = start + tl.arange(0, BLOCK_N)
        valid = pos < hi  # the first position of every step is valid: m_i becomes finite
        block = tl.load(table + pos // BLOCK_SIZE, mask=valid, other=0)
        offsets = (block * BLOCK_SIZE + pos % BLOCK_SIZE)[:, None] * HEAD_DIM + d[None, :]
        kv_mask = valid[:, None] & d_mask[None, :]
        k = tl.load(k_base + offsets, mask=kv_mask, other=0.0).to(tl.float32)
        s = tl.sum(q[:, None, :] * k[None, :, :], axis=2)  # [BLOCK_G, BLOCK_N]
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        v = tl.load(v_base + offsets, mask=kv_mask, other=0.0).to(tl.float32)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
        m_i = m_new

    # An empty split (context shorter than its start) leaves m = -inf, l = 0, acc = 0.
    part = (seq * num_heads + heads) * NUM_SPLITS + split
    tl.store(M_PART + part, m_i, mask=g_mask)
    tl.store(L_PART + part, l_i, mask=g_mask)
    o_ptrs = O_PART + part[:, None] * HEAD_DIM + d[None, :]
    tl.store(o_ptrs, acc, mask=g_mask[:, None] & d_mask[None, :])


@triton.jit
def _decode_reduce_kernel(
    O_PART,
    M_PART,
    L_PART,
    OUT,
    stride_ot,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    base = (seq * tl.num_programs(1) + head) * NUM_SPLITS
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    s_mask = s < NUM_SPLITS
    d_mask = d < HEAD_DIM
    m = tl.load(M_PART + base + s, mask=s_mask, other=float("-inf"))
    l_part = tl.load(L_PART + base + s, mask=s_mask, other=0.0)
    m_max = tl.maximum(tl.max(m, axis=0), -1e30)  # finite even when every split is empty
    weight = tl.where(l_part > 0, tl.exp(m - m_max), 0.0)
    o_ptrs = O_PART + (base + s)[:, None] * HEAD_DIM + d[None, :]
    o = tl.load(o_ptrs, mask=s_mask[:, None] & d_mask[None, :], other=0.0)
    numerator = tl.sum(weight[:, None] * o, axis=0)
    denominator = tl.sum(weight * l_part, axis=0)
    out = numerator / tl.where(denominator > 0, denominator, 1.0)  # context 0 (padding): zeros
    out_ptrs = OUT + seq * stride_ot + head * stride_oh + d
    tl.store(out_ptrs, out.to(OUT.dtype.element_ty), mask=d_mask)


def paged_decode(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    split: DecodeSplit,
    out: torch.Tensor,
) -> None:
    """``out[i] = attention(q[i], context of sequence i)`` for ``q, out [num_seqs, num_heads,
    head_dim]``, ``block_tables [num_seqs, max_blocks]``, ``context_lens [num_seqs]`` (the new
    token included; 0 gives a zero row). ``split`` must cover the longest context."""
    num_seqs, num_heads, head_dim = q.shape
    if num_seqs == 0:
        return
    _check_rows(q, out)
    k_cache, v_cache = _pool_views(kv_cache)
    num_kv_heads = k_cache.shape[0]
    group = num_heads // num_kv_heads
    num_parts = num_seqs * num_heads * split.num_splits
    o_part = torch.empty(num_parts, head_dim, dtype=torch.float32, device=q.device)
    m_part = torch.empty(num_parts, dtype=torch.float32, device=q.device)
    l_part = torch.empty(num_parts, dtype=torch.float32, device=q.device)
    block_d = triton.next_power_of_2(head_dim)
    _paged_decode_kernel[(num_seqs, num_kv_heads, split.num_splits)](
        q,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        o_part,
        m_part,
        l_part,
        scale,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        block_tables.stride(0),
        split.split_len,
        BLOCK_SIZE=kv_cache.shape[3],
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        GROUP=group,
        BLOCK_G=triton.next_power_of_2(group),
        BLOCK_N=DECODE_BLOCK_N,
        NUM_SPLITS=split.num_splits,
    )
    _decode_reduce_kernel[(num_seqs, num_heads)](
        o_part,
        m_part,
        l_part,
        out,
        out.stride(0),
        out.stride(1),
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        NUM_SPLITS=split.num_splits,
        BLOCK_S=triton.next_power_of_2(split.num_splits),
    )


# ---- prefill ----------------------------------------------------------------------------------


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
    _check_rows(q, k, v, out)
    k_cache, v_cache = _pool_views(kv_cache)
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


# ---- helpers ----------------------------------------------------------------------------------


def _pool_views(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[num_kv_heads, num_slots, head_dim]`` K and V views of a layer's pool."""
    assert kv_cache.is_contiguous(), "the KV pool must be contiguous"
    _, num_kv_heads, num_blocks, block_size, head_dim = kv_cache.shape
    pool = kv_cache.view(2, num_kv_heads, num_blocks * block_size, head_dim)
    return pool[0], pool[1]


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


def _check_rows(*tensors: torch.Tensor) -> None:
    for t in tensors:
        assert t.stride(-1) == 1, "the head dimension must be contiguous"
