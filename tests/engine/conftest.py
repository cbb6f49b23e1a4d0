"""The engine most engine tests drive: the tiny random Llama on the CPU, prompt embeds on.

A test module that needs other limits defines its own ``llm`` fixture, which overrides this one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pe_engine import LLM


@pytest.fixture(scope="module")
def llm(tiny_llama_dir: Path) -> LLM:
    return LLM(
        str(tiny_llama_dir), dtype="float32", device="cpu", enable_prompt_embeds=True,
        max_model_len=256, num_kv_blocks=64, block_size=8,
    )  # fmt: skip
