"""Fixtures of the vLLM tests: a tiny model vLLM's CPU attention accepts, vLLM's env, and a fake
upstream."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_upstream import FakeUpstream


@pytest.fixture(scope="session")
def vllm_tiny_dir(tiny_models_root: Path, smollm2_tokenizer_dir: Path) -> Path:
    """Llama: 2 layers, hidden 128, 2 heads of 64 (vLLM's CPU attention needs head_dim >= 32)."""
    from pe_engine.models.random_model import build_random_model

    return build_random_model(
        tiny_models_root / "vllm-tiny",
        hidden_size=128,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=256,
        max_position_embeddings=512,
        tokenizer_dir=smollm2_tokenizer_dir,
    )


@pytest.fixture(scope="session")
def vllm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What vLLM needs on a CPU machine, with its sockets and caches under pytest's tmp."""
    scratch = tmp_path_factory.mktemp("vllm")
    cache = Path(os.environ.get("PE_VLLM_CACHE_ROOT", scratch / "cache"))
    return {
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TMPDIR": str(scratch),
        "VLLM_RPC_BASE_PATH": str(scratch),
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    """A scripted stand-in for `vllm serve` (fake_upstream.py), one per test module."""
    with FakeUpstream() as up:
        yield up
