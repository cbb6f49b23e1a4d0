"""pe_engine: a paged-KV inference engine that generates from text, token ids and prompt embeddings.

Names are imported on first use, so ``import pe_engine`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pe_engine.async_engine import AsyncEngine, EngineDeadError
    from pe_engine.config import EngineConfig
    from pe_engine.core.llm_engine import EngineStepError, LLMEngine
    from pe_engine.inputs.chat import ChatPromptBuilder
    from pe_engine.inputs.prompt_builder import PromptBuilder
    from pe_engine.llm import LLM
    from pe_engine.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
    from pe_engine.prompt import Prompt
    from pe_engine.sampling_params import SamplingParams

_EXPORTS = {
    "AsyncEngine": "pe_engine.async_engine",
    "EngineDeadError": "pe_engine.async_engine",
    "ChatPromptBuilder": "pe_engine.inputs.chat",
    "EngineConfig": "pe_engine.config",
    "LLM": "pe_engine.llm",
    "EngineStepError": "pe_engine.core.llm_engine",
    "LLMEngine": "pe_engine.core.llm_engine",
    "CompletionOutput": "pe_engine.outputs",
    "Logprob": "pe_engine.outputs",
    "RequestMetrics": "pe_engine.outputs",
    "RequestOutput": "pe_engine.outputs",
    "Prompt": "pe_engine.prompt",
    "PromptBuilder": "pe_engine.inputs.prompt_builder",
    "SamplingParams": "pe_engine.sampling_params",
}

__all__ = [
    "LLM",
    "AsyncEngine",
    "ChatPromptBuilder",
    "CompletionOutput",
    "EngineConfig",
    "EngineDeadError",
    "EngineStepError",
    "LLMEngine",
    "Logprob",
    "Prompt",
    "PromptBuilder",
    "RequestMetrics",
    "RequestOutput",
    "SamplingParams",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pe_engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
