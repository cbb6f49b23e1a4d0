"""Paged decode: one query per sequence over its block table, flash-decoding style (the
context split across programs, then one reduce kernel combines the splits)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from pe_engine.attention.kernels.triton_paged.pool import check_rows, pool_views

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
    check_rows(q, out)
    k_cache, v_cache = pool_views(kv_cache)
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
