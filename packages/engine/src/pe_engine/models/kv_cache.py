"""The paged KV pool: how many blocks it holds (a configured count, a memory budget, or on CUDA
what the weights and a warm-up step leave) and its one allocation, viewed per layer."""

from __future__ import annotations

import torch

from pe_engine.config import DEFAULT_CPU_KV_CACHE_MEMORY, EngineConfig
from pe_engine.models.batch import LoadedModel


def bytes_per_block(loaded: LoadedModel) -> int:
    """K and V of ``block_size`` positions in every layer."""
    args = loaded.model.args
    elements = 2 * args.num_layers * loaded.block_size * args.num_kv_heads * args.head_dim
    return elements * torch.empty(0, dtype=loaded.dtype).element_size()


def num_kv_blocks(config: EngineConfig, loaded: LoadedModel, *, block_bytes: int) -> int:
    """``num_kv_blocks`` if set, else as many blocks of ``block_bytes`` as ``kv_cache_memory``
    holds (on CUDA without it: what profiling leaves, on the CPU: the default budget)."""
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    memory = config.kv_cache_memory
    if memory is None and loaded.device.type == "cuda":
        memory = _profile_kv_cache_memory(config, loaded, block_bytes)
    memory = memory or DEFAULT_CPU_KV_CACHE_MEMORY
    num_blocks = memory // block_bytes
    if num_blocks < 1:
        raise ValueError(
            f"kv_cache_memory={memory} bytes holds no KV block ({block_bytes} bytes each); "
            "raise it."
        )
    return num_blocks


def _profile_kv_cache_memory(config: EngineConfig, loaded: LoadedModel, block_bytes: int) -> int:
    from pe_engine.cuda.memory import kv_cache_memory

    memory = kv_cache_memory(
        loaded.model,
        loaded.backend,
        gpu_memory_utilization=config.gpu_memory_utilization,
        max_num_batched_tokens=config.max_num_batched_tokens,
        max_num_seqs=config.max_num_seqs,
        block_size=loaded.block_size,
        device=loaded.device,
    )
    if memory < block_bytes:
        raise ValueError(
            f"gpu_memory_utilization={config.gpu_memory_utilization} leaves "
            f"{memory} bytes for the KV cache after the weights and activations; raise it "
            "or lower max_num_batched_tokens."
        )
    return memory


def allocate_kv_cache(loaded: LoadedModel, num_blocks: int) -> torch.Tensor:
    """One ``[layers, 2, kv_heads, blocks, block_size, head_dim]`` pool; each attention layer
    gets its slice."""
    model, a = loaded.model, loaded.model.args
    shape = (a.num_layers, 2, a.num_kv_heads, num_blocks, loaded.block_size, a.head_dim)
    # Attention reads written slots only (decode padding re-reads a sequence's last slot),
    # so the pool needs no zero fill, which would commit all its pages up front.
    kv_cache = torch.empty(shape, dtype=loaded.dtype, device=loaded.device)
    for layer, layer_cache in zip(model.layers, kv_cache, strict=True):
        layer.self_attn.kv_cache = layer_cache
    return kv_cache
