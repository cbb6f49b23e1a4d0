"""The engine's model on paged batches equals transformers (float32) for every architecture."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from pe_engine.config import EngineConfig
from pe_engine.models.runner import ModelRunner
from pe_engine.prompt import Prompt
from pe_engine.sampling_params import SamplingParams

pytestmark = pytest.mark.usefixtures("torch_single_thread")

ARCH_FIXTURES = ["tiny_llama_dir", "tiny_llama_tied_dir", "tiny_qwen2_dir", "tiny_qwen3_dir"]
NUM_NEW_TOKENS = 32
PLACEHOLDER = 0


def random_ids(length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 49152) for _ in range(length)]


@pytest.fixture(scope="module", params=ARCH_FIXTURES)
def models(request: pytest.FixtureRequest) -> tuple[ModelRunner, Any]:
    from transformers import AutoModelForCausalLM

    model_dir = request.getfixturevalue(request.param)
    config = EngineConfig(model=str(model_dir), dtype="float32", num_kv_blocks=96, block_size=4)
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None
    return ModelRunner(config), hf


@pytest.fixture
def driver(models: tuple[ModelRunner, Any], runner_driver: type) -> Any:
    return runner_driver(models[0])


def hf_logits(hf: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].float()


def hf_greedy(hf: Any, ids: list[int], num_new: int = NUM_NEW_TOKENS) -> list[int]:
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([ids]), max_new_tokens=num_new, do_sample=False, pad_token_id=0
        )
    tokens = out[0, len(ids) :].tolist()
    assert len(tokens) == num_new
    return tokens


def mixed_prompt(runner: ModelRunner, ids: list[int], embed_positions: set[int]) -> Prompt:
    """Embed rows at ``embed_positions`` equal the model's own embeddings of those ids."""
    mask = [p not in embed_positions for p in range(len(ids))]
    rows = runner.embed_tokens([t for t, is_token in zip(ids, mask, strict=True) if not is_token])
    token_ids = [t if is_token else PLACEHOLDER for t, is_token in zip(ids, mask, strict=True)]
    return Prompt(token_ids=token_ids, prompt_embeds=rows, is_token_ids=mask)


def tokens(samples: list[Any]) -> list[int]:
    return [s.token_id for s in samples]


def test_prompt_logits_match_transformers(models: tuple[ModelRunner, Any], driver: Any) -> None:
    _, hf = models
    ids = random_ids(23, seed=1)
    seq = driver.new_seq(Prompt(ids))
    logits = driver.logits(seq, len(ids))
    torch.testing.assert_close(logits, hf_logits(hf, ids), atol=1e-4, rtol=0)


def test_chunked_prefill_matches_transformers(models: tuple[ModelRunner, Any], driver: Any) -> None:
    _, hf = models
    ids = random_ids(29, seed=2)
    seq = driver.new_seq(Prompt(ids))
    chunks = []
    for n in (5, 11, 13):  # chunk borders fall inside blocks of 4
        chunks.append(driver.logits(seq, n))
        seq.num_computed_tokens += n
    torch.testing.assert_close(torch.cat(chunks), hf_logits(hf, ids), atol=1e-4, rtol=0)


def test_greedy_text_ids_match_generate(models: tuple[ModelRunner, Any], driver: Any) -> None:
    _, hf = models
    ids = random_ids(17, seed=3)
    (samples,) = driver.generate([driver.new_seq(Prompt(ids))], NUM_NEW_TOKENS)
    assert tokens(samples) == hf_greedy(hf, ids)


def test_greedy_prompt_embeds_match_generate(models: tuple[ModelRunner, Any], driver: Any) -> None:
    runner, hf = models
    ids = random_ids(18, seed=4)
    prompt = mixed_prompt(runner, ids, set(range(len(ids))))
    assert prompt.is_pure_embeds
    (samples,) = driver.generate([driver.new_seq(prompt)], NUM_NEW_TOKENS)
    assert tokens(samples) == hf_greedy(hf, ids)


def test_greedy_mixed_prompt_matches_generate(models: tuple[ModelRunner, Any], driver: Any) -> None:
    runner, hf = models
    ids = random_ids(21, seed=5)
    prompt = mixed_prompt(runner, ids, {0, 4, 5, 6, 7, 8, 13, 19, 20})
    prompt.validate()
    (samples,) = driver.generate([driver.new_seq(prompt)], NUM_NEW_TOKENS, chunk_size=6)
    assert tokens(samples) == hf_greedy(hf, ids)


def test_staggered_batch_matches_generate(models: tuple[ModelRunner, Any], driver: Any) -> None:
    """Prompts join at different steps, prefill in chunks beside running decodes, reuse blocks."""
    runner, hf = models
    all_ids = [random_ids(n, seed=10 + n) for n in (3, 26, 9, 15, 1, 30)]
    prompts = [Prompt(ids) for ids in all_ids[:4]]
    prompts += [mixed_prompt(runner, ids, {0, 2, 3, 7}) for ids in all_ids[4:5]]
    prompts += [mixed_prompt(runner, all_ids[5], set(range(10, 30)))]
    seqs = [driver.new_seq(p) for p in prompts]
    samples = driver.generate(seqs, 12, chunk_size=7, arrival_steps=[0, 0, 2, 3, 5, 5])
    for ids, seq_samples in zip(all_ids, samples, strict=True):
        assert tokens(seq_samples) == hf_greedy(hf, ids, 12)


def test_logprobs_match_transformers_log_softmax(
    models: tuple[ModelRunner, Any], driver: Any
) -> None:
    _, hf = models
    ids = random_ids(12, seed=6)
    params = SamplingParams(temperature=0.7, seed=3, max_tokens=1, logprobs=5)
    (samples,) = driver.generate([driver.new_seq(Prompt(ids), params)], 1)
    result = samples[0]
    reference = torch.log_softmax(hf_logits(hf, ids)[-1], dim=-1)
    assert result.logprob == pytest.approx(reference[result.token_id].item(), abs=1e-4)
    top_values, top_ids = reference.topk(5)
    assert [t for t, _ in result.top_logprobs] == top_ids.tolist()
    torch.testing.assert_close(
        torch.tensor([lp for _, lp in result.top_logprobs]), top_values, atol=1e-4, rtol=0
    )
    assert result.rank == int((reference > reference[result.token_id]).sum()) + 1
