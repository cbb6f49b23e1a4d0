"""Triton kernels over the head-major paged KV pool (see :mod:`pe_engine.attention.backend`).

Per layer the pool is ``[2, num_kv_heads, num_blocks, block_size, head_dim]``: the K (or V) of
KV head ``h`` at cache slot ``s`` lives at ``h * num_slots * head_dim + s * head_dim``.

- :func:`store_kv` (:mod:`.pool`) writes new K/V at ``slot_mapping`` (slot -1 skips the row:
  padded rows of a CUDA-graph batch never write).
- :func:`paged_decode` (:mod:`.decode`) attends one query per sequence over its block table, the
  query heads of a KV head together (GQA), the context split across programs (flash-decoding)
  and combined by a second kernel, so a batch of one still fills the GPU. The grid depends only
  on the batch size and ``split_len``, never on a context length, so the launch can be captured
  in a CUDA graph.
- :func:`paged_prefill` (:mod:`.prefill`) attends each prefill chunk causally over its cached
  prefix (read through the block table: prefix-cache hits, earlier chunks) and over its own new
  K/V.

The kernels also run in Triton's interpreter (``TRITON_INTERPRET=1``) on CPU tensors, which is
how the tests check them against the torch reference without a GPU. Importing this package
imports triton.
"""

from pe_engine.attention.kernels.triton_paged.decode import (
    DECODE_BLOCK_N,
    DecodeSplit,
    decode_split,
    paged_decode,
)
from pe_engine.attention.kernels.triton_paged.pool import store_kv
from pe_engine.attention.kernels.triton_paged.prefill import paged_prefill

__all__ = [
    "DECODE_BLOCK_N",
    "DecodeSplit",
    "decode_split",
    "paged_decode",
    "paged_prefill",
    "store_kv",
]
