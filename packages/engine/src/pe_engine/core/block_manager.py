"""Paged KV-cache bookkeeping: block tables, ref counts and the embeds-aware prefix cache."""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pe_engine.core.sequence import Sequence

_ROOT_HASH = b"\x00" * 32
_SALT_TAG = b"pe-cache-salt\x00"


class Block:
    """One KV block; a full computed block also carries its prefix-cache identity."""

    __slots__ = ("block_hash", "block_id", "embeds_digest", "parent_hash", "ref_count", "token_ids")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.reset()

    def reset(self) -> None:
        self.block_hash: bytes | None = None
        self.parent_hash: bytes | None = None
        self.token_ids: tuple[int, ...] = ()
        self.embeds_digest: bytes | None = None


class BlockManager:
    """Allocates fixed-size KV blocks to sequences and shares full blocks through a prefix cache.

    A full block's identity is a chained hash of its parent's hash, its token ids and a digest of
    the prompt-embeds rows (and their offsets) inside it, so equal placeholder ids carrying
    different embeddings never collide. A sequence's ``cache_salt`` replaces the first block's
    parent, so the chain keeps it in every later block: different salts never share a block.
    Freed blocks stay matchable until reused (oldest first).
    """

    def __init__(
        self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True
    ) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Insertion order is reuse order: the front is evicted first.
        self.free_block_ids: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.hash_to_block_id: dict[bytes, int] = {}
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self._seq_hashes: dict[int, list[bytes]] = {}
        # The embeds digest of each of those blocks (None without embeds), computed once: hashing
        # the rows is most of a prefix-cache lookup (1024 x 576 float32 rows: 2.4 MB).
        self._seq_digests: dict[int, list[bytes | None]] = {}
        self._num_registered: dict[int, int] = {}

    @property
    def num_total_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    def num_blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- prefix cache ----------------------------------------------------------------------

    def get_computed_blocks(self, seq: Sequence) -> list[int]:
        """Ids of the cached blocks matching the longest prefix of ``seq`` (no side effects).

        The last token is never covered: its logits must be computed to sample. Nor is any
        token of a request that asks for prompt logprobs: they need every prompt position.
        """
        if not self.enable_prefix_caching or seq.sampling_params.prompt_logprobs is not None:
            return []
        block_ids: list[int] = []
        for i in range((seq.num_tokens - 1) // self.block_size):
            block_hash = self._block_hash(seq, i)
            block_id = self.hash_to_block_id.get(block_hash)
            if block_id is None or not self._is_same_block(self.blocks[block_id], seq, i):
                break
            block_ids.append(block_id)
        return block_ids

    def _is_same_block(self, block: Block, seq: Sequence, index: int) -> bool:
        start = index * self.block_size
        parent = self._seq_hashes[seq.seq_id][index - 1] if index else root_hash(seq)
        return (
            block.parent_hash == parent
            and block.token_ids == tuple(seq.token_ids[start : start + self.block_size])
            and block.embeds_digest == self._seq_digests[seq.seq_id][index]
        )

    def _block_hash(self, seq: Sequence, index: int) -> bytes:
        hashes = self._seq_hashes.setdefault(seq.seq_id, [])
        digests = self._seq_digests.setdefault(seq.seq_id, [])
        while len(hashes) <= index:
            i = len(hashes)
            start = i * self.block_size
            parent = hashes[-1] if hashes else root_hash(seq)
            digest = self._embeds_digest(seq, start)
            h = hashlib.sha256(parent)
            h.update(array("q", seq.token_ids[start : start + self.block_size]).tobytes())
            h.update(digest or b"")
            hashes.append(h.digest())
            digests.append(digest)
        return hashes[index]

    def _embeds_digest(self, seq: Sequence, start: int) -> bytes | None:
        if seq.prompt_embeds is None or start >= seq.num_prompt_tokens:
            return None
        offsets, keys = seq.embeds_keys_in_range(start, start + self.block_size)
        if keys is None:
            return None
        h = hashlib.sha256(array("q", offsets).tobytes())
        h.update(keys)  # a digest per row: a stored object's are made once, at upload
        return h.digest()

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register the blocks of ``seq`` that became full and computed since the last call."""
        if not self.enable_prefix_caching:
            return
        num_full = min(seq.num_computed_tokens // self.block_size, len(seq.block_table))
        for i in range(self._num_registered.get(seq.seq_id, 0), num_full):
            block = self.blocks[seq.block_table[i]]
            block_hash = self._block_hash(seq, i)
            if block.block_hash is None and block_hash not in self.hash_to_block_id:
                start = i * self.block_size
                block.block_hash = block_hash
                block.parent_hash = self._seq_hashes[seq.seq_id][i - 1] if i else root_hash(seq)
                block.token_ids = tuple(seq.token_ids[start : start + self.block_size])
                block.embeds_digest = self._seq_digests[seq.seq_id][i]
                self.hash_to_block_id[block_hash] = block.block_id
        self._num_registered[seq.seq_id] = max(num_full, self._num_registered.get(seq.seq_id, 0))

    # ---- allocation ------------------------------------------------------------------------

    def can_allocate(self, seq: Sequence, cached_block_ids: list[int], num_new_tokens: int) -> bool:
        """Whether ``seq`` can start with ``cached_block_ids`` and ``num_new_tokens`` to compute."""
        num_cached_tokens = len(cached_block_ids) * self.block_size
        num_new_blocks = self.num_blocks_needed(num_cached_tokens + num_new_tokens)
        num_new_blocks -= len(cached_block_ids)
        num_revived = sum(1 for b in cached_block_ids if self.blocks[b].ref_count == 0)
        return num_new_blocks + num_revived <= self.num_free_blocks

    def allocate(self, seq: Sequence, cached_block_ids: list[int], num_new_tokens: int) -> None:
        """Give a sequence without blocks its cached prefix plus room for ``num_new_tokens``."""
        assert not seq.block_table, "sequence already holds blocks"
        for block_id in cached_block_ids:
            self._take_cached(block_id)
        num_cached_tokens = len(cached_block_ids) * self.block_size
        seq.block_table = list(cached_block_ids)
        seq.num_computed_tokens = num_cached_tokens
        seq.num_cached_tokens = num_cached_tokens
        self._num_registered[seq.seq_id] = len(cached_block_ids)
        if self.enable_prefix_caching:
            self.prefix_cache_queries += seq.num_tokens
            self.prefix_cache_hits += num_cached_tokens
        self.append_slots(seq, num_new_tokens)

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        needed = self.num_blocks_needed(seq.num_computed_tokens + num_new_tokens)
        return needed - len(seq.block_table) <= self.num_free_blocks

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> None:
        """Grow the block table of ``seq`` to hold ``num_new_tokens`` more computed tokens."""
        needed = self.num_blocks_needed(seq.num_computed_tokens + num_new_tokens)
        assert needed - len(seq.block_table) <= self.num_free_blocks, "out of KV blocks"
        while len(seq.block_table) < needed:
            seq.block_table.append(self._allocate_block())

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Share the parent's full computed prompt blocks with a new branch (no copy)."""
        assert not child.block_table, "branch already holds blocks"
        num_shared = min(parent.num_computed_tokens, child.num_tokens - 1) // self.block_size
        shared = parent.block_table[:num_shared]
        for block_id in shared:
            self.blocks[block_id].ref_count += 1
        child.block_table = list(shared)
        child.num_computed_tokens = num_shared * self.block_size
        child.num_cached_tokens = 0
        self._num_registered[child.seq_id] = num_shared
        if parent.seq_id in self._seq_hashes:
            self._seq_hashes[child.seq_id] = self._seq_hashes[parent.seq_id][:num_shared]
            self._seq_digests[child.seq_id] = self._seq_digests[parent.seq_id][:num_shared]

    def free(self, seq: Sequence) -> None:
        """Release the blocks of ``seq``; cached ones stay matchable until reused."""
        for block_id in reversed(seq.block_table):  # tail blocks are evicted first
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, "block freed twice"
            if block.ref_count == 0:
                self.free_block_ids[block_id] = None
                if block.block_hash is None:
                    self.free_block_ids.move_to_end(block_id, last=False)
        seq.block_table = []
        seq.num_computed_tokens = 0
        self._num_registered.pop(seq.seq_id, None)

    def forget(self, seq: Sequence) -> None:
        """Drop per-sequence hash state once the sequence is gone for good."""
        self._seq_hashes.pop(seq.seq_id, None)
        self._seq_digests.pop(seq.seq_id, None)
        self._num_registered.pop(seq.seq_id, None)

    def _take_cached(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free_block_ids[block_id]
        block.ref_count += 1

    def _allocate_block(self) -> int:
        block_id, _ = self.free_block_ids.popitem(last=False)
        block = self.blocks[block_id]
        if block.block_hash is not None and self.hash_to_block_id.get(block.block_hash) == block_id:
            del self.hash_to_block_id[block.block_hash]
        block.reset()
        block.ref_count = 1
        return block_id


def root_hash(seq: Sequence) -> bytes:
    """The parent of a sequence's first block: fixed without a salt, a digest of it with one."""
    if seq.cache_salt is None:
        return _ROOT_HASH
    return hashlib.sha256(_SALT_TAG + seq.cache_salt.encode("utf-8", "surrogatepass")).digest()
