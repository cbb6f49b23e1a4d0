"""One step's model inputs: built on the host as Python lists (decodes first, then prefill
chunks), then copied to the device once per tensor through :func:`to_device`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pe_engine.attention.backend import AttentionBackend, AttentionMetadata, PrefillSpan
from pe_engine.core.sequence import Sequence
from pe_engine.models.llama import LlamaForCausalLM


@dataclass
class Batch:
    """Host-built inputs of one step, already on the device."""

    positions: torch.Tensor
    input_ids: torch.Tensor | None
    inputs_embeds: torch.Tensor | None
    metadata: AttentionMetadata
    sample_rows: torch.Tensor | None  # batch rows whose hidden state samples
    sample_entries: list[int]  # index into `scheduled` of each sampled row
    entry_rows: list[int]  # first batch row of each entry of `scheduled`


@dataclass(frozen=True)
class LoadedModel:
    """The model with what every builder of its inputs or KV pool needs alongside it: its
    attention backend, the KV block size and the dtype and device it runs in. The runner
    builds it once; the batch preparer, the decode graphs and the KV pool take it whole."""

    model: LlamaForCausalLM
    backend: AttentionBackend
    block_size: int
    dtype: torch.dtype
    device: torch.device

    @property
    def hidden_size(self) -> int:
        return self.model.args.hidden_size


def to_device(data: list[Any], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The one host-to-device path for batch inputs."""
    tensor = torch.tensor(data, dtype=dtype)
    if device.type == "cpu":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


class BatchPreparer:
    """Turns ``[(seq, num_new_tokens), ...]`` into a :class:`Batch` for ``loaded.model``."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    def _to_device(self, data: list[Any], dtype: torch.dtype) -> torch.Tensor:
        return to_device(data, dtype, self.loaded.device)

    def prepare(self, scheduled: list[tuple[Sequence, int]]) -> Batch:
        """Flatten the batch (decodes first, then prefill chunks) into lists, copy once each."""
        bs = self.loaded.block_size
        order = sorted(range(len(scheduled)), key=lambda i: scheduled[i][1] > 1)
        input_ids: list[int] = []
        positions: list[int] = []
        slot_mapping: list[int] = []
        embed_rows: list[int] = []
        embeds: list[torch.Tensor] = []
        sample_rows: list[int] = []
        sample_entries: list[int] = []
        entry_rows = [0] * len(scheduled)
        decode_tables: list[list[int]] = []
        decode_lens: list[int] = []
        spans: list[tuple[int, int, int, int, int]] = []  # start, n, computed, table start/end
        prefill_tables: list[int] = []
        for entry in order:
            seq, n = scheduled[entry]
            start, end, row = seq.num_computed_tokens, seq.num_computed_tokens + n, len(input_ids)
            _check_schedulable(seq, n, bs)
            entry_rows[entry] = row
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            slot_mapping.extend(_slot_range(seq.block_table, start, end, bs))
            if seq.prompt_embeds is not None and start < seq.num_prompt_tokens:
                offsets, rows = seq.embeds_in_range(start, end)
                if rows is not None:
                    embed_rows.extend(row + o for o in offsets)
                    embeds.append(rows)
            if end == seq.num_tokens:
                sample_rows.append(row + n - 1)
                sample_entries.append(entry)
            num_blocks = -(-end // bs)
            if n == 1:
                decode_tables.append(seq.block_table[:num_blocks])
                decode_lens.append(end)
            else:
                table_start = len(prefill_tables)
                if start > 0:
                    prefill_tables.extend(seq.block_table[:num_blocks])
                spans.append((row, n, start, table_start, len(prefill_tables)))
        metadata = self._prepare_metadata(
            slot_mapping, decode_tables, decode_lens, spans, prefill_tables
        )
        ids_tensor, embeds_tensor = self._prepare_inputs(input_ids, embed_rows, embeds)
        return Batch(
            positions=self._to_device(positions, torch.long),
            input_ids=ids_tensor,
            inputs_embeds=embeds_tensor,
            metadata=metadata,
            sample_rows=self._to_device(sample_rows, torch.long) if sample_rows else None,
            sample_entries=sample_entries,
            entry_rows=entry_rows,
        )

    def _prepare_metadata(
        self,
        slot_mapping: list[int],
        decode_tables: list[list[int]],
        decode_lens: list[int],
        spans: list[tuple[int, int, int, int, int]],
        prefill_tables: list[int],
    ) -> AttentionMetadata:
        num_decode = len(decode_lens)
        tables = lens = None
        if num_decode:
            width = max(len(t) for t in decode_tables)
            padded = [t + [0] * (width - len(t)) for t in decode_tables]
            tables = self._to_device(padded, torch.long)
            lens = self._to_device(decode_lens, torch.long)
        flat_tables = self._to_device(prefill_tables, torch.long)
        prefills = [
            PrefillSpan(row, n, computed, flat_tables[t0:t1]) for row, n, computed, t0, t1 in spans
        ]
        metadata = AttentionMetadata(
            block_size=self.loaded.block_size,
            slot_mapping=self._to_device(slot_mapping, torch.long),
            num_decode_tokens=num_decode,
            decode_block_tables=tables,
            decode_context_lens=lens,
            decode_max_context_len=max(decode_lens, default=0),
            prefills=prefills,
        )
        self.loaded.backend.prepare(metadata)
        return metadata

    def _prepare_inputs(
        self, input_ids: list[int], embed_rows: list[int], embeds: list[torch.Tensor]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Token ids alone, or (for chunks holding embed positions) the spliced embeddings:
        ``embed_tokens`` on token rows only (placeholders never looked up), user rows elsewhere."""
        if not embed_rows:
            return self._to_device(input_ids, torch.long), None
        is_embed = bytearray(len(input_ids))
        for row in embed_rows:
            is_embed[row] = 1
        token_rows = [i for i, flag in enumerate(is_embed) if not flag]
        loaded = self.loaded
        inputs_embeds = torch.empty(
            len(input_ids), loaded.hidden_size, dtype=loaded.dtype, device=loaded.device
        )
        if token_rows:
            ids = self._to_device([input_ids[i] for i in token_rows], torch.long)
            inputs_embeds[self._to_device(token_rows, torch.long)] = loaded.model.embed_tokens(ids)
        user_rows = torch.cat(embeds)
        if loaded.device.type == "cuda":  # one asynchronous copy per chunk, cast on the device
            user_rows = user_rows.pin_memory().to(loaded.device, non_blocking=True)
        user_rows = user_rows.to(loaded.dtype)
        inputs_embeds[self._to_device(embed_rows, torch.long)] = user_rows
        return None, inputs_embeds


def _check_schedulable(seq: Sequence, n: int, block_size: int) -> None:
    end = seq.num_computed_tokens + n
    assert n >= 1 and end <= seq.num_tokens, f"bad chunk {n} for {seq}"
    assert len(seq.block_table) * block_size >= end, f"block table too short for {seq}"


def _slot_range(block_table: list[int], start: int, end: int, block_size: int) -> list[int]:
    """Cache slots of positions [start, end), one block-sized range at a time."""
    slots: list[int] = []
    pos = start
    while pos < end:
        block, offset = divmod(pos, block_size)
        stop = min(end - pos, block_size - offset)
        base = block_table[block] * block_size + offset
        slots.extend(range(base, base + stop))
        pos += stop
    return slots
