"""CpuAttentionBackend (the C paged-decode kernel) against the torch reference backend: the
same outputs on random pools and scattered block tables, the same greedy tokens through the
engine (chunked prefill, prefix-cache hits, preemption), the runner's choice of backend, and a
clear fallback when the kernel cannot be built."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from pe_engine import LLM, SamplingParams, native_kernels
from pe_engine.attention import cpu as cpu_attention
from pe_engine.attention.backend import AttentionMetadata, PrefillSpan, TorchAttentionBackend
from pe_engine.attention.cpu import CpuAttentionBackend, KernelBuildError
from pe_engine.config import EngineConfig
from pe_engine.models.runner import ModelRunner

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _batch(
    lens: list[int], num_prefill: int, heads: int, kv_heads: int, head_dim: int, block_size: int
) -> tuple[dict[str, torch.Tensor], AttentionMetadata, torch.Tensor]:
    """A pool of random K/V, decode sequences with contexts ``lens`` on shuffled blocks, and
    one prefill chunk of ``num_prefill`` tokens after a cached prefix of 21 positions."""
    gen = torch.Generator().manual_seed(sum(lens) + heads + head_dim)
    prefill_context = 21 + num_prefill
    needs = [-(-n // block_size) for n in [*lens, prefill_context]]
    num_blocks = sum(needs) + 3
    order = torch.randperm(num_blocks, generator=gen).tolist()
    tables = []
    for n in needs:
        tables.append(order[:n])
        order = order[n:]
    kv_cache = torch.randn(2, kv_heads, num_blocks, block_size, head_dim, generator=gen)

    def slot(table: list[int], position: int) -> int:
        return table[position // block_size] * block_size + position % block_size

    width = max(needs[:-1])
    decode_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables[:-1]])
    slots = [slot(t, n - 1) for t, n in zip(tables, lens, strict=False)]
    slots += [slot(tables[-1], p) for p in range(21, prefill_context)]
    num_tokens = len(lens) + num_prefill
    span = PrefillSpan(len(lens), num_prefill, 21, torch.tensor(tables[-1]))
    metadata = AttentionMetadata(
        block_size=block_size,
        slot_mapping=torch.tensor(slots),
        num_decode_tokens=len(lens),
        decode_block_tables=decode_tables,
        decode_context_lens=torch.tensor(lens),
        decode_max_context_len=max(lens),
        prefills=[span] if num_prefill else [],
    )
    qkv = {
        "q": torch.randn(num_tokens, heads, head_dim, generator=gen),
        "k": torch.randn(num_tokens, kv_heads, head_dim, generator=gen),
        "v": torch.randn(num_tokens, kv_heads, head_dim, generator=gen),
    }
    return qkv, metadata, kv_cache


def _forward(backend: Any, qkv: dict[str, torch.Tensor], metadata: AttentionMetadata,
             kv_cache: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    cache = kv_cache.clone()
    backend.prepare(metadata)
    return backend.forward(qkv["q"], qkv["k"], qkv["v"], cache, metadata, scale), cache


@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim", "block_size", "lens", "num_prefill"),
    [
        (4, 4, 16, 16, [1], 0),  # a context of one position
        (4, 2, 16, 4, [1, 5, 17, 40], 0),  # GQA 2, partial blocks
        (9, 3, 64, 16, [33, 160, 7, 250, 96], 6),  # SmolLM2's heads, with a prefill chunk
        (8, 1, 128, 16, [300, 2], 0),  # multi-query, head_dim 128
        (6, 2, 20, 8, [19, 64, 65], 3),  # a head_dim that is no multiple of the vector width
    ],
)
def test_kernel_matches_the_reference(
    heads: int, kv_heads: int, head_dim: int, block_size: int, lens: list[int], num_prefill: int
) -> None:
    qkv, metadata, kv_cache = _batch(lens, num_prefill, heads, kv_heads, head_dim, block_size)
    scale = head_dim**-0.5
    expected, expected_cache = _forward(TorchAttentionBackend(), qkv, metadata, kv_cache, scale)
    qkv, metadata, kv_cache = _batch(lens, num_prefill, heads, kv_heads, head_dim, block_size)
    actual, actual_cache = _forward(CpuAttentionBackend(), qkv, metadata, kv_cache, scale)
    assert torch.equal(actual_cache, expected_cache)
    torch.testing.assert_close(actual, expected, atol=2e-6, rtol=2e-5)


def test_kv_rows_are_stored_from_views_into_the_fused_qkv_rows() -> None:
    """The model hands the backend q, k and v as views into one qkv row (rows a whole qkv
    width apart): the kernel's K/V store reads them there, as index_copy_ does."""
    qkv, metadata, kv_cache = _batch([5, 17, 40], 2, 9, 3, 64, 16)
    fused = torch.cat([qkv[name].flatten(1) for name in ("q", "k", "v")], dim=1)
    q, k, v = fused.split([9 * 64, 3 * 64, 3 * 64], dim=1)
    views = {"q": q.view(-1, 9, 64), "k": k.view(-1, 3, 64), "v": v.view(-1, 3, 64)}
    expected, expected_cache = _forward(TorchAttentionBackend(), qkv, metadata, kv_cache, 0.125)
    actual, actual_cache = _forward(CpuAttentionBackend(), views, metadata, kv_cache, 0.125)
    assert torch.equal(actual_cache, expected_cache)
    torch.testing.assert_close(actual, expected, atol=2e-6, rtol=2e-5)


def test_kernel_is_exact_on_extreme_scores() -> None:
    """Scores far apart (one position dominates) and all equal (a uniform average)."""
    qkv, metadata, kv_cache = _batch([48, 48], 0, 2, 1, 16, 16)
    kv_cache[0] = 0.0  # every score 0: the output is the mean of the values
    expected, _ = _forward(TorchAttentionBackend(), qkv, metadata, kv_cache, 0.25)
    actual, _ = _forward(CpuAttentionBackend(), qkv, metadata, kv_cache, 0.25)
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-5)
    # Scores in the thousands, from a fixed draw: at that size float32 rounds each score by
    # ~1e-4, so near-tied maxima in an unlucky draw (2 of 200 seeds) move outputs by ~4e-5.
    gen = torch.Generator().manual_seed(0)
    kv_cache[0] = torch.randn(kv_cache[0].shape, generator=gen) * 40.0
    expected, _ = _forward(TorchAttentionBackend(), qkv, metadata, kv_cache, 1.0)
    actual, _ = _forward(CpuAttentionBackend(), qkv, metadata, kv_cache, 1.0)
    assert torch.isfinite(actual).all()
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)


def _llm(model_dir: Path, backend: str) -> LLM:
    return LLM(
        str(model_dir), dtype="float32", enable_prompt_embeds=True, attention_backend=backend,
        max_model_len=256, block_size=16, num_kv_blocks=24, max_num_seqs=6,
        max_num_batched_tokens=48,
    )  # fmt: skip


def test_engine_greedy_tokens_equal_the_reference(tiny_llama_dir: Path) -> None:
    """Text, ids sharing a prefix (cache hits), embeds and mixed prompts under a token budget
    that chunks prefills and a pool small enough to preempt: the same tokens on both."""
    outputs = {}
    for backend in ("torch", "cpu"):
        llm = _llm(tiny_llama_dir, backend)
        rng = random.Random(5)
        shared = [rng.randrange(3, 49000) for _ in range(20)]
        ids = [
            shared + [rng.randrange(3, 49000) for _ in range(rng.randint(5, 60))] for _ in range(5)
        ]
        mixed = [rng.randrange(3, 49000) for _ in range(37)]
        mask = [i % 4 != 2 for i in range(len(mixed))]
        rows = llm.engine.runner.embed_tokens(
            [t for t, m in zip(mixed, mask, strict=True) if not m]
        )
        prompts = [
            "The kernel reads each block where it lies, so",
            *({"prompt_token_ids": p} for p in ids),
            {"prompt_embeds": llm.engine.runner.embed_tokens(ids[1])},
            {"prompt_token_ids": mixed, "prompt_embeds": rows, "is_token_ids": mask},
        ]
        params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
        results = llm.generate(prompts, params, use_tqdm=False)
        outputs[backend] = [r.outputs[0].token_ids for r in results]
        assert llm.engine.num_free_blocks == 24
        assert llm.engine.scheduler.num_preemptions > 0
        assert llm.engine.block_manager.prefix_cache_hits > 0
    assert outputs["cpu"] == outputs["torch"]


def test_runner_picks_the_kernel_for_float32_cpu_pools(tiny_llama_dir: Path) -> None:
    runner = ModelRunner(EngineConfig(model=str(tiny_llama_dir), num_kv_blocks=8))
    assert type(runner.backend) is CpuAttentionBackend
    bf16 = ModelRunner(EngineConfig(model=str(tiny_llama_dir), dtype="bfloat16", num_kv_blocks=8))
    assert type(bf16.backend) is TorchAttentionBackend
    with pytest.raises(ValueError, match=r"attention_backend='cpu' needs .*float32"):
        ModelRunner(
            EngineConfig(
                model=str(tiny_llama_dir),
                dtype="bfloat16",
                attention_backend="cpu",
                num_kv_blocks=8,
            )
        )


@pytest.fixture
def fresh_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An empty kernel cache and a forgotten library, restored afterwards."""
    monkeypatch.setenv("PE_CACHE_DIR", str(tmp_path))
    cpu_attention._build.cache_clear()
    yield tmp_path
    cpu_attention._build.cache_clear()


def test_kernel_builds_into_the_cache_once(fresh_build: Path) -> None:
    assert cpu_attention.available()
    built = list((fresh_build / "kernels").glob("cpu_attention-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    cpu_attention._build.cache_clear()
    assert cpu_attention.available()
    assert built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt
    assert [p.name for p in (fresh_build / "kernels").iterdir()] == [built[0].name]


def test_no_compiler_falls_back_to_the_reference(
    fresh_build: Path, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(native_kernels.shutil, "which", lambda name: None)
    with pytest.raises(KernelBuildError, match="no C compiler"):
        cpu_attention._library()
    assert not cpu_attention.available()
    runner = ModelRunner(EngineConfig(model=str(tiny_llama_dir), num_kv_blocks=8))
    assert type(runner.backend) is TorchAttentionBackend
    with pytest.raises(KernelBuildError):
        ModelRunner(
            EngineConfig(model=str(tiny_llama_dir), attention_backend="cpu", num_kv_blocks=8)
        )


def test_compiler_errors_are_reported(fresh_build: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_attention, "_FLAGS", [*cpu_attention._FLAGS, "-fno-such-flag-here"])
    with pytest.raises(KernelBuildError, match="no-such-flag-here"):
        cpu_attention._library()
    assert not list((fresh_build / "kernels").glob("*.so"))  # nothing half-built is left
