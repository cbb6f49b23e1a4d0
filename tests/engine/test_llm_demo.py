"""The real SmolLM2-135M-Instruct: the same chat as text and as embeds gives the same answer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pe_engine import LLM, SamplingParams

QUESTION = "What is the capital of France?"


@pytest.mark.slow
def test_smollm2_chat_text_and_embeds_agree_on_paris(demo_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    llm = LLM(str(demo_model_dir), dtype="float32", device="cpu", enable_prompt_embeds=True,
              max_model_len=512)  # fmt: skip
    hf = AutoModelForCausalLM.from_pretrained(demo_model_dir, dtype=torch.float32)
    ids = llm.get_tokenizer().encode(QUESTION, add_special_tokens=False)
    with torch.no_grad():
        rows = hf.get_input_embeddings()(torch.tensor(ids)).clone()
    del hf
    params = SamplingParams(temperature=0.0, max_tokens=24)
    text_messages = [{"role": "user", "content": QUESTION}]
    embeds_messages = [{"role": "user", "content": [{"type": "prompt_embeds", "data": rows}]}]
    text_out, embeds_out = llm.chat([text_messages, embeds_messages], params, use_tqdm=False)
    assert "Paris" in text_out.outputs[0].text
    assert embeds_out.outputs[0].token_ids == text_out.outputs[0].token_ids
    assert embeds_out.outputs[0].text == text_out.outputs[0].text
