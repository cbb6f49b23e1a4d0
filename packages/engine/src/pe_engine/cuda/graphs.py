"""DecodeGraphs: the decode forward captured as CUDA graphs, one per batch size, one pool.

Only decode steps replay a graph (prefill shapes vary too much, and the splice runs eagerly
before the model); a decode-only, text-only batch of ``n`` sequences copies its inputs into
static buffers and replays the smallest captured size ``>= n``. Padded rows write no KV
(slot -1) and attend to nothing (context length 0), so they cannot disturb real sequences.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pe_engine.attention.backend import AttentionMetadata

if TYPE_CHECKING:
    from pe_engine.models.batch import LoadedModel


def graph_batch_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 16 below ``max_num_seqs``, then ``max_num_seqs``."""
    sizes = [s for s in (1, 2, 4, 8) if s < max_num_seqs]
    sizes += range(16, max_num_seqs, 16)
    return [*sizes, max_num_seqs]


class DecodeGraphs:
    """Static decode inputs and outputs plus, after :meth:`capture`, one graph per batch size.

    ``loaded.model(positions, metadata, input_ids=...)`` must return ``[rows, hidden]`` and run no
    host synchronisation on the decode path (the Triton backend does not; its decode grid
    depends only on the batch size and ``max_model_len``).
    """

    def __init__(self, loaded: LoadedModel, *, max_num_seqs: int, max_model_len: int) -> None:
        self.loaded = loaded
        self.max_model_len = max_model_len
        self.batch_sizes = graph_batch_sizes(max_num_seqs)
        rows = self.batch_sizes[-1]
        max_blocks = -(-max_model_len // loaded.block_size)
        device = loaded.device
        self.input_ids = torch.zeros(rows, dtype=torch.long, device=device)
        self.positions = torch.zeros(rows, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((rows,), -1, dtype=torch.long, device=device)
        self.context_lens = torch.zeros(rows, dtype=torch.long, device=device)
        self.block_tables = torch.zeros(rows, max_blocks, dtype=torch.long, device=device)
        self.hidden = torch.empty(rows, loaded.hidden_size, dtype=loaded.dtype, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}

    @property
    def max_batch_size(self) -> int:
        return self.batch_sizes[-1]

    def can_replay(self, metadata: AttentionMetadata, inputs_embeds: torch.Tensor | None) -> bool:
        """True for a captured, decode-only batch of token ids that fits the largest graph."""
        return (
            bool(self.graphs)
            and inputs_embeds is None
            and not metadata.prefills
            and 0 < metadata.num_decode_tokens <= self.max_batch_size
        )

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every batch size, largest first: the smaller graphs reuse its memory pool."""
        pool = None
        for batch_size in reversed(self.batch_sizes):
            metadata = self.static_metadata(batch_size)
            self.loaded.backend.prepare(metadata)
            self.run(batch_size, metadata)  # warm-up: kernels compile and autotune outside
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool):
                self.run(batch_size, metadata)
            pool = graph.pool() if pool is None else pool
            self.graphs[batch_size] = graph
            torch.cuda.synchronize()

    def replay(
        self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata
    ) -> torch.Tensor:
        """Hidden states ``[num_decode, hidden]`` of a batch for which :meth:`can_replay`."""
        batch_size = self.stage(input_ids, positions, metadata)
        self.graphs[batch_size].replay()
        return self.hidden[: metadata.num_decode_tokens]

    def stage(
        self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata
    ) -> int:
        """Copy a decode batch into the static buffers, pad it; returns the graph's size."""
        n = metadata.num_decode_tokens
        batch_size = next(size for size in self.batch_sizes if size >= n)
        assert metadata.decode_block_tables is not None
        assert metadata.decode_context_lens is not None
        self.input_ids[:n] = input_ids
        self.positions[:n] = positions
        self.slot_mapping[:n] = metadata.slot_mapping
        self.slot_mapping[n:batch_size] = -1
        self.context_lens[:n] = metadata.decode_context_lens
        self.context_lens[n:batch_size] = 0
        width = metadata.decode_block_tables.shape[1]
        self.block_tables[:n, :width] = metadata.decode_block_tables
        return batch_size

    def run(self, batch_size: int, metadata: AttentionMetadata) -> None:
        """The forward a graph records: static inputs of ``batch_size`` rows -> ``hidden``."""
        positions, input_ids = self.positions[:batch_size], self.input_ids[:batch_size]
        hidden = self.loaded.model(positions, metadata, input_ids=input_ids)
        self.hidden[:batch_size] = hidden

    def static_metadata(self, batch_size: int) -> AttentionMetadata:
        """Decode metadata over the static buffers; the longest context sizes the kernels."""
        return AttentionMetadata(
            block_size=self.loaded.block_size,
            slot_mapping=self.slot_mapping[:batch_size],
            num_decode_tokens=batch_size,
            decode_block_tables=self.block_tables[:batch_size],
            decode_context_lens=self.context_lens[:batch_size],
            decode_max_context_len=self.max_model_len,
            prefills=[],
        )
