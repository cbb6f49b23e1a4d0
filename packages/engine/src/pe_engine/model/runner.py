"""ModelRunner: loads the model, owns the paged KV pool, runs one scheduled batch per call."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pe_engine.attention import cpu as cpu_attention
from pe_engine.attention.backend import (
    AttentionBackend,
    AttentionMetadata,
    PrefillSpan,
    TorchAttentionBackend,
)
from pe_engine.config import DEFAULT_CPU_KV_CACHE_MEMORY, EngineConfig
from pe_engine.core.sequence import Sequence
from pe_engine.model.eos import eos_token_ids as model_eos_token_ids
from pe_engine.model.loader import load_model
from pe_engine.model.sampler import Sampler, SampleResult, prompt_logprobs

if TYPE_CHECKING:
    from pe_engine.cuda.graphs import DecodeGraphs

__all__ = ["ModelRunner", "SampleResult", "StepOutput"]

_PROMPT_LOGITS_ROWS = 256  # prompt-logprob rows per logits matrix ([rows, vocab] float32)


@dataclass
class StepOutput:
    """One step's results: per entry of ``scheduled`` the sampled token (None while its prompt
    is still being computed), and ``(entry, position, result)`` for every prompt position
    whose log-probability this step computed (``result.token_id`` is the prompt token)."""

    samples: list[SampleResult | None]
    prompt_logprobs: list[tuple[int, int, SampleResult]]


@dataclass
class _Batch:
    """Host-built inputs of one step, already on the device."""

    positions: torch.Tensor
    input_ids: torch.Tensor | None
    inputs_embeds: torch.Tensor | None
    metadata: AttentionMetadata
    sample_rows: torch.Tensor | None  # batch rows whose hidden state samples
    sample_entries: list[int]  # index into `scheduled` of each sampled row
    entry_rows: list[int]  # first batch row of each entry of `scheduled`


class ModelRunner:
    """Executes ``[(seq, num_new_tokens), ...]`` batches; never mutates the sequences."""

    # Test hook (set through LLMEngine.fault_injector): called with "prepare", "forward" and
    # "sample" as each begins in run().
    fault_injector: Callable[[str], None] | None = None

    def __init__(self, config: EngineConfig, *, eos_token_ids: Iterable[int] | None = None) -> None:
        """``eos_token_ids``: the engine's one EOS set (``pe_engine.model.eos``); when None, the
        model files' (a runner used without a tokenizer)."""
        check_model_dir(config)
        self.config = config
        self.device = torch.device(config.device_name)
        _configure_threads(self.device, config.num_threads)
        self.hf_config = config.hf_config
        self.dtype = config.torch_dtype
        self.block_size = config.block_size
        self.max_model_len = _max_model_len(config, self.hf_config)
        self.backend = _attention_backend(config, self.device)
        self.model = load_model(
            config.model_dir,
            self.hf_config,
            dtype=self.dtype,
            device=self.device,
            backend=self.backend,
            max_positions=self.max_model_len,
        )
        args = self.model.args
        self.hidden_size = args.hidden_size
        self.vocab_size = args.vocab_size
        self._pack_cpu_linears()
        self.num_kv_blocks = self._num_kv_blocks()
        self.kv_cache = self._allocate_kv_cache()
        self.decode_graphs = self._capture_decode_graphs()
        if eos_token_ids is None:
            eos_token_ids = model_eos_token_ids(config.model_dir, self.hf_config)
        self.sampler = Sampler(eos_token_ids, seed=config.seed, device=self.device)

    # ---- KV pool ------------------------------------------------------------------------------

    @property
    def bytes_per_block(self) -> int:
        a = self.model.args
        elements = 2 * a.num_layers * self.block_size * a.num_kv_heads * a.head_dim
        return elements * torch.empty(0, dtype=self.dtype).element_size()

    def _num_kv_blocks(self) -> int:
        if self.config.num_kv_blocks is not None:
            return self.config.num_kv_blocks
        memory = self.config.kv_cache_memory
        if memory is None and self.device.type == "cuda":
            memory = self._profile_kv_cache_memory()
        memory = memory or DEFAULT_CPU_KV_CACHE_MEMORY
        num_blocks = memory // self.bytes_per_block
        if num_blocks < 1:
            raise ValueError(
                f"kv_cache_memory={memory} bytes holds no KV block "
                f"({self.bytes_per_block} bytes each); raise it."
            )
        return num_blocks

    def _profile_kv_cache_memory(self) -> int:
        from pe_engine.cuda.memory import kv_cache_memory

        memory = kv_cache_memory(
            self.model,
            self.backend,
            gpu_memory_utilization=self.config.gpu_memory_utilization,
            max_num_batched_tokens=self.config.max_num_batched_tokens,
            max_num_seqs=self.config.max_num_seqs,
            block_size=self.block_size,
            device=self.device,
        )
        if memory < self.bytes_per_block:
            raise ValueError(
                f"gpu_memory_utilization={self.config.gpu_memory_utilization} leaves "
                f"{memory} bytes for the KV cache after the weights and activations; raise it "
                "or lower max_num_batched_tokens."
            )
        return memory

    def _pack_cpu_linears(self) -> None:
        """CPU float32: every linear (and a tied model's output head, as a packed copy of the
        embedding table) through oneDNN, unless ``cpu_linear="torch"``."""
        choice = self.config.cpu_linear
        if self.device.type != "cpu" or self.dtype != torch.float32 or choice == "torch":
            return
        from pe_engine.model.cpu_linear import PackedLinear, onednn_linear_works, pack_linears

        if not onednn_linear_works():
            if choice == "onednn":
                raise ValueError("cpu_linear='onednn' but this torch build has no oneDNN linear")
            return
        pack_linears(self.model)
        if getattr(self.model, "lm_head", None) is None:
            self.model.lm_head = PackedLinear(self.model.model.embed_tokens.weight)

    def _allocate_kv_cache(self) -> torch.Tensor:
        a = self.model.args
        shape = (a.num_layers, 2, a.num_kv_heads, self.num_kv_blocks, self.block_size, a.head_dim)
        # Attention reads written slots only (decode padding re-reads a sequence's last slot),
        # so the pool needs no zero fill, which would commit all its pages up front.
        kv_cache = torch.empty(shape, dtype=self.dtype, device=self.device)
        for layer, layer_cache in zip(self.model.layers, kv_cache, strict=True):
            layer.self_attn.kv_cache = layer_cache
        return kv_cache

    # ---- CUDA graphs ---------------------------------------------------------------------------

    def _capture_decode_graphs(self) -> DecodeGraphs | None:
        """Decode CUDA graphs (CUDA, Triton backend, not ``enforce_eager``), else None."""
        if self.device.type != "cuda" or self.config.enforce_eager:
            return None
        if isinstance(self.backend, TorchAttentionBackend):
            return None  # the reference backend syncs with the host: not capturable
        from pe_engine.cuda.graphs import DecodeGraphs

        graphs = DecodeGraphs(
            self.model,
            self.backend,
            max_num_seqs=self.config.max_num_seqs,
            max_model_len=self.max_model_len,
            block_size=self.block_size,
            hidden_size=self.hidden_size,
            dtype=self.dtype,
            device=self.device,
        )
        graphs.capture()
        return graphs

    def _forward(self, batch: _Batch) -> torch.Tensor:
        """The model on a batch: a CUDA-graph replay for decode-only text batches."""
        graphs = self.decode_graphs
        if graphs is not None and graphs.can_replay(batch.metadata, batch.inputs_embeds):
            assert batch.input_ids is not None
            return graphs.replay(batch.input_ids, batch.positions, batch.metadata)
        return self.model(
            batch.positions,
            batch.metadata,
            input_ids=batch.input_ids,
            inputs_embeds=batch.inputs_embeds,
        )

    # ---- execution ----------------------------------------------------------------------------

    def embed_tokens(self, token_ids: list[int]) -> torch.Tensor:
        """The model's input embeddings of ``token_ids`` ([len, hidden], model dtype, CPU)."""
        with torch.inference_mode():
            ids = self._to_device(token_ids, torch.long)
            return self.model.embed_tokens(ids).cpu()

    def execute(self, scheduled: list[tuple[Sequence, int]]) -> list[SampleResult | None]:
        """Compute positions [num_computed, num_computed + n) of each sequence, write their KV,
        and sample a token for every sequence whose chunk reaches its last position."""
        return self.run(scheduled).samples

    @torch.inference_mode()
    def run(self, scheduled: list[tuple[Sequence, int]]) -> StepOutput:
        """Like :meth:`execute`, plus the prompt logprobs of sequences that asked for them."""
        output = StepOutput([None] * len(scheduled), [])
        if not scheduled:
            return output
        if self.fault_injector is not None:
            self.fault_injector("prepare")
        batch = self._prepare(scheduled)
        if self.fault_injector is not None:
            self.fault_injector("forward")
        hidden = self._forward(batch)
        output.prompt_logprobs = self._prompt_logprobs(scheduled, batch, hidden)
        if batch.sample_rows is None:
            return output
        if self.fault_injector is not None:
            self.fault_injector("sample")
        logits = self.model.compute_logits(hidden[batch.sample_rows])
        sampled = self.sampler(logits, [scheduled[i][0] for i in batch.sample_entries])
        for entry, result in zip(batch.sample_entries, sampled, strict=True):
            output.samples[entry] = result
        return output

    def _prompt_logprobs(
        self, scheduled: list[tuple[Sequence, int]], batch: _Batch, hidden: torch.Tensor
    ) -> list[tuple[int, int, SampleResult]]:
        """Row ``p - 1`` predicts prompt position ``p``: defined where ``p`` holds a token id
        (never position 0, never an embed position)."""
        out: list[tuple[int, int, SampleResult]] = []
        for entry, (seq, n) in enumerate(scheduled):
            num_top = seq.sampling_params.prompt_logprobs
            if num_top is None:
                continue
            start = seq.num_computed_tokens
            targets = [
                p
                for p in range(start + 1, min(start + n, seq.num_prompt_tokens - 1) + 1)
                if seq.is_token_ids is None or seq.is_token_ids[p]
            ]
            for first in range(0, len(targets), _PROMPT_LOGITS_ROWS):
                positions = targets[first : first + _PROMPT_LOGITS_ROWS]
                rows = [batch.entry_rows[entry] + p - 1 - start for p in positions]
                logits = self.model.compute_logits(hidden[self._to_device(rows, torch.long)])
                token_ids = [seq.token_ids[p] for p in positions]
                results = prompt_logprobs(logits, token_ids, num_top)
                out.extend((entry, p, r) for p, r in zip(positions, results, strict=True))
        return out

    @torch.inference_mode()
    def execute_logits(self, scheduled: list[tuple[Sequence, int]]) -> list[torch.Tensor]:
        """Like :meth:`execute` (KV written the same way) but returns, per entry, the float32
        logits ``[n, vocab]`` of every computed position instead of sampling."""
        if not scheduled:
            return []
        batch = self._prepare(scheduled)
        hidden = self.model(
            batch.positions,
            batch.metadata,
            input_ids=batch.input_ids,
            inputs_embeds=batch.inputs_embeds,
        )
        logits = self.model.compute_logits(hidden).cpu()
        return [
            logits[row : row + n] for row, (_, n) in zip(batch.entry_rows, scheduled, strict=True)
        ]

    def _to_device(self, data: list[Any], dtype: torch.dtype) -> torch.Tensor:
        """The one host-to-device path for batch inputs."""
        tensor = torch.tensor(data, dtype=dtype)
        if self.device.type == "cpu":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def _prepare(self, scheduled: list[tuple[Sequence, int]]) -> _Batch:
        """Flatten the batch (decodes first, then prefill chunks) into lists, copy once each."""
        bs = self.block_size
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
        metadata = self._metadata(slot_mapping, decode_tables, decode_lens, spans, prefill_tables)
        ids_tensor, embeds_tensor = self._splice(input_ids, embed_rows, embeds)
        return _Batch(
            positions=self._to_device(positions, torch.long),
            input_ids=ids_tensor,
            inputs_embeds=embeds_tensor,
            metadata=metadata,
            sample_rows=self._to_device(sample_rows, torch.long) if sample_rows else None,
            sample_entries=sample_entries,
            entry_rows=entry_rows,
        )

    def _metadata(
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
            block_size=self.block_size,
            slot_mapping=self._to_device(slot_mapping, torch.long),
            num_decode_tokens=num_decode,
            decode_block_tables=tables,
            decode_context_lens=lens,
            decode_max_context_len=max(decode_lens, default=0),
            prefills=prefills,
        )
        self.backend.prepare(metadata)
        return metadata

    def _splice(
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
        inputs_embeds = torch.empty(
            len(input_ids), self.hidden_size, dtype=self.dtype, device=self.device
        )
        if token_rows:
            ids = self._to_device([input_ids[i] for i in token_rows], torch.long)
            inputs_embeds[self._to_device(token_rows, torch.long)] = self.model.embed_tokens(ids)
        user_rows = torch.cat(embeds)
        if self.device.type == "cuda":  # one asynchronous copy per chunk, cast on the device
            user_rows = user_rows.pin_memory().to(self.device, non_blocking=True)
        user_rows = user_rows.to(self.dtype)
        inputs_embeds[self._to_device(embed_rows, torch.long)] = user_rows
        return None, inputs_embeds


def _attention_backend(config: EngineConfig, device: torch.device) -> AttentionBackend:
    """Triton kernels on CUDA (imported only then); on the CPU the in-place paged decode
    kernel for float32 pools when it builds here, else the torch reference."""
    name = config.attention_backend
    if name == "auto":
        if device.type == "cuda":
            name = "triton"
        elif config.torch_dtype == torch.float32 and cpu_attention.available():
            name = "cpu"
        else:
            name = "torch"
    if name == "torch":
        return TorchAttentionBackend()
    if name == "cpu":
        if device.type != "cpu" or config.torch_dtype != torch.float32:
            raise ValueError(
                "attention_backend='cpu' needs device='cpu' and dtype='float32' "
                f"(got {device.type}, {config.dtype_name})."
            )
        return cpu_attention.CpuAttentionBackend()
    from pe_engine.attention.triton_backend import TritonAttentionBackend

    return TritonAttentionBackend()


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


def _max_model_len(config: EngineConfig, hf_config: Any) -> int:
    limit = int(getattr(hf_config, "max_position_embeddings", 0) or 0) or None
    # Sliding-window attention is not implemented: stay within the window, where it is exact.
    window = getattr(hf_config, "sliding_window", None)
    if window and getattr(hf_config, "use_sliding_window", True):
        limit = min(limit or window, window)
    if config.max_model_len is None:
        if limit is None:
            raise ValueError(
                "max_model_len is required: config.json has no max_position_embeddings."
            )
        return limit
    if limit is not None and config.max_model_len > limit:
        raise ValueError(
            f"max_model_len={config.max_model_len} exceeds the model's limit of {limit} positions."
        )
    return config.max_model_len


def _configure_threads(device: torch.device, num_threads: int | None) -> None:
    """Set the CPU kernel threads: ``num_threads``, else OMP_NUM_THREADS, else every usable
    core (as vLLM's CPU backend does for one rank). On a machine shared with other busy
    processes, fewer threads than cores can be much faster: an OpenMP barrier waiting on a
    descheduled thread costs more than the extra core gains (see benchmarks/RESULTS.md)."""
    if device.type != "cpu":
        return
    if num_threads is None:
        requested = os.environ.get("OMP_NUM_THREADS", "")
        if requested.isdigit() and int(requested) > 0:
            num_threads = int(requested)
        else:
            num_threads = _num_usable_cores()
    torch.set_num_threads(num_threads)


def _num_usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_model_dir(config: EngineConfig) -> None:
    """A clear error for a model path that is not a Hugging Face model directory."""
    if not (Path(config.model) / "config.json").is_file():
        raise FileNotFoundError(
            f"Model directory {config.model} has no config.json (use 'demo' for the demo model)."
        )
