"""ModelRunner: loads the model, owns the paged KV pool, runs one scheduled batch per call."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pe_engine.attention import cpu as cpu_attention
from pe_engine.attention.backend import AttentionBackend, TorchAttentionBackend
from pe_engine.config import EngineConfig
from pe_engine.core.sequence import Sequence
from pe_engine.models.batch import Batch, BatchPreparer, LoadedModel, to_device
from pe_engine.models.eos import eos_token_ids as model_eos_token_ids
from pe_engine.models.kernel_threads import configure_threads
from pe_engine.models.kv_cache import allocate_kv_cache, bytes_per_block, num_kv_blocks
from pe_engine.models.loader import load_model
from pe_engine.models.sampler import Sampler, SampleResult, prompt_logprobs

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


class ModelRunner:
    """Executes ``[(seq, num_new_tokens), ...]`` batches; never mutates the sequences."""

    # Test hook (set through LLMEngine.fault_injector): called with "prepare", "forward" and
    # "sample" as each begins in run().
    fault_injector: Callable[[str], None] | None = None

    def __init__(self, config: EngineConfig, *, eos_token_ids: Iterable[int] | None = None) -> None:
        """``eos_token_ids``: the engine's one EOS set (``pe_engine.models.eos``); when None, the
        model files' (a runner used without a tokenizer)."""
        check_model_dir(config)
        self.config = config
        self.device = torch.device(config.device_name)
        configure_threads(self.device, config.num_threads)
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
        loaded = LoadedModel(self.model, self.backend, self.block_size, self.dtype, self.device)
        self.loaded = loaded
        self.hidden_size = loaded.hidden_size
        self.vocab_size = self.model.args.vocab_size
        self._quantize()
        self._pack_cpu_linears()
        self.bytes_per_block = bytes_per_block(loaded)
        self.num_kv_blocks = num_kv_blocks(config, loaded, block_bytes=self.bytes_per_block)
        self.kv_cache = allocate_kv_cache(loaded, self.num_kv_blocks)
        self.inputs = BatchPreparer(loaded)
        self.decode_graphs = self._capture_decode_graphs()
        if eos_token_ids is None:
            eos_token_ids = model_eos_token_ids(config.model_dir, self.hf_config)
        self.sampler = Sampler(eos_token_ids, seed=config.seed, device=self.device)

    # ---- loading ------------------------------------------------------------------------------

    def _quantize(self) -> None:
        """``quantization="int8"``: the decoder layers' linears as int8 weights (CPU only)."""
        if self.config.quantization is None:
            return
        if self.device.type != "cpu":
            raise ValueError(
                f"quantization={self.config.quantization!r} runs on the CPU only "
                f"(device is {self.device.type})"
            )
        from pe_engine.models.int8_layers import Int8DecodeLayers
        from pe_engine.models.int8_linear import quantize_linears

        quantize_linears(self.model)
        self.model.int8_layers = Int8DecodeLayers.for_model(self.model)

    def _pack_cpu_linears(self) -> None:
        """CPU float32 (and bfloat16 where the CPU has native bfloat16): every linear (and a
        tied model's output head, as a packed copy of the embedding table) through oneDNN,
        unless ``cpu_linear="torch"``."""
        from pe_engine.models.cpu_linear import (
            PACKED_DTYPES,
            PackedLinear,
            onednn_linear_works,
            pack_linears,
        )

        choice = self.config.cpu_linear
        if self.device.type != "cpu" or self.dtype not in PACKED_DTYPES or choice == "torch":
            return
        if not onednn_linear_works(self.dtype):
            if choice == "onednn":
                raise ValueError("cpu_linear='onednn' but this torch build has no oneDNN linear")
            return
        pack_linears(self.model)
        if getattr(self.model, "lm_head", None) is None:
            self.model.lm_head = PackedLinear(self.model.model.embed_tokens.weight)

    # ---- CUDA graphs ---------------------------------------------------------------------------

    def _capture_decode_graphs(self) -> DecodeGraphs | None:
        """Decode CUDA graphs (CUDA, Triton backend, not ``enforce_eager``), else None."""
        if self.device.type != "cuda" or self.config.enforce_eager:
            return None
        if isinstance(self.backend, TorchAttentionBackend):
            return None  # the reference backend syncs with the host: not capturable
        from pe_engine.cuda.graphs import DecodeGraphs

        graphs = DecodeGraphs(
            self.loaded, max_num_seqs=self.config.max_num_seqs, max_model_len=self.max_model_len
        )
        graphs.capture()
        return graphs

    # ---- execution ----------------------------------------------------------------------------

    def embed_tokens(self, token_ids: list[int]) -> torch.Tensor:
        """The model's input embeddings of ``token_ids`` ([len, hidden], model dtype, CPU)."""
        with torch.inference_mode():
            ids = to_device(token_ids, torch.long, self.device)
            return self.model.embed_tokens(ids).cpu()

    @torch.inference_mode()
    def run(self, scheduled: list[tuple[Sequence, int]]) -> StepOutput:
        """Compute positions [num_computed, num_computed + n) of each sequence, write their KV,
        sample a token for every sequence whose chunk reaches its last position, and compute
        the prompt logprobs of sequences that asked for them."""
        output = StepOutput([None] * len(scheduled), [])
        if not scheduled:
            return output
        if self.fault_injector is not None:
            self.fault_injector("prepare")
        batch = self.inputs.prepare(scheduled)
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

    def _forward(self, batch: Batch) -> torch.Tensor:
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

    def _prompt_logprobs(
        self, scheduled: list[tuple[Sequence, int]], batch: Batch, hidden: torch.Tensor
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
                logits = self.model.compute_logits(hidden[to_device(rows, torch.long, self.device)])
                token_ids = [seq.token_ids[p] for p in positions]
                results = prompt_logprobs(logits, token_ids, num_top)
                out.extend((entry, p, r) for p, r in zip(positions, results, strict=True))
        return out


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


def check_model_dir(config: EngineConfig) -> None:
    """A clear error for a model path that is not a Hugging Face model directory."""
    if not (Path(config.model) / "config.json").is_file():
        raise FileNotFoundError(
            f"Model directory {config.model} has no config.json (use 'demo' for the demo model)."
        )
