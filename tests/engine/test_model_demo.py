"""The real SmolLM2-135M-Instruct through the runner equals transformers (slow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pe_engine.config import EngineConfig
from pe_engine.models.runner import ModelRunner
from pe_engine.prompt import Prompt

pytestmark = pytest.mark.slow

NUM_NEW_TOKENS = 12


@pytest.fixture(scope="module")
def chat_ids(demo_model_dir: Path) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(demo_model_dir))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def test_demo_model_greedy_matches_transformers(
    demo_model_dir: Path, chat_ids: list[int], runner_driver: type
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = EngineConfig(model=str(demo_model_dir), dtype="float32", num_kv_blocks=64)
    runner = ModelRunner(config)
    driver: Any = runner_driver(runner)
    (text_samples,) = driver.generate([driver.new_seq(Prompt(chat_ids))], NUM_NEW_TOKENS)
    rows = runner.embed_tokens(chat_ids)
    embeds = Prompt([0] * len(chat_ids), rows, [False] * len(chat_ids))
    (embeds_samples,) = driver.generate([driver.new_seq(embeds)], NUM_NEW_TOKENS)

    hf = AutoModelForCausalLM.from_pretrained(str(demo_model_dir), dtype=torch.float32)
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([chat_ids]), max_new_tokens=NUM_NEW_TOKENS, do_sample=False, pad_token_id=2
        )
    reference = out[0, len(chat_ids) :].tolist()
    text_tokens = [s.token_id for s in text_samples][: len(reference)]
    assert text_tokens == reference
    assert [s.token_id for s in embeds_samples][: len(reference)] == reference
    tokenizer = AutoTokenizer.from_pretrained(str(demo_model_dir))
    assert "Paris" in tokenizer.decode(text_tokens)
