"""ChatPromptBuilder: vLLM's sentinel algorithm on ChatML (SmolLM2) and Llama-3 style templates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pe_common.errors import PEValidationError
from pe_engine.inputs.chat import ChatPromptBuilder, detect_content_format

H = 8
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
PARTS_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}:"
    "{% for part in message['content'] %}[{{ part['text'] }}]{% endfor %}\n{% endfor %}"
)


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


@pytest.fixture(scope="module")
def builder(tokenizer: Any) -> ChatPromptBuilder:
    return ChatPromptBuilder(tokenizer)


def rows(n: int, value: float) -> torch.Tensor:
    return torch.full((n, H), value)


def embeds_part(t: torch.Tensor) -> dict[str, Any]:
    return {"type": "prompt_embeds", "data": t}


def spans(mask: list[bool]) -> list[tuple[int, int]]:
    """(start, length) of each run of embed positions."""
    out: list[tuple[int, int]] = []
    for i, is_token in enumerate(mask):
        if not is_token:
            if out and out[-1][0] + out[-1][1] == i:
                out[-1] = (out[-1][0], out[-1][1] + 1)
            else:
                out.append((i, 1))
    return out


def test_chatml_joins_parts_with_newline_and_matches_the_text_chat(
    builder: ChatPromptBuilder, tokenizer: Any
) -> None:
    there = tokenizer.encode("there", add_special_tokens=False)
    content = [{"type": "text", "text": "Hi"}, embeds_part(rows(len(there), 1.0))]
    prompt = builder.build([{"role": "user", "content": content}])
    text = builder.build([{"role": "user", "content": "Hi\nthere"}])
    assert prompt.is_token_ids is not None and prompt.prompt_embeds is not None
    ((start, length),) = spans(prompt.is_token_ids)
    assert length == len(there)
    restored = prompt.token_ids[:start] + there + prompt.token_ids[start + length :]
    assert restored == text.token_ids
    assert prompt.token_ids[start : start + length] == [0] * length
    assert prompt.prompt_embeds.shape == (len(there), H)


def test_plain_chat_equals_transformers_tokenize(
    builder: ChatPromptBuilder, tokenizer: Any
) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = builder.build(messages)
    expected = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert prompt.token_ids == list(expected)
    assert prompt.prompt_embeds is None and prompt.is_token_ids is None


def test_several_parts_in_several_messages_keep_template_order(
    builder: ChatPromptBuilder,
) -> None:
    messages = [
        {"role": "system", "content": [embeds_part(rows(2, 1.0))]},
        {"role": "user", "content": [embeds_part(rows(3, 2.0)), {"type": "text", "text": "x"}]},
        {"role": "assistant", "content": [embeds_part(rows(1, 3.0))]},
        {"role": "user", "content": "go"},
    ]
    prompt = builder.build(messages)
    assert prompt.is_token_ids is not None and prompt.prompt_embeds is not None
    assert [length for _, length in spans(prompt.is_token_ids)] == [2, 3, 1]
    assert prompt.prompt_embeds[:, 0].tolist() == [1.0, 1.0, 2.0, 2.0, 2.0, 3.0]
    assert prompt.is_token_ids.count(False) == prompt.prompt_embeds.shape[0]


def test_template_order_reorders_tensors(builder: ChatPromptBuilder) -> None:
    reverse = "{% for m in messages | reverse %}{{ m['content'] }}|{% endfor %}"
    messages = [
        {"role": "user", "content": [embeds_part(rows(1, 1.0))]},
        {"role": "user", "content": [embeds_part(rows(2, 2.0))]},
    ]
    prompt = builder.build(messages, chat_template=reverse)
    assert prompt.prompt_embeds is not None
    assert prompt.prompt_embeds[:, 0].tolist() == [2.0, 2.0, 1.0]


def test_dropped_marker_drops_its_tensor(builder: ChatPromptBuilder) -> None:
    last_only = "{{ messages[-1]['content'] }}"
    messages = [
        {"role": "user", "content": [embeds_part(rows(4, 1.0))]},
        {"role": "user", "content": [{"type": "text", "text": "a"}, embeds_part(rows(2, 2.0))]},
    ]
    prompt = builder.build(messages, chat_template=last_only)
    assert prompt.prompt_embeds is not None
    assert prompt.prompt_embeds[:, 0].tolist() == [2.0, 2.0]
    dropped = builder.build(
        [*messages[:1], {"role": "user", "content": "b"}], chat_template=last_only
    )
    assert dropped.prompt_embeds is None and dropped.is_token_ids is None


def test_marker_rendered_twice_is_rejected(builder: ChatPromptBuilder) -> None:
    twice = "{% for m in messages %}{{ m['content'] }}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ValueError, match="at most once"):
        builder.build(
            [{"role": "user", "content": [embeds_part(rows(1, 1.0))]}], chat_template=twice
        )


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "hi <prompt_embeds> there"}],
        [{"role": "user", "content": [{"type": "text", "text": "<prompt_embeds>__pe_embed_0__"}]}],
    ],
)
def test_reserved_placeholder_text_is_rejected(
    builder: ChatPromptBuilder, messages: list[dict[str, Any]]
) -> None:
    with pytest.raises(PEValidationError) as info:
        builder.build(messages)
    assert info.value.code == "reserved_placeholder"
    assert info.value.param == "messages"
    assert "may not contain the reserved placeholder '<prompt_embeds>'" in info.value.message


def test_placeholder_text_is_plain_text_when_embeds_are_off(tokenizer: Any) -> None:
    off = ChatPromptBuilder(tokenizer, enable_prompt_embeds=False)
    prompt = off.build([{"role": "user", "content": "hi <prompt_embeds> there"}])
    assert prompt.prompt_embeds is None
    assert "<prompt_embeds>" in tokenizer.decode(prompt.token_ids)


def test_llama3_style_template(builder: ChatPromptBuilder, tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Say"}, embeds_part(rows(3, 1.0))]},
    ]
    prompt = builder.build(messages, chat_template=LLAMA3_TEMPLATE)
    assert detect_content_format(LLAMA3_TEMPLATE) == "string"
    assert prompt.is_token_ids is not None and prompt.text is not None
    assert [length for _, length in spans(prompt.is_token_ids)] == [3]
    assert prompt.text.endswith("Say\n<prompt_embeds><|eot_id|>"
                                "<|start_header_id|>assistant<|end_header_id|>\n\n")  # fmt: skip
    start = spans(prompt.is_token_ids)[0][0]
    assert prompt.token_ids[start + 3 :] == tokenizer.encode(
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", add_special_tokens=False
    )


def test_openai_content_format_keeps_parts_separate(builder: ChatPromptBuilder) -> None:
    assert detect_content_format(PARTS_TEMPLATE) == "openai"
    content = [
        {"type": "text", "text": "a"},
        embeds_part(rows(2, 1.0)),
        {"type": "text", "text": "b"},
    ]
    prompt = builder.build([{"role": "user", "content": content}], chat_template=PARTS_TEMPLATE)
    assert prompt.text == "user:[a][<prompt_embeds>][b]"


def test_generation_prompt_and_continue_final_message(builder: ChatPromptBuilder) -> None:
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [embeds_part(rows(2, 1.0))]},
    ]
    cont = builder.build(messages, continue_final_message=True)
    assert cont.text is not None and cont.text.endswith("<|im_start|>assistant\n<prompt_embeds>")
    no_gen = builder.build(messages[:1], add_generation_prompt=False)
    assert no_gen.text is not None and not no_gen.text.endswith("<|im_start|>assistant\n")
    kwargs = builder.build(
        messages[:1], chat_template="{{ greeting }}{{ messages[0]['content'] }}",
        chat_template_kwargs={"greeting": "Hey: "},
    )  # fmt: skip
    assert kwargs.text == "Hey: hi"


def test_embeds_disabled_and_bad_parts(tokenizer: Any) -> None:
    off = ChatPromptBuilder(tokenizer, enable_prompt_embeds=False)
    with pytest.raises(PEValidationError, match="--enable-prompt-embeds") as info:
        off.build([{"role": "user", "content": [embeds_part(rows(1, 1.0))]}])
    assert info.value.param == "prompt_embeds"
    on = ChatPromptBuilder(tokenizer)
    for part in ({"type": "image_url", "image_url": {"url": "x"}}, {"type": "prompt_embeds"}):
        with pytest.raises(PEValidationError):
            on.build([{"role": "user", "content": [part]}])
    with pytest.raises(PEValidationError):
        on.build([])


def test_sentinel_never_leaks_into_the_prompt(builder: ChatPromptBuilder, tokenizer: Any) -> None:
    prompt = builder.build([{"role": "user", "content": [embeds_part(rows(2, 1.0))]}])
    assert max(prompt.token_ids) < len(tokenizer)
    assert len(tokenizer) == len(builder.tokenizer)  # the caller's tokenizer is untouched
