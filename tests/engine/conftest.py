"""The engine most engine tests drive: the tiny random Llama on the CPU, prompt embeds on.

A test module that needs other limits defines its own ``llm`` fixture, which overrides this one;
``build_llm`` makes that engine with only the differing settings spelled out.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pe_engine import LLM

SETTINGS: dict[str, Any] = {
    "dtype": "float32",
    "device": "cpu",
    "enable_prompt_embeds": True,
    "max_model_len": 256,
    "num_kv_blocks": 64,
    "block_size": 8,
}


@pytest.fixture(scope="session")
def build_llm(tiny_llama_dir: Path) -> Callable[..., LLM]:
    """Makes an LLM on the tiny Llama with these settings, some overridden by keyword."""

    def build(**overrides: Any) -> LLM:
        return LLM(str(tiny_llama_dir), **{**SETTINGS, **overrides})

    return build


@pytest.fixture(scope="module")
def llm(build_llm: Callable[..., LLM]) -> LLM:
    return build_llm()
