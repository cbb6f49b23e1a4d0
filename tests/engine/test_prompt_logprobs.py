"""prompt_logprobs (text and mixed prompts) against transformers, and best_of > n."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pe_engine import LLM, SamplingParams

pytestmark = pytest.mark.usefixtures("torch_single_thread")

IDS = [17, 905, 33, 4021, 88, 1500, 7, 260, 3111, 42, 999, 12, 640, 2048, 5, 77, 301, 18, 2200]
EMBED_POSITIONS = {0, 1, 6, 7, 8, 15}  # includes position 0 and a run of embeds


@pytest.fixture(scope="module")
def hf(tiny_llama_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()


def make_llm(model_dir: Path, **kwargs: Any) -> LLM:
    return LLM(
        str(model_dir), dtype="float32", device="cpu", enable_prompt_embeds=True,
        max_model_len=256, num_kv_blocks=64, block_size=8, **kwargs,
    )  # fmt: skip


@pytest.fixture(scope="module")
def llm(tiny_llama_dir: Path) -> LLM:
    return make_llm(tiny_llama_dir)


def hf_prompt_logprobs(hf: Any, ids: list[int], embed_rows: torch.Tensor | None) -> torch.Tensor:
    """log_softmax of transformers' logits at every position (embeds spliced in as given)."""
    with torch.no_grad():
        inputs = hf.get_input_embeddings()(torch.tensor([ids]))
        if embed_rows is not None:
            inputs[0, sorted(EMBED_POSITIONS)] = embed_rows
        return torch.log_softmax(hf(inputs_embeds=inputs).logits[0], dim=-1)


def mixed_prompt(hf: Any) -> tuple[dict[str, Any], torch.Tensor]:
    """Embed positions carry different rows than their ids' (so a wrong splice shows)."""
    rows = torch.randn(
        len(EMBED_POSITIONS), hf.config.hidden_size, generator=torch.Generator().manual_seed(3)
    )
    is_token_ids = [p not in EMBED_POSITIONS for p in range(len(IDS))]
    prompt = {"prompt_token_ids": IDS, "prompt_embeds": rows, "is_token_ids": is_token_ids}
    return prompt, rows


def check_against(entries: list[Any], reference: torch.Tensor, skip: set[int], k: int) -> None:
    assert len(entries) == len(IDS)
    for position, entry in enumerate(entries):
        if position == 0 or position in skip:
            assert entry is None, position
            continue
        expected = reference[position - 1]
        token = IDS[position]
        assert entry[token].logprob == pytest.approx(expected[token].item(), abs=1e-4)
        assert entry[token].rank == int((expected > expected[token]).sum()) + 1
        top = expected.topk(k)
        for rank, (token_id, value) in enumerate(
            zip(top.indices.tolist(), top.values.tolist(), strict=True)
        ):
            assert entry[token_id].logprob == pytest.approx(value, abs=1e-4)
            if token_id != token:
                assert entry[token_id].rank == rank + 1
        assert set(entry) <= set(top.indices.tolist()) | {token}


def test_text_prompt_logprobs_match_transformers(llm: LLM, hf: Any) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=2, prompt_logprobs=3)
    (out,) = llm.generate({"prompt_token_ids": IDS}, params, use_tqdm=False)
    check_against(out.prompt_logprobs, hf_prompt_logprobs(hf, IDS, None), set(), 3)


def test_mixed_prompt_logprobs_are_none_at_embed_positions(llm: LLM, hf: Any) -> None:
    prompt, rows = mixed_prompt(hf)
    params = SamplingParams(temperature=0.0, max_tokens=2, prompt_logprobs=2)
    (out,) = llm.generate(prompt, params, use_tqdm=False)
    check_against(out.prompt_logprobs, hf_prompt_logprobs(hf, IDS, rows), EMBED_POSITIONS, 2)


def test_prompt_logprobs_survive_chunking_and_prefix_cache(tiny_llama_dir: Path, hf: Any) -> None:
    chunked = make_llm(tiny_llama_dir, max_num_batched_tokens=5)
    prompt, rows = mixed_prompt(hf)
    params = SamplingParams(temperature=0.0, max_tokens=3, prompt_logprobs=0)
    reference = hf_prompt_logprobs(hf, IDS, rows)
    for _ in range(2):  # the second run would hit the prefix cache if it were consulted
        (out,) = chunked.generate(prompt, params, use_tqdm=False)
        check_against(out.prompt_logprobs, reference, EMBED_POSITIONS, 0)
    plain = chunked.generate(prompt, SamplingParams(temperature=0.0, max_tokens=3), use_tqdm=False)
    assert plain[0].prompt_logprobs is None
    assert plain[0].outputs[0].token_ids == out.outputs[0].token_ids


def test_best_of_returns_the_n_most_likely_branches(llm: LLM) -> None:
    common = {"temperature": 1.0, "seed": 11, "max_tokens": 6, "ignore_eos": True, "logprobs": 0}
    (every,) = llm.generate("best of", SamplingParams(n=4, **common), use_tqdm=False)
    (best,) = llm.generate("best of", SamplingParams(n=2, best_of=4, **common), use_tqdm=False)
    ranked = sorted(every.outputs, key=lambda o: -o.cumulative_logprob)
    assert [o.token_ids for o in best.outputs] == [o.token_ids for o in ranked[:2]]
    assert [o.index for o in best.outputs] == [0, 1]
    assert best.outputs[0].cumulative_logprob >= best.outputs[1].cumulative_logprob
    assert llm.engine.num_free_blocks == llm.engine.num_total_blocks
