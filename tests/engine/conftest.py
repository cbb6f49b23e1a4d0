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


AVX2_FLAGS = ("-O3", "-march=haswell", "-fopenmp", "-fno-math-errno", "-fPIC", "-shared")


@pytest.fixture
def avx2_int8(monkeypatch: pytest.MonkeyPatch) -> Any:
    """pe's int8 kernel library as a CPU without AVX512-VNNI builds it (AVX2), in place of
    this machine's build for the test: the engine's int8 products and C layer walk use it."""
    from pe_engine.models import int8_layers, int8_linear

    lib = int8_linear._build_int8_library(AVX2_FLAGS)
    if lib is None:
        pytest.skip("the AVX2 int8 kernel does not build here (not x86)")
    monkeypatch.setattr(int8_linear, "int8_kernel_library", lambda: lib)
    monkeypatch.setattr(int8_layers, "int8_kernel_library", lambda: lib)
    product = int8_linear.linear_function(lib)  # typed once, as int8_kernel() does
    monkeypatch.setattr(int8_linear, "int8_kernel", lambda: product)
    return lib
