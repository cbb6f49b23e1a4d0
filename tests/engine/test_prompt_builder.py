"""Prompt building: every offline input form, both mixed layouts, and hostile inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pe_common.errors import PEValidationError
from pe_engine.inputs.prompt_builder import PromptBuilder, build_mixed_prompt

H = 8


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


@pytest.fixture
def builder(tokenizer: Any) -> PromptBuilder:
    return PromptBuilder(
        tokenizer=tokenizer,
        hidden_size=H,
        dtype=torch.float32,
        vocab_size=len(tokenizer),
        max_model_len=32,
        enable_prompt_embeds=True,
    )


def test_text_uses_the_tokenizer_defaults(builder: PromptBuilder, tokenizer: Any) -> None:
    prompt = builder.build("Hello world")
    assert prompt.token_ids == tokenizer.encode("Hello world")  # SmolLM2 adds no BOS
    assert prompt.text == "Hello world" and prompt.prompt_embeds is None
    assert builder.build({"prompt": "Hello world"}).token_ids == prompt.token_ids


def test_token_ids_and_pure_embeds(builder: PromptBuilder) -> None:
    assert builder.build({"prompt_token_ids": [5, 6, 7]}).token_ids == [5, 6, 7]
    t = torch.randn(1, 4, H, dtype=torch.float16)
    prompt = builder.build({"prompt_embeds": t})
    assert prompt.token_ids == [0] * 4 and prompt.is_pure_embeds
    assert prompt.prompt_embeds is not None and prompt.prompt_embeds.dtype == torch.float32
    assert torch.equal(prompt.prompt_embeds, t[0].float())
    assert prompt.text is None


def test_mixed_vllm_and_compact_forms_agree(builder: PromptBuilder) -> None:
    mask = [True, False, False, True, False]
    rows = torch.randn(3, H)
    full = torch.zeros(5, H)
    full[[1, 2, 4]] = rows
    ids = [11, 99, 99, 12, 99]
    vllm = builder.build(
        {"prompt_token_ids": ids, "prompt_embeds": full, "prompt_is_token_ids": mask}
    )
    compact = builder.build({"prompt_token_ids": ids, "prompt_embeds": rows, "is_token_ids": mask})
    for prompt in (vllm, compact):
        assert prompt.token_ids == [11, 0, 0, 12, 0]
        assert prompt.is_token_ids == mask
        assert prompt.prompt_embeds is not None and torch.equal(prompt.prompt_embeds, rows)
    all_tokens = build_mixed_prompt([1, 2], torch.zeros(2, H), [True, True], hidden_size=H,
                                    dtype=torch.float32)  # fmt: skip
    assert all_tokens.prompt_embeds is None and all_tokens.token_ids == [1, 2]


@pytest.mark.parametrize(
    ("prompt", "code"),
    [
        ({"prompt_embeds": torch.randn(4, H + 1)}, "hidden_size_mismatch"),
        ({"prompt_embeds": torch.randn(4 * H)}, "invalid_shape"),
        ({"prompt_embeds": torch.randn(2, 4, H)}, "invalid_shape"),
        ({"prompt_embeds": torch.randn(0, H)}, "empty_prompt"),
        ({"prompt_embeds": torch.randn(40, H)}, "context_length_exceeded"),
        ({"prompt_embeds": torch.ones(4, H, dtype=torch.int64)}, "unsupported_dtype"),
        ({"prompt_embeds": torch.full((4, H), float("nan"))}, "non_finite_values"),
        ({"prompt_embeds": torch.full((4, H), float("inf"))}, "non_finite_values"),
        ({"prompt_embeds": [[0.0] * H]}, "unsupported_tensor_kind"),
        ({"prompt_token_ids": [1, 10**9]}, "invalid_token_id"),
        ({"prompt_token_ids": [-1]}, "invalid_token_id"),
        ({"prompt_token_ids": []}, "empty_prompt"),
        ({"prompt_token_ids": list(range(32))}, "context_length_exceeded"),
        ({"prompt_token_ids": [1, 2], "prompt_embeds": torch.randn(1, H)}, "invalid_prompt"),
        (
            {"prompt_token_ids": [1, 2], "prompt_embeds": torch.randn(1, H), "is_token_ids": [True]},
            "size_mismatch",
        ),
        (
            {"prompt_token_ids": [1, 2], "prompt_embeds": torch.randn(3, H),
             "is_token_ids": [True, False]},
            "size_mismatch",
        ),
        ({"text": "x"}, "invalid_prompt"),
        (42, "invalid_prompt"),
    ],
)  # fmt: skip
def test_hostile_inputs_are_value_errors(builder: PromptBuilder, prompt: Any, code: str) -> None:
    with pytest.raises(PEValidationError) as info:
        builder.build(prompt)
    assert isinstance(info.value, ValueError)
    assert info.value.code == code


def test_length_error_uses_vllm_wording(builder: PromptBuilder) -> None:
    with pytest.raises(PEValidationError, match="maximum context length is 32 tokens") as info:
        builder.build({"prompt_token_ids": list(range(40))})
    assert "your prompt contains 40 input tokens" in info.value.message


def test_embeds_disabled_message(builder: PromptBuilder) -> None:
    from dataclasses import replace

    off = replace(builder, enable_prompt_embeds=False)
    with pytest.raises(PEValidationError) as info:
        off.build({"prompt_embeds": torch.randn(2, H)})
    assert info.value.message == "You must set `--enable-prompt-embeds` to input `prompt_embeds`."
    assert info.value.param == "prompt_embeds"
