"""Sampling through the engine: seeds across batch compositions, n > 1, penalties, logprobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pe_engine import LLM, SamplingParams

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def hf(tiny_llama_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()


def embeds_of(hf: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf.get_input_embeddings()(torch.tensor(ids)).clone()


def fillers(llm: LLM, count: int) -> list[str]:
    return [f"Filler prompt number {i} " * (1 + i % 5) for i in range(count)]


def test_seeded_sampling_is_the_same_alone_and_in_any_batch(llm: LLM) -> None:
    params = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, seed=1234, max_tokens=24,
                            ignore_eos=True)  # fmt: skip
    target = "A seeded request"
    alone = llm.generate(target, params, use_tqdm=False)[0].outputs[0].token_ids
    unseeded = SamplingParams(temperature=1.0, max_tokens=30, ignore_eos=True)
    batch = [*fillers(llm, 5), target, *fillers(llm, 3)]
    mixed = llm.generate(batch, [unseeded] * 5 + [params] + [unseeded] * 3, use_tqdm=False)
    assert mixed[5].outputs[0].token_ids == alone
    other_seed = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, seed=99, max_tokens=24,
                                ignore_eos=True)  # fmt: skip
    assert llm.generate(target, other_seed, use_tqdm=False)[0].outputs[0].token_ids != alone


def test_n_branches_with_seed_are_reproducible_differ_and_share_blocks(llm: LLM) -> None:
    params = SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=16, ignore_eos=True)
    prompt = {"prompt_token_ids": list(range(100, 160))}
    first = llm.generate(prompt, params, use_tqdm=False)[0]
    second = llm.generate(prompt, params, use_tqdm=False)[0]
    branches = [o.token_ids for o in first.outputs]
    assert [o.index for o in first.outputs] == [0, 1, 2, 3]
    assert branches == [o.token_ids for o in second.outputs]
    assert len({tuple(b) for b in branches}) == 4
    engine = llm.engine
    engine.add_request("share", llm.engine.prompt_builder.build(prompt), params)
    peak = 0
    while engine.has_unfinished_requests():
        engine.step()
        peak = max(peak, engine.num_total_blocks - engine.num_free_blocks)
    prompt_blocks = -(-60 // engine.block_manager.block_size)
    assert peak < 4 * prompt_blocks
    assert engine.num_free_blocks == engine.num_total_blocks


def reference_penalised_greedy(
    hf: Any, x: torch.Tensor, counted_prompt_ids: list[int], n: int, rep: float, pres: float,
    freq: float,
) -> list[int]:  # fmt: skip
    """vLLM's rules: repetition over prompt + output ids; presence/frequency over output ids."""
    out_ids: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            feed = torch.cat([x, embeds_of(hf, out_ids)]) if out_ids else x
            logits = hf(inputs_embeds=feed[None]).logits[0, -1].clone()
            seen = set(counted_prompt_ids) | set(out_ids)
            for t in seen:
                logits[t] = logits[t] / rep if logits[t] > 0 else logits[t] * rep
            counts = torch.bincount(torch.tensor(out_ids, dtype=torch.long),
                                    minlength=logits.numel()).float() if out_ids else None  # fmt: skip
            if counts is not None:
                logits -= freq * counts + pres * (counts > 0).float()
            out_ids.append(int(logits.argmax()))
    return out_ids


def test_penalties_count_real_tokens_only_and_batch_with_longer_text(llm: LLM, hf: Any) -> None:
    tok = llm.get_tokenizer()
    ids = tok.encode("penalties should only see real token ids in this prompt")
    rows = embeds_of(hf, ids)
    kw = {"repetition_penalty": 1.3, "presence_penalty": 0.5, "frequency_penalty": 0.4}
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, **kw)
    long_text = ["a much longer plain text prompt " * 6, "another long one " * 8]
    outs = llm.generate(
        [{"prompt_embeds": rows}, *long_text, {"prompt_token_ids": ids}], params, use_tqdm=False
    )
    pure = reference_penalised_greedy(hf, rows, [], 12, 1.3, 0.5, 0.4)
    text = reference_penalised_greedy(hf, rows, ids, 12, 1.3, 0.5, 0.4)
    assert outs[0].outputs[0].token_ids == pure
    assert outs[3].outputs[0].token_ids == text
    mask = [i >= 4 for i in range(len(ids))]
    mixed = llm.generate(
        {"prompt_token_ids": ids, "prompt_embeds": rows[:4], "is_token_ids": mask}, params,
        use_tqdm=False,
    )[0]  # fmt: skip
    assert mixed.outputs[0].token_ids == reference_penalised_greedy(hf, rows, ids[4:], 12, 1.3,
                                                                    0.5, 0.4)  # fmt: skip


def test_logprobs_match_transformers_log_softmax(llm: LLM, hf: Any) -> None:
    ids = llm.get_tokenizer().encode("Logprobs are checked against the reference")
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=3)
    out = llm.generate({"prompt_token_ids": ids}, params, use_tqdm=False)[0].outputs[0]
    assert out.logprobs is not None and len(out.logprobs) == 6
    context = list(ids)
    total = 0.0
    with torch.no_grad():
        for token, entry in zip(out.token_ids, out.logprobs, strict=True):
            ref = torch.log_softmax(hf(torch.tensor([context])).logits[0, -1], dim=-1)
            assert entry[token].rank == 1
            assert abs(entry[token].logprob - float(ref[token])) < 1e-4
            top = torch.topk(ref, 3)
            for rank, (t, lp) in enumerate(
                zip(top.indices.tolist(), top.values.tolist(), strict=True), 1
            ):
                assert entry[t].rank == rank and abs(entry[t].logprob - lp) < 1e-4
            assert entry[token].decoded_token == llm.get_tokenizer().decode([token])
            total += float(ref[token])
            context.append(token)
    assert out.cumulative_logprob is not None and abs(out.cumulative_logprob - total) < 1e-3
