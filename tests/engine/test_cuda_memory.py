"""The warm-up forward that sizes the KV pool on CUDA, run here on CPU with the torch backend
(tests/engine/test_triton_runner.py runs it with the Triton backend)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pe_engine import LLM
from pe_engine.cuda.memory import warmup_forward

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def check_warmup_leaves_the_engine_alone(llm: LLM) -> None:
    runner = llm.engine.runner
    pool = runner.kv_cache.normal_().clone()  # the pool is uninitialised memory (maybe NaN)
    caches = [layer.self_attn.kv_cache for layer in runner.model.layers]
    args = runner.model.args
    # 100 tokens over 3 sequences (34, 33, 33): 3 blocks each of 16 slots.
    per_block = 2 * args.num_layers * args.num_kv_heads * 16 * args.head_dim * 4
    assert warmup_forward(
        runner.model, runner.backend, num_tokens=100, num_seqs=3, block_size=16
    ) == 9 * per_block  # fmt: skip
    assert [layer.self_attn.kv_cache for layer in runner.model.layers] == caches
    assert torch.equal(runner.kv_cache, pool)


def test_warmup_forward_restores_the_layer_caches(tiny_qwen3_dir: Path) -> None:
    llm = LLM(str(tiny_qwen3_dir), dtype="float32", device="cpu", num_kv_blocks=8)
    check_warmup_leaves_the_engine_alone(llm)
