"""Paged attention: the backend interface, its per-step metadata, and the torch reference.

KV layout: one pool tensor ``[num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim]``
(index 0 = K, 1 = V). A token at position ``p`` of a sequence lives in slot
``block_table[p // block_size] * block_size + p % block_size`` of the per-head flattened
``[num_kv_heads, num_blocks * block_size, head_dim]`` view of its layer's K and V. Head-major
order makes a gathered context ``[heads, len, head_dim]``, the layout attention reads fastest.

Batch layout: the runner flattens the scheduled sequences' new tokens into one run of
``num_tokens`` rows, decode sequences (one new token each) first, then prefill chunks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PrefillSpan:
    """One sequence with several new tokens: rows [start, start + num_tokens) of the batch."""

    start: int
    num_tokens: int
    num_computed_tokens: int  # positions already in the cache before this chunk
    block_table: torch.Tensor  # [num_blocks_of_seq] int64, on the device
    # Derived once per step by TorchAttentionBackend.prepare (chunks after a cached prefix).
    context_slots: torch.Tensor | None = None  # [context_len] cache slots of positions 0..
    causal_mask: torch.Tensor | None = None  # [num_tokens, context_len] bool

    @property
    def context_len(self) -> int:
        return self.num_computed_tokens + self.num_tokens


@dataclass
class AttentionMetadata:
    """Everything attention needs for one forward pass; layers never see sequences.

    Rows [0, num_decode_tokens) are decode sequences (one query each, batched); the rest are
    ``prefills``. ``slot_mapping[i]`` is the cache slot the K/V of row i are written to.
    """

    block_size: int
    slot_mapping: torch.Tensor  # [num_tokens] int64
    num_decode_tokens: int
    decode_block_tables: torch.Tensor | None  # [num_decode, max_blocks] int64 (padded with 0)
    decode_context_lens: torch.Tensor | None  # [num_decode] int64, including the new token
    decode_max_context_len: int
    prefills: list[PrefillSpan]
    # Derived once per step by TorchAttentionBackend.prepare, shared by all layers.
    decode_slots: torch.Tensor | None = None  # [num_decode, max_context_len] cache slots
    decode_mask: torch.Tensor | None = None  # [num_decode, 1, 1, max_context_len] bool

    @property
    def num_tokens(self) -> int:
        return int(self.slot_mapping.shape[0])


@dataclass(slots=True)
class AttentionCall:
    """One layer's :meth:`AttentionBackend.forward` as the backends' hooks see it: its
    arguments plus ``out [num_tokens, num_heads, head_dim]``, which the hooks fill."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    kv_cache: torch.Tensor
    metadata: AttentionMetadata
    scale: float
    out: torch.Tensor

    @property
    def k_pool(self) -> torch.Tensor:
        """The layer's K as ``[num_kv_heads, num_blocks * block_size, head_dim]`` (a view)."""
        return _pool_view(self.kv_cache[0])

    @property
    def v_pool(self) -> torch.Tensor:
        """The layer's V, viewed as :attr:`k_pool` views K."""
        return _pool_view(self.kv_cache[1])


class AttentionBackend(ABC):
    """Writes a step's new K/V into the paged pool and attends each query over its context.

    ``forward`` receives, for the ``num_tokens`` rows of the batch, the rotated queries
    ``q [num_tokens, num_heads, head_dim]`` and new keys/values
    ``k, v [num_tokens, num_kv_heads, head_dim]``, the layer's pool view
    ``kv_cache [2, num_kv_heads, num_blocks, block_size, head_dim]`` and the step metadata.
    The query at position ``p`` attends causally to positions ``0..p`` of its own sequence
    (cached positions included). Returns ``[num_tokens, num_heads * head_dim]``.

    A backend supplies the three steps of every forward: :meth:`_store_kv`, :meth:`_decode`
    and :meth:`_prefill`.
    """

    def prepare(self, metadata: AttentionMetadata) -> None:  # noqa: B027 (optional hook)
        """Derive per-step tensors once, before the layers run (every layer shares them)."""

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        num_tokens, num_heads, head_dim = q.shape
        out = q.new_empty(num_tokens, num_heads, head_dim)
        call = AttentionCall(q, k, v, kv_cache, metadata, scale, out)
        self._store_kv(call)
        if metadata.num_decode_tokens:
            self._decode(call)
        if metadata.prefills:
            self._prefill(call)
        return out.view(num_tokens, num_heads * head_dim)

    @abstractmethod
    def _store_kv(self, call: AttentionCall) -> None:
        """Write row ``i`` of ``call.k`` and ``call.v`` to cache slot ``slot_mapping[i]``."""

    @abstractmethod
    def _decode(self, call: AttentionCall) -> None:
        """Fill ``call.out`` rows ``[0, num_decode_tokens)``: one query per sequence."""

    @abstractmethod
    def _prefill(self, call: AttentionCall) -> None:
        """Fill ``call.out`` for every span of ``call.metadata.prefills``."""


class TorchAttentionBackend(AttentionBackend):
    """Reference backend (CPU and CUDA): index_copy into the pool, gather by slot, SDPA."""

    def prepare(self, metadata: AttentionMetadata) -> None:
        if metadata.num_decode_tokens:
            self._prepare_decode(metadata)
        self._prepare_prefills(metadata)

    @staticmethod
    def _prepare_decode(metadata: AttentionMetadata) -> None:
        assert metadata.decode_block_tables is not None
        assert metadata.decode_context_lens is not None
        lens = metadata.decode_context_lens[:, None]
        positions = torch.arange(metadata.decode_max_context_len, device=lens.device)[None]
        # Padded positions read the sequence's own last slot (finite values), masked out.
        clamped = torch.minimum(positions, lens - 1)
        metadata.decode_slots = _slots(metadata.decode_block_tables, clamped, metadata.block_size)
        metadata.decode_mask = (positions < lens)[:, None, None, :]

    @staticmethod
    def _prepare_prefills(metadata: AttentionMetadata) -> None:
        bs = metadata.block_size
        for span in metadata.prefills:
            if span.num_computed_tokens == 0:
                continue  # attends only to its own new K/V: plain causal
            positions = torch.arange(span.context_len, device=span.block_table.device)
            span.context_slots = _slots(span.block_table[None], positions[None], bs)[0]
            query_positions = positions[span.num_computed_tokens :, None]
            span.causal_mask = positions[None, :] <= query_positions  # bottom-right aligned

    def _store_kv(self, call: AttentionCall) -> None:
        slots = call.metadata.slot_mapping
        call.k_pool.index_copy_(1, slots, call.k.transpose(0, 1))
        call.v_pool.index_copy_(1, slots, call.v.transpose(0, 1))

    def _decode(self, call: AttentionCall) -> None:
        """All decode queries at once over their padded contexts (one masked SDPA)."""
        metadata = call.metadata
        assert metadata.decode_slots is not None, "prepare() was not called"
        keys = _gather(call.k_pool, metadata.decode_slots)  # [D, kv_heads, L, head_dim]
        values = _gather(call.v_pool, metadata.decode_slots)
        # One query per sequence: the query heads sharing a KV head become that head's query
        # rows, so grouped-query attention needs no K/V repeat.
        num_decode = metadata.num_decode_tokens
        _, num_heads, head_dim = call.q.shape
        grouped = call.q[:num_decode].view(num_decode, keys.shape[1], -1, head_dim)
        out = F.scaled_dot_product_attention(
            grouped, keys, values, attn_mask=metadata.decode_mask, scale=call.scale
        )
        call.out[:num_decode] = out.reshape(num_decode, num_heads, head_dim)

    def _prefill(self, call: AttentionCall) -> None:
        for span in call.metadata.prefills:
            rows = slice(span.start, span.start + span.num_tokens)
            call.out[rows] = self._prefill_span(call, span, rows)

    @staticmethod
    def _prefill_span(call: AttentionCall, span: PrefillSpan, rows: slice) -> torch.Tensor:
        """One sequence's chunk (``rows`` of the batch): causal over its cached prefix plus the
        chunk itself."""
        q = call.q[rows].transpose(0, 1).unsqueeze(0)  # [1, heads, n, head_dim]
        if span.context_slots is None:  # nothing cached: the chunk's own K/V
            k = call.k[rows].transpose(0, 1).unsqueeze(0)
            v = call.v[rows].transpose(0, 1).unsqueeze(0)
        else:
            k = _gather(call.k_pool, span.context_slots[None])  # [1, kv_heads, context, head_dim]
            v = _gather(call.v_pool, span.context_slots[None])
        group = q.shape[1] // k.shape[1]
        if group > 1:
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        mask = span.causal_mask
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=call.scale
        )
        return out[0].transpose(0, 1)


def _pool_view(pool: torch.Tensor) -> torch.Tensor:
    """``[num_kv_heads, num_blocks, block_size, head_dim]`` K or V as ``[num_kv_heads, slots,
    head_dim]``; a view (never a copy), so writes through it reach the pool."""
    return pool.view(pool.shape[0], -1, pool.shape[-1])


def _gather(pool: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``[B, kv_heads, L, head_dim]`` K or V of ``slots [B, L]`` from a ``[kv_heads, slots,
    head_dim]`` pool (index_select is several times faster than advanced indexing)."""
    num_kv_heads, _, head_dim = pool.shape
    rows = torch.index_select(pool, 1, slots.reshape(-1))
    return rows.view(num_kv_heads, *slots.shape, head_dim).transpose(0, 1)


def _slots(block_tables: torch.Tensor, positions: torch.Tensor, block_size: int) -> torch.Tensor:
    """Cache slots of ``positions`` ([B, L]) through per-row ``block_tables`` ([B, M])."""
    blocks = torch.gather(block_tables, 1, torch.div(positions, block_size, rounding_mode="floor"))
    return blocks * block_size + positions % block_size
