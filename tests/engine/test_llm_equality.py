"""Token-for-token equality with transformers (float32, greedy) through ``LLM.generate``/``chat``.

For each architecture fixture: text, token ids, the model's own embeddings of the same ids,
mixed ids + embeds (both layouts), random embeds spliced at known positions, chat with embeds
parts vs. the same chat as text, and a batch of 16 requests that join and leave at different
steps in a small KV pool (plus a pool and budget that force preemption and chunked prefill).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from pe_common.codec import encode_prompt_embeds
from pe_engine import LLM, SamplingParams

pytestmark = pytest.mark.usefixtures("torch_single_thread")

ARCHS = ["tiny_llama_dir", "tiny_llama_tied_dir", "tiny_qwen2_dir", "tiny_qwen3_dir"]
NEW_TOKENS = 32


def _random_prompts() -> list[list[int]]:
    """16 prompts of 3-60 ids; half share a 9-id prefix (prefix caching has work to do)."""
    rng = random.Random(7)
    shared = [rng.randrange(3, VOCAB) for _ in range(9)]
    prompts = []
    for i in range(16):
        tail = [rng.randrange(3, VOCAB) for _ in range(rng.randint(3, 51))]
        prompts.append(shared + tail if i % 2 else tail)
    return prompts


VOCAB = 49152  # the SmolLM2 tokenizer every fixture model uses
PROMPTS = _random_prompts()
MAX_NEW = 40


class HFOracle:
    """Greedy decoding with transformers on ``inputs_embeds`` (so any splice can be expressed)."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.embed = self.model.get_input_embeddings()
        self._batch: list[list[int]] | None = None

    @torch.no_grad()
    def embeds_of(self, ids: list[int]) -> torch.Tensor:
        return self.embed(torch.tensor(ids)).detach().clone()

    @torch.no_grad()
    def greedy(
        self, ids: list[int], rows: dict[int, torch.Tensor] | None = None, n: int = NEW_TOKENS
    ) -> list[int]:
        x = self.embeds_of(ids)
        for pos, row in (rows or {}).items():
            x[pos] = row
        out = self.model(inputs_embeds=x[None], use_cache=True)
        tokens: list[int] = []
        for _ in range(n):
            token = int(out.logits[0, -1].argmax())
            tokens.append(token)
            out = self.model(
                input_ids=torch.tensor([[token]]),
                past_key_values=out.past_key_values,
                use_cache=True,
            )
        return tokens

    def prompts_greedy(self) -> list[list[int]]:
        """MAX_NEW greedy tokens for every prompt of PROMPTS (greedy outputs are prefixes)."""
        if self._batch is None:
            self._batch = self._batched_greedy(PROMPTS, MAX_NEW)
        return self._batch

    @torch.no_grad()
    def _batched_greedy(self, prompts: list[list[int]], n: int) -> list[list[int]]:
        """One left-padded batch: masked padding keys get exactly zero attention weight."""
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        tokens = []
        for _ in range(n):
            next_ids = out.logits[:, -1].argmax(-1)
            tokens.append(next_ids)
            mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=mask.dtype)], dim=1)
            positions = positions[:, -1:] + 1
            out = self.model(
                input_ids=next_ids[:, None], attention_mask=mask, position_ids=positions,
                past_key_values=out.past_key_values, use_cache=True,
            )  # fmt: skip
        return torch.stack(tokens, dim=1).tolist()


@pytest.fixture(scope="module", params=ARCHS)
def model_dir(request: pytest.FixtureRequest) -> Path:
    return Path(request.getfixturevalue(request.param))


_ORACLES: dict[Path, HFOracle] = {}


def oracle_for(model_dir: Path) -> HFOracle:
    if model_dir not in _ORACLES:
        _ORACLES[model_dir] = HFOracle(model_dir)
    return _ORACLES[model_dir]


@pytest.fixture(scope="module")
def oracle(model_dir: Path) -> HFOracle:
    return oracle_for(model_dir)


@pytest.fixture(params=["tiny_llama_dir", "tiny_qwen3_dir"])
def pressure_dir(request: pytest.FixtureRequest) -> Path:
    return Path(request.getfixturevalue(request.param))


@pytest.fixture(scope="module")
def llm(model_dir: Path) -> LLM:
    return LLM(
        str(model_dir), dtype="float32", device="cpu", enable_prompt_embeds=True,
        max_model_len=256, num_kv_blocks=48, block_size=8, max_num_seqs=8,
    )  # fmt: skip


def greedy(n: int = NEW_TOKENS) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


def ids_of(llm: LLM, text: str) -> list[int]:
    return list(llm.get_tokenizer().encode(text))


def test_text_ids_embeds_and_mixed_match_transformers(llm: LLM, oracle: HFOracle) -> None:
    ids = ids_of(llm, "The quick brown fox jumps over the lazy dog because")
    expected = oracle.greedy(ids)
    rows = oracle.embeds_of(ids)
    mask = [i % 3 != 1 for i in range(len(ids))]
    compact = rows[[not m for m in mask]]
    prompts: list[Any] = [
        "The quick brown fox jumps over the lazy dog because",
        {"prompt_token_ids": ids},
        {"prompt_embeds": rows},
        {"prompt_embeds": rows[None].double()},  # (1, N, H), another float dtype
        {"prompt_token_ids": ids, "prompt_embeds": rows, "prompt_is_token_ids": mask},
        {"prompt_token_ids": ids, "prompt_embeds": compact, "is_token_ids": mask},
    ]
    outputs = llm.generate(prompts, greedy(), use_tqdm=False)
    for out in outputs:
        assert out.outputs[0].token_ids == expected
    assert outputs[0].prompt_token_ids == ids and outputs[0].prompt is not None
    assert outputs[2].prompt_token_ids is None and outputs[2].prompt is None
    assert outputs[4].prompt_token_ids == [t if m else 0 for t, m in zip(ids, mask, strict=True)]
    assert all(out.num_prompt_tokens == len(ids) for out in outputs)


def test_random_embeds_are_spliced_at_their_positions(llm: LLM, oracle: HFOracle) -> None:
    ids = ids_of(llm, "Soft prompts sit between these words and those words here")
    g = torch.Generator().manual_seed(0)
    hidden = oracle.embed.weight.shape[1]
    positions = [0, 1, 5, 6, 7, len(ids) - 1]
    rows = {p: torch.randn(hidden, generator=g) * 0.05 for p in positions}
    mask = [i not in rows for i in range(len(ids))]
    compact = torch.stack([rows[p] for p in positions])
    out = llm.generate(
        {"prompt_token_ids": ids, "prompt_embeds": compact, "is_token_ids": mask}, greedy(),
        use_tqdm=False,
    )  # fmt: skip
    assert out[0].outputs[0].token_ids == oracle.greedy(ids, rows)


def test_chat_with_embeds_parts_equals_the_text_chat(llm: LLM, oracle: HFOracle) -> None:
    tok = llm.get_tokenizer()
    part_ids = tok.encode("there, my good friend", add_special_tokens=False)
    text_messages = [{"role": "user", "content": "Hi\nthere, my good friend"}]
    embeds_messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Hi"},
                {"type": "prompt_embeds", "data": oracle.embeds_of(part_ids)},
            ],
        }
    ]
    encoded = encode_prompt_embeds(oracle.embeds_of(part_ids), format="torch")
    base64_messages = [
        {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                     {"type": "prompt_embeds", "data": encoded}]}
    ]  # fmt: skip
    conversations = [text_messages, embeds_messages, base64_messages]
    text_out, embeds_out, base64_out = llm.chat(conversations, greedy(), use_tqdm=False)
    assert text_out.prompt_token_ids is not None
    expected = oracle.greedy(text_out.prompt_token_ids)
    assert text_out.outputs[0].token_ids == expected
    assert embeds_out.outputs[0].token_ids == expected
    assert base64_out.outputs[0].token_ids == expected
    assert embeds_out.outputs[0].text == text_out.outputs[0].text


def test_batch_of_16_joins_and_leaves_with_block_reuse(llm: LLM, oracle: HFOracle) -> None:
    rng = random.Random(11)
    max_tokens = [rng.randint(8, MAX_NEW) for _ in PROMPTS]
    params = [greedy(n) for n in max_tokens]
    engine = llm.engine
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    for expected, n, out in zip(oracle.prompts_greedy(), max_tokens, outputs, strict=True):
        assert out.outputs[0].token_ids == expected[:n]
        assert out.outputs[0].finish_reason == "length"
    assert engine.stats()["num_steps"] > MAX_NEW  # they joined and left at different steps
    assert engine.num_free_blocks == engine.num_total_blocks


@pytest.mark.parametrize("caching", [True, False])
def test_preemption_and_chunking_keep_outputs_exact(pressure_dir: Path, caching: bool) -> None:
    oracle = oracle_for(pressure_dir)
    llm = LLM(
        str(pressure_dir), dtype="float32", device="cpu", enable_prompt_embeds=True,
        max_model_len=128, num_kv_blocks=20, block_size=4, max_num_batched_tokens=16,
        max_num_seqs=6, enable_prefix_caching=caching,
    )  # fmt: skip
    inputs: list[Any] = []
    for i, ids in enumerate(PROMPTS[:8]):
        if i % 4 == 3:  # mixed: every fourth position comes as the model's own embedding
            mask = [j % 4 != 0 for j in range(len(ids))]
            compact = oracle.embeds_of(ids)[[not m for m in mask]]
            inputs.append({"prompt_token_ids": ids, "prompt_embeds": compact, "is_token_ids": mask})
        else:
            inputs.append({"prompt_token_ids": ids})
    outputs = llm.generate(inputs, greedy(20), use_tqdm=False)
    stats = llm.engine.stats()
    assert stats["num_preemptions"] > 0
    for expected, out in zip(oracle.prompts_greedy()[:8], outputs, strict=True):
        assert out.outputs[0].token_ids == expected[:20]
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
