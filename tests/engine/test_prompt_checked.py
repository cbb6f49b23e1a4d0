"""One validation pass per prompt (issue 19): a prompt PromptBuilder checked is trusted by the
engine (only its O(1) sizes are checked on the engine thread); anything else is still checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pe_common.errors import InvalidRequestError
from pe_engine import EngineConfig, SamplingParams
from pe_engine.core.llm_engine import LLMEngine
from pe_engine.inputs import prompt_builder
from pe_engine.inputs.prompt_builder import build_token_prompt
from pe_engine.prompt import Prompt

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def engine(tiny_llama_dir: Path) -> LLMEngine:
    config = EngineConfig(
        model=str(tiny_llama_dir),
        dtype="float32",
        device="cpu",
        max_model_len=64,
        num_kv_blocks=16,
        block_size=8,
    )
    return LLMEngine(config)


def test_check_contents_marks_the_prompt(engine: LLMEngine) -> None:
    prompt = build_token_prompt([1, 2, 3])
    assert not prompt.is_checked
    assert engine.prompt_builder.check_contents(prompt) is prompt
    assert prompt.is_checked
    assert prompt == build_token_prompt([1, 2, 3])  # the mark is not part of the value


def test_engine_trusts_a_checked_prompt(engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    prompt = engine.prompt_builder.check_contents(build_token_prompt([1, 2, 3]))
    raw = build_token_prompt([1, 2, 3])

    def read_again(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a checked prompt was read again")

    monkeypatch.setattr(prompt_builder, "check_token_ids", read_again)
    monkeypatch.setattr(Prompt, "validate", read_again)
    engine.add_request("trusted", prompt, SamplingParams(max_tokens=1))
    assert engine.has_unfinished_requests()
    engine.abort_request("trusted")
    with pytest.raises(AssertionError):  # the patch is live: an unchecked prompt is read
        engine.add_request("raw", raw, SamplingParams(max_tokens=1))


def test_engine_checks_what_was_not_checked(engine: LLMEngine) -> None:
    vocab = engine.vocab_size
    with pytest.raises(InvalidRequestError) as info:
        engine.add_request("raw", build_token_prompt([1, vocab]), SamplingParams(max_tokens=1))
    assert info.value.code == "invalid_token_id"
    with pytest.raises(InvalidRequestError) as info:
        engine.add_request("dict", {"prompt_token_ids": [vocab]}, SamplingParams(max_tokens=1))
    assert info.value.code == "invalid_token_id"
    assert not engine.has_unfinished_requests()


def test_a_checked_prompt_still_gets_its_length_checked(engine: LLMEngine) -> None:
    """The O(1) sizes are the engine's own: a checked prompt longer than the context is refused."""
    prompt = engine.prompt_builder.check_contents(build_token_prompt([1] * engine.max_model_len))
    with pytest.raises(InvalidRequestError) as info:
        engine.add_request("long", prompt, SamplingParams(max_tokens=1))
    assert info.value.code == "context_length_exceeded"


def test_embeds_are_checked_once_too(engine: LLMEngine) -> None:
    builder = engine.prompt_builder
    embeds = torch.zeros(3, engine.hidden_size + 1)
    prompt = build_token_prompt([1, 2, 3])
    prompt.prompt_embeds, prompt.is_token_ids = embeds, [True, False, False]
    with pytest.raises(Exception) as info:
        builder.check_contents(prompt)
    assert not prompt.is_checked
    assert getattr(info.value, "code", None) in {"invalid_prompt", "prompt_embeds_disabled"}
