"""Prefix caching on the real engine: embeds prefixes hit, different embeds never do, same outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pe_engine import LLM, SamplingParams

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def make_llm(model_dir: Path, caching: bool) -> LLM:
    return LLM(
        str(model_dir), dtype="float32", device="cpu", enable_prompt_embeds=True,
        max_model_len=256, num_kv_blocks=64, block_size=4, enable_prefix_caching=caching,
    )  # fmt: skip


@pytest.fixture(scope="module")
def llm(tiny_llama_dir: Path) -> LLM:
    return make_llm(tiny_llama_dir, caching=True)


def soft_prompt(hidden: int, seed: int, rows: int = 12) -> torch.Tensor:
    return torch.randn(rows, hidden, generator=torch.Generator().manual_seed(seed)) * 0.05


def with_soft_prompt(soft: torch.Tensor, ids: list[int]) -> dict[str, Any]:
    n = soft.shape[0]
    return {
        "prompt_token_ids": [0] * n + ids,
        "prompt_embeds": soft,
        "is_token_ids": [False] * n + [True] * len(ids),
    }


PARAMS = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


def test_repeated_embeds_prefix_hits_and_different_embeds_do_not(llm: LLM) -> None:
    hidden = llm.engine.hidden_size
    soft = soft_prompt(hidden, 1)
    stats = llm.engine.stats
    first = llm.generate(with_soft_prompt(soft, [11, 12, 13]), PARAMS, use_tqdm=False)[0]
    hits0 = stats()["prefix_cache_hits"]
    second = llm.generate(with_soft_prompt(soft, [21, 22, 23, 24]), PARAMS, use_tqdm=False)[0]
    assert stats()["prefix_cache_hits"] >= hits0 + 12
    assert second.num_cached_tokens >= 12 and first.num_cached_tokens == 0
    before = stats()["prefix_cache_hits"]
    other = soft_prompt(hidden, 2)  # same placeholder ids, different rows
    third = llm.generate(with_soft_prompt(other, [11, 12, 13]), PARAMS, use_tqdm=False)[0]
    assert stats()["prefix_cache_hits"] == before and third.num_cached_tokens == 0
    assert stats()["prefix_cache_queries"] > 0


def test_outputs_identical_with_and_without_caching(tiny_llama_dir: Path, llm: LLM) -> None:
    hidden = llm.engine.hidden_size
    soft = soft_prompt(hidden, 3)
    prompts = [with_soft_prompt(soft, [30 + i, 40 + i]) for i in range(6)]
    prompts += [{"prompt_token_ids": [5] * 9 + [i]} for i in range(4)]
    cached = [o.outputs[0].token_ids for o in llm.generate(prompts, PARAMS, use_tqdm=False)]
    again = [o.outputs[0].token_ids for o in llm.generate(prompts, PARAMS, use_tqdm=False)]
    plain = make_llm(tiny_llama_dir, caching=False)
    uncached = [o.outputs[0].token_ids for o in plain.generate(prompts, PARAMS, use_tqdm=False)]
    assert cached == again == uncached
    assert plain.engine.stats()["prefix_cache_hits"] == 0
    assert llm.engine.num_free_blocks == llm.engine.num_total_blocks
