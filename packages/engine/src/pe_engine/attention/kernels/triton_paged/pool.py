"""The layer pool's K and V views, and the kernel that writes a step's new K/V into them."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def pool_views(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[num_kv_heads, num_slots, head_dim]`` K and V views of a layer's pool."""
    assert kv_cache.is_contiguous(), "the KV pool must be contiguous"
    _, num_kv_heads, num_blocks, block_size, head_dim = kv_cache.shape
    pool = kv_cache.view(2, num_kv_heads, num_blocks * block_size, head_dim)
    return pool[0], pool[1]


def check_rows(*tensors: torch.Tensor) -> None:
    for t in tensors:
        assert t.stride(-1) == 1, "the head dimension must be contiguous"


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
    check_rows(k, v)
    k_cache, v_cache = pool_views(kv_cache)
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
