"""Prefix caching on the real engine: embeds prefixes hit, different embeds never do, same outputs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from pe_common.errors import InvalidRequestError
from pe_engine import LLM, SamplingParams
from pe_engine.core.block_manager import root_hash

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


def cached_tokens(llm: LLM, prompt: dict[str, Any], params: SamplingParams = PARAMS) -> int:
    return llm.generate(prompt, params, use_tqdm=False)[0].num_cached_tokens


def salted(prompt: dict[str, Any], salt: str | None) -> dict[str, Any]:
    return prompt if salt is None else {**prompt, "cache_salt": salt}


@pytest.mark.parametrize("kind", ["token_ids", "embeds", "mixed"])
def test_a_cache_salt_only_hits_blocks_cached_under_the_same_salt(llm: LLM, kind: str) -> None:
    hidden = llm.engine.hidden_size
    seed = {"token_ids": 10, "embeds": 11, "mixed": 12}[kind]
    ids = [100 + seed * 20 + i for i in range(13)]
    prompt: dict[str, Any] = {
        "token_ids": {"prompt_token_ids": ids},
        "embeds": {"prompt_embeds": soft_prompt(hidden, seed, rows=13)},
        "mixed": with_soft_prompt(soft_prompt(hidden, seed, rows=8), ids[:5]),
    }[kind]
    assert cached_tokens(llm, salted(prompt, "tenant-a")) == 0
    assert cached_tokens(llm, salted(prompt, "tenant-b")) == 0  # same tokens, other salt
    assert cached_tokens(llm, salted(prompt, None)) == 0  # no salt is a salt of its own
    assert cached_tokens(llm, salted(prompt, "tenant-a")) == 12  # 3 full blocks, last one computed
    assert cached_tokens(llm, salted(prompt, "tenant-b")) == 12
    assert cached_tokens(llm, salted(prompt, None)) == 12


def test_salted_outputs_equal_unsalted_ones(llm: LLM) -> None:
    prompt = {"prompt_token_ids": [700 + i for i in range(10)]}
    plain = llm.generate(prompt, PARAMS, use_tqdm=False)[0].outputs[0].token_ids
    for salt in ("x", "x", "y"):  # a miss, a hit, a miss
        out = llm.generate(salted(prompt, salt), PARAMS, use_tqdm=False)[0]
        assert out.outputs[0].token_ids == plain


def test_every_branch_of_an_n_request_caches_under_its_salt(llm: LLM) -> None:
    """A 3-token prompt shares no full block, so each branch computes and registers its own
    first block (prompt + its first sampled token): those blocks must carry the salt too."""
    prompt = {"prompt_token_ids": [901, 902, 903], "cache_salt": "branchy"}
    params = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=9, ignore_eos=True)
    out = llm.generate(prompt, params, use_tqdm=False)[0]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1  # the branches differ
    for branch in out.outputs:
        follow_up = {"prompt_token_ids": [901, 902, 903, *branch.token_ids]}
        assert cached_tokens(llm, salted(follow_up, "other")) == 0
        assert cached_tokens(llm, salted(follow_up, "branchy")) == 8


def first_block_roots(llm: LLM, salts: list[str | None]) -> set[str | None]:
    """Which of ``salts`` head a cached first block (its parent is the salt's root hash)."""
    parents = {b.parent_hash for b in llm.engine.block_manager.blocks if b.block_hash}
    return {s for s in salts if root_hash(SimpleNamespace(cache_salt=s)) in parents}  # type: ignore[arg-type]


def test_preempted_and_recomputed_sequences_keep_their_salt(tiny_llama_dir: Path) -> None:
    tight = LLM(
        str(tiny_llama_dir), dtype="float32", device="cpu", max_model_len=128,
        num_kv_blocks=20, block_size=4, max_num_batched_tokens=16, max_num_seqs=4,
    )  # fmt: skip
    prompts = [{"prompt_token_ids": [300 + 20 * i + j for j in range(10)]} for i in range(4)]
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    first = tight.generate([salted(p, "a") for p in prompts], params, use_tqdm=False)
    assert tight.engine.scheduler.num_preemptions > 0
    assert first_block_roots(tight, [None, "a", "b"]) == {"a"}
    second = tight.generate([salted(p, "b") for p in prompts], params, use_tqdm=False)
    assert "b" in first_block_roots(tight, [None, "a", "b"]) <= {"a", "b"}
    assert [o.outputs[0].token_ids for o in first] == [o.outputs[0].token_ids for o in second]
    assert tight.engine.num_free_blocks == tight.engine.num_total_blocks


@pytest.mark.parametrize("salt", ["", 5, b"a"])
def test_a_bad_offline_cache_salt_is_refused_naming_it(llm: LLM, salt: object) -> None:
    with pytest.raises(InvalidRequestError, match="cache_salt") as info:
        llm.generate({"prompt_token_ids": [1, 2, 3], "cache_salt": salt}, PARAMS, use_tqdm=False)
    assert info.value.param == "cache_salt"
