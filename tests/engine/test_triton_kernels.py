"""The Triton paged kernels and TritonAttentionBackend against the torch reference.

Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set here before
triton is imported) on CPU tensors; with one they are compiled and run on it. Shapes are small:
a few sequences, block size 16, 1-4 KV heads, head dim 16-32, block tables drawn from a
shuffled pool, context lengths that are not multiples of the block size.
"""

from __future__ import annotations

import os
import random

import pytest
import torch
import torch.nn.functional as F

from pe_engine.attention.backend import AttentionMetadata, PrefillSpan, TorchAttentionBackend

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed (tox -e triton installs it)")

# Imported after TRITON_INTERPRET is set: triton reads it when the kernels are defined.
from pe_engine.attention.kernels import triton_paged
from pe_engine.attention.triton_backend import TritonAttentionBackend

pytestmark = [pytest.mark.triton, pytest.mark.usefixtures("torch_single_thread")]

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BLOCK_SIZE = 16
NUM_BLOCKS = 48
HEAD_SHAPES = [(4, 2, 16), (4, 4, 32), (4, 1, 32), (2, 2, 24)]  # heads, kv heads, head dim


class Pool:
    """A random layer pool ``[2, kv_heads, blocks, block_size, head_dim]`` whose blocks are
    handed out in shuffled order (block tables are not contiguous)."""

    def __init__(self, num_kv_heads: int, head_dim: int, seed: int = 0, dtype=torch.float32):
        g = torch.Generator().manual_seed(seed)
        shape = (2, num_kv_heads, NUM_BLOCKS, BLOCK_SIZE, head_dim)
        self.cache = torch.randn(shape, generator=g).to(DEVICE, dtype)
        self.free = list(range(NUM_BLOCKS))
        random.Random(seed).shuffle(self.free)

    def table(self, num_positions: int) -> list[int]:
        return [self.free.pop() for _ in range(-(-num_positions // BLOCK_SIZE))]

    def kv(self, table: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``[kv_heads, length, head_dim]`` K and V of positions 0..length-1."""
        slots = torch.tensor(slots_of(table, 0, length), device=DEVICE)
        num_kv_heads, head_dim = self.cache.shape[1], self.cache.shape[-1]
        pool = self.cache.view(2, num_kv_heads, -1, head_dim)
        return pool[0][:, slots], pool[1][:, slots]


def slots_of(table: list[int], start: int, end: int) -> list[int]:
    return [table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in range(start, end)]


def reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, first_position: int, scale: float
) -> torch.Tensor:
    """float64 causal attention of queries ``[n, heads, dim]`` at positions first_position..
    over ``k, v [kv_heads, context, dim]``."""
    group = q.shape[1] // k.shape[0]
    k = k.double().repeat_interleave(group, 0)
    v = v.double().repeat_interleave(group, 0)
    positions = torch.arange(k.shape[1], device=q.device)
    query_positions = first_position + torch.arange(q.shape[0], device=q.device)
    mask = positions[None, :] <= query_positions[:, None]
    out = F.scaled_dot_product_attention(q.double().transpose(0, 1), k, v, mask, scale=scale)
    return out.transpose(0, 1)


def padded(tables: list[list[int]]) -> torch.Tensor:
    width = max(len(t) for t in tables)
    return torch.tensor([t + [0] * (width - len(t)) for t in tables], device=DEVICE)


def test_decode_split_covers_every_context() -> None:
    for max_len in [1, 31, 32, 255, 256, 257, 1000, 4096, 40_000]:
        for num_seqs in [1, 3, 64]:
            split = triton_paged.decode_split(max_len, num_seqs, 8, target_programs=264)
            assert split.split_len % triton_paged.DECODE_BLOCK_N == 0
            assert split.num_splits * split.split_len >= max_len
            assert (split.num_splits - 1) * split.split_len < max_len  # no split starts past it
            assert 1 <= split.num_splits <= 32
    assert triton_paged.decode_split(4096, 1, 8, 264).num_splits == 16
    assert triton_paged.decode_split(4096, 64, 8, 264).num_splits == 1
    assert triton_paged.decode_split(100, 1, 8, 264).num_splits == 1


def test_store_kv_writes_slots_and_skips_minus_one() -> None:
    pool = Pool(num_kv_heads=2, head_dim=24)
    expected = pool.cache.clone()
    num_tokens = 11
    qkv = torch.randn(num_tokens, 3, 2, 24, device=DEVICE)
    k, v = qkv[:, 1], qkv[:, 2]  # strided rows, as split off a fused projection
    table = pool.table(40)
    slot_list = slots_of(table, 3, 3 + num_tokens)
    for row in (0, 4, 10):
        slot_list[row] = -1
    slot_mapping = torch.tensor(slot_list, device=DEVICE)
    triton_paged.store_kv(k, v, pool.cache, slot_mapping)
    flat = expected.view(2, 2, -1, 24)
    for row, slot in enumerate(slot_list):
        if slot >= 0:
            flat[0][:, slot] = k[row]
            flat[1][:, slot] = v[row]
    assert torch.equal(pool.cache, expected)


@pytest.mark.parametrize(("num_heads", "num_kv_heads", "head_dim"), HEAD_SHAPES)
@pytest.mark.parametrize("split", [None, triton_paged.DecodeSplit(3, 32)])
def test_paged_decode_matches_reference(
    num_heads: int, num_kv_heads: int, head_dim: int, split: triton_paged.DecodeSplit | None
) -> None:
    pool = Pool(num_kv_heads, head_dim, seed=head_dim)
    lens = [1, 17, 45, 70, 16, 33]
    tables = [pool.table(n) for n in lens]
    q = torch.randn(len(lens), num_heads, head_dim, device=DEVICE)
    out = torch.full_like(q, float("nan"))
    split = split or triton_paged.decode_split(max(lens), len(lens), num_kv_heads)
    scale = head_dim**-0.5
    context_lens = torch.tensor(lens, device=DEVICE)
    triton_paged.paged_decode(q, pool.cache, padded(tables), context_lens, scale, split, out)
    for i, (table, n) in enumerate(zip(tables, lens, strict=True)):
        k, v = pool.kv(table, n)
        expected = reference(q[i : i + 1], k, v, n - 1, scale)[0]
        torch.testing.assert_close(out[i], expected.float())


def test_paged_decode_padded_rows_give_zeros_and_leave_real_rows_alone() -> None:
    """CUDA-graph padding: rows with context 0 (and slot -1) are zeros; real rows unchanged."""
    pool = Pool(2, 16, seed=3)
    lens = [20, 5]
    tables = [pool.table(n) for n in lens]
    q = torch.randn(4, 4, 16, device=DEVICE)
    split = triton_paged.DecodeSplit(2, 32)
    real = torch.empty(2, 4, 16, device=DEVICE)
    table_tensor = padded(tables)
    triton_paged.paged_decode(
        q[:2], pool.cache, table_tensor, torch.tensor(lens, device=DEVICE), 0.25, split, real
    )
    out = torch.full_like(q, float("nan"))
    graph_tables = torch.zeros(4, 8, dtype=torch.long, device=DEVICE)
    graph_tables[:2, : table_tensor.shape[1]] = table_tensor
    graph_lens = torch.tensor([*lens, 0, 0], device=DEVICE)
    triton_paged.paged_decode(q, pool.cache, graph_tables, graph_lens, 0.25, split, out)
    assert torch.equal(out[:2], real)
    assert torch.equal(out[2:], torch.zeros_like(out[2:]))


def _prefill_case(num_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype):
    """Four chunks: fresh (20 tokens), after 19 cached, after 32 cached (block aligned, 33
    tokens), fresh (1 token); new K/V already in the pool, as the backend stores it first."""
    pool = Pool(num_kv_heads, head_dim, seed=num_heads + head_dim, dtype=dtype)
    chunks = [(0, 20), (19, 5), (32, 33), (0, 1)]  # cached, new
    rows = sum(n for _, n in chunks)
    q = torch.randn(rows, num_heads, head_dim, device=DEVICE).to(dtype)
    k = torch.randn(rows, num_kv_heads, head_dim, device=DEVICE).to(dtype)
    v = torch.randn(rows, num_kv_heads, head_dim, device=DEVICE).to(dtype)
    spans, flat_tables, tables, start = [], [], [], 0
    for cached, n in chunks:
        table = pool.table(cached + n)
        slots = torch.tensor(slots_of(table, cached, cached + n), device=DEVICE)
        view = pool.cache.view(2, num_kv_heads, -1, head_dim)
        view[0][:, slots] = k[start : start + n].transpose(0, 1)
        view[1][:, slots] = v[start : start + n].transpose(0, 1)
        spans.append([start, n, cached, len(flat_tables)])
        if cached:
            flat_tables.extend(table)
        tables.append(table)
        start += n
    return pool, chunks, tables, q, k, v, spans, flat_tables


@pytest.mark.parametrize(("num_heads", "num_kv_heads", "head_dim"), HEAD_SHAPES)
def test_paged_prefill_matches_reference(num_heads: int, num_kv_heads: int, head_dim: int) -> None:
    case = _prefill_case(num_heads, num_kv_heads, head_dim, torch.float32)
    pool, chunks, tables, q, k, v, spans, flat_tables = case
    out = torch.full_like(q, float("nan"))
    scale = head_dim**-0.5
    triton_paged.paged_prefill(
        q, k, v, pool.cache, torch.tensor(spans, device=DEVICE),
        torch.tensor(flat_tables, device=DEVICE), 33, scale, out,
    )  # fmt: skip
    for (cached, n), table, (start, *_) in zip(chunks, tables, spans, strict=True):
        kc, vc = pool.kv(table, cached + n)
        expected = reference(q[start : start + n], kc, vc, cached, scale)
        torch.testing.assert_close(out[start : start + n], expected.float())


def test_bfloat16_kernels_match_the_float64_reference() -> None:
    pool, chunks, tables, q, k, v, spans, flat_tables = _prefill_case(4, 2, 32, torch.bfloat16)
    out = torch.empty_like(q)
    triton_paged.paged_prefill(
        q, k, v, pool.cache, torch.tensor(spans, device=DEVICE),
        torch.tensor(flat_tables, device=DEVICE), 33, 32**-0.5, out,
    )  # fmt: skip
    lens = [cached + n for cached, n in chunks]
    last_rows = [start + n - 1 for start, n, _, _ in spans]
    decoded = torch.empty(len(chunks), 4, 32, dtype=torch.bfloat16, device=DEVICE)
    triton_paged.paged_decode(
        q[last_rows], pool.cache, padded(tables), torch.tensor(lens, device=DEVICE), 32**-0.5,
        triton_paged.DecodeSplit(3, 32), decoded,
    )  # fmt: skip
    for i, ((cached, n), table, (start, *_)) in enumerate(zip(chunks, tables, spans, strict=True)):
        kc, vc = pool.kv(table, cached + n)
        expected = reference(q[start : start + n], kc, vc, cached, 32**-0.5).to(torch.bfloat16)
        torch.testing.assert_close(out[start : start + n], expected, atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(decoded[i], expected[-1], atol=2e-2, rtol=2e-2)


def _mixed_metadata(pool: Pool, decode_lens: list[int], chunks: list[tuple[int, int]]):
    """A runner-shaped batch: decode rows first, then prefill chunks (cached, new)."""
    slot_mapping, decode_tables, spans = [], [], []
    for n in decode_lens:
        table = pool.table(n)
        decode_tables.append(table)
        slot_mapping.extend(slots_of(table, n - 1, n))
    row = len(decode_lens)
    for cached, n in chunks:
        table = pool.table(cached + n)
        slot_mapping.extend(slots_of(table, cached, cached + n))
        spans.append(PrefillSpan(row, n, cached, torch.tensor(table, device=DEVICE)))
        row += n
    return AttentionMetadata(
        block_size=BLOCK_SIZE,
        slot_mapping=torch.tensor(slot_mapping, device=DEVICE),
        num_decode_tokens=len(decode_lens),
        decode_block_tables=padded(decode_tables) if decode_lens else None,
        decode_context_lens=torch.tensor(decode_lens, device=DEVICE) if decode_lens else None,
        decode_max_context_len=max(decode_lens, default=0),
        prefills=spans,
    )


@pytest.mark.parametrize(
    ("decode_lens", "chunks"),
    [
        ([7, 40, 16], [(0, 20), (17, 9), (0, 3)]),  # decodes, fresh and cached-prefix chunks
        ([], [(0, 18), (0, 5)]),  # fresh prefills only (the FlashAttention case)
        ([1, 33], []),  # decodes only (the CUDA-graph case)
    ],
)
@pytest.mark.parametrize(("num_heads", "num_kv_heads", "head_dim"), [(4, 2, 32), (4, 4, 16)])
def test_backend_matches_torch_backend(
    decode_lens: list[int],
    chunks: list[tuple[int, int]],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
) -> None:
    pool = Pool(num_kv_heads, head_dim, seed=5)
    metadata = _mixed_metadata(pool, decode_lens, chunks)
    num_tokens = metadata.num_tokens
    q = torch.randn(num_tokens, num_heads, head_dim, device=DEVICE)
    kv = torch.randn(num_tokens, 2, num_kv_heads, head_dim, device=DEVICE)
    outputs, caches = [], []
    for backend in (TorchAttentionBackend(), TritonAttentionBackend(use_flash_attn=False)):
        cache = pool.cache.clone()
        backend.prepare(metadata)
        outputs.append(backend.forward(q, kv[:, 0], kv[:, 1], cache, metadata, head_dim**-0.5))
        caches.append(cache)
    torch.testing.assert_close(outputs[1], outputs[0])
    assert torch.equal(caches[1], caches[0])
