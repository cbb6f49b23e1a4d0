"""BlockManager: allocation, ref counts, chained embeds-aware hashes, LRU reuse of cached blocks."""

from __future__ import annotations

import torch

from pe_engine.core.block_manager import BlockManager
from pe_engine.core.sequence import Sequence
from pe_engine.prompt import Prompt
from pe_engine.sampling_params import SamplingParams

BS = 4
H = 4


def seq_of(ids: list[int], rows: dict[int, float] | None = None, name: str = "r") -> Sequence:
    rows = rows or {}
    mask = [i not in rows for i in range(len(ids))]
    prompt = Prompt(
        token_ids=[t if m else 0 for t, m in zip(ids, mask, strict=True)],
        prompt_embeds=torch.tensor([[rows[i]] * H for i in sorted(rows)]) if rows else None,
        is_token_ids=mask if rows else None,
    )
    return Sequence.from_prompt(name, prompt, SamplingParams(max_tokens=4), branch=0)


def compute_all(bm: BlockManager, seq: Sequence) -> None:
    """Allocate with whatever the cache has, then mark the whole prompt computed."""
    cached = bm.get_computed_blocks(seq)
    num_new = seq.num_tokens - len(cached) * BS
    assert bm.can_allocate(seq, cached, num_new)
    bm.allocate(seq, cached, num_new)
    seq.num_computed_tokens = seq.num_tokens
    bm.cache_full_blocks(seq)


def test_allocate_append_free() -> None:
    bm = BlockManager(8, BS)
    seq = seq_of(list(range(10)))
    assert bm.can_allocate(seq, [], 10)
    bm.allocate(seq, [], 10)
    assert len(seq.block_table) == 3 and bm.num_free_blocks == 5
    seq.num_computed_tokens = 10
    assert bm.can_append(seq, 2) and bm.num_blocks_needed(12) == 3
    bm.append_slots(seq, 3)
    assert len(seq.block_table) == 4
    assert not bm.can_append(seq, 100)
    bm.free(seq)
    assert seq.block_table == [] and bm.num_free_blocks == 8


def test_last_token_is_never_a_hit_and_counters() -> None:
    bm = BlockManager(16, BS)
    first = seq_of(list(range(8)))
    compute_all(bm, first)
    again = seq_of(list(range(8)))
    assert len(bm.get_computed_blocks(again)) == 1  # 8 tokens: block 2 holds the last token
    compute_all(bm, again)
    assert again.num_cached_tokens == 4
    assert bm.prefix_cache_queries == 16 and bm.prefix_cache_hits == 4
    assert bm.blocks[again.block_table[0]].ref_count == 2


def test_embeds_digest_separates_equal_placeholders() -> None:
    bm = BlockManager(16, BS)
    compute_all(bm, seq_of([5] * 9, rows={0: 1.0, 2: 2.0}))
    assert len(bm.get_computed_blocks(seq_of([5] * 9, rows={0: 1.0, 2: 2.0}))) == 2
    assert bm.get_computed_blocks(seq_of([5] * 9, rows={0: 1.0, 2: 3.0})) == []
    assert bm.get_computed_blocks(seq_of([5] * 9, rows={0: 1.0, 1: 2.0})) == []  # other offset
    assert bm.get_computed_blocks(seq_of([5] * 9)) == []  # real id 5 vs placeholder 0
    # A later block matches only behind its own parent chain.
    assert bm.get_computed_blocks(seq_of([6] * 4 + [5] * 5, rows={0: 1.0, 2: 2.0})) == []


def test_content_is_compared_on_a_hit() -> None:
    bm = BlockManager(16, BS)
    seq = seq_of(list(range(9)))
    compute_all(bm, seq)
    block = bm.blocks[seq.block_table[0]]
    block.token_ids = (99, 99, 99, 99)  # as if a hash collided with other contents
    assert bm.get_computed_blocks(seq_of(list(range(9)))) == []


def test_freed_blocks_stay_matchable_until_reused_lru() -> None:
    bm = BlockManager(4, BS)
    a = seq_of(list(range(9)), name="a")
    compute_all(bm, a)
    a_head = a.block_table[0]
    bm.free(a)
    assert bm.num_free_blocks == 4
    assert len(bm.get_computed_blocks(seq_of(list(range(9))))) == 2
    # b needs 3 blocks: the never-cached ones go first, then a's tail block; a's head survives.
    b = seq_of([50 + i for i in range(9)], name="b")
    compute_all(bm, b)
    assert bm.get_computed_blocks(seq_of(list(range(9)))) == [a_head]
    bm.free(b)
    assert bm.num_free_blocks == 4 and sum(blk.ref_count for blk in bm.blocks) == 0


def test_revived_blocks_count_against_free_space() -> None:
    bm = BlockManager(3, BS)
    a = seq_of(list(range(9)))
    compute_all(bm, a)
    bm.free(a)
    again = seq_of(list(range(9)))
    cached = bm.get_computed_blocks(again)
    assert len(cached) == 2
    assert bm.can_allocate(again, cached, 1)
    assert not bm.can_allocate(again, cached, 6)


def test_fork_shares_full_blocks() -> None:
    bm = BlockManager(8, BS)
    parent = seq_of(list(range(10)))
    compute_all(bm, parent)
    child = seq_of(list(range(10)))
    bm.fork(parent, child)
    assert child.block_table == parent.block_table[:2]
    assert child.num_computed_tokens == 8
    assert [bm.blocks[b].ref_count for b in parent.block_table] == [2, 2, 1]
    bm.free(parent)
    bm.free(child)
    assert bm.num_free_blocks == 8


def test_caching_disabled_never_hits() -> None:
    bm = BlockManager(8, BS, enable_prefix_caching=False)
    compute_all(bm, seq_of(list(range(9))))
    assert bm.get_computed_blocks(seq_of(list(range(9)))) == []
    assert bm.prefix_cache_queries == 0
