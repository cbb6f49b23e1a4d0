"""KV pool sizing on CUDA: a warm-up forward of the largest step the scheduler can send
measures peak activation memory; the pool gets what is left of ``gpu_memory_utilization``.
"""

from __future__ import annotations

import torch

from pe_engine.attention.backend import AttentionBackend, AttentionMetadata, PrefillSpan
from pe_engine.models.llama import LlamaForCausalLM


def warmup_forward(
    model: LlamaForCausalLM,
    backend: AttentionBackend,
    *,
    num_tokens: int,
    num_seqs: int,
    block_size: int,
) -> int:
    """Prefill ``num_tokens`` rows split over ``num_seqs`` sequences through a throwaway KV
    cache, then logits and a full-vocabulary sort for one row per sequence (what top-p
    sampling allocates). Returns the throwaway cache's bytes; the layers' caches are restored."""
    args = model.args
    device = model.model.embed_tokens.weight.device
    dtype = model.model.embed_tokens.weight.dtype
    num_seqs = max(1, min(num_seqs, num_tokens))
    lengths = [num_tokens // num_seqs + (i < num_tokens % num_seqs) for i in range(num_seqs)]
    num_blocks = sum(-(-n // block_size) for n in lengths)
    shape = (args.num_layers, 2, args.num_kv_heads, num_blocks, block_size, args.head_dim)
    cache = torch.empty(shape, dtype=dtype, device=device)
    positions, slots, spans, first_block = [], [], [], 0
    for n in lengths:
        spans.append(PrefillSpan(len(positions), n, 0, torch.empty(0, dtype=torch.long)))
        positions.extend(range(n))
        slots.extend(range(first_block * block_size, first_block * block_size + n))
        first_block += -(-n // block_size)
    metadata = AttentionMetadata(
        block_size=block_size,
        slot_mapping=torch.tensor(slots, device=device),
        num_decode_tokens=0,
        decode_block_tables=None,
        decode_context_lens=None,
        decode_max_context_len=0,
        prefills=spans,
    )
    previous = [layer.self_attn.kv_cache for layer in model.layers]
    try:
        for layer, layer_cache in zip(model.layers, cache, strict=True):
            layer.self_attn.kv_cache = layer_cache
        with torch.inference_mode():
            backend.prepare(metadata)
            ids = torch.zeros(num_tokens, dtype=torch.long, device=device)
            hidden = model(torch.tensor(positions, device=device), metadata, input_ids=ids)
            last_rows = torch.tensor([s.start + s.num_tokens - 1 for s in spans], device=device)
            model.compute_logits(hidden[last_rows]).softmax(-1).sort(-1, descending=True)
    finally:
        for layer, layer_cache in zip(model.layers, previous, strict=True):
            layer.self_attn.kv_cache = layer_cache
    return cache.numel() * cache.element_size()


def kv_cache_memory(
    model: LlamaForCausalLM,
    backend: AttentionBackend,
    *,
    gpu_memory_utilization: float,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    block_size: int,
    device: torch.device,
) -> int:
    """Bytes for the KV pool: ``gpu_memory_utilization`` of the device, less what other
    processes and the CUDA context hold, less this process's peak during a warm-up step."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    free, total = torch.cuda.mem_get_info(device)
    not_torch = total - free - torch.cuda.memory_reserved(device)  # context, other processes
    cache_bytes = warmup_forward(
        model,
        backend,
        num_tokens=max_num_batched_tokens,
        num_seqs=max_num_seqs,
        block_size=block_size,
    )
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - cache_bytes
    torch.cuda.empty_cache()
    return int(total * gpu_memory_utilization) - not_torch - peak
