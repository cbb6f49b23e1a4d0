"""ChatRenderPool: chat templates rendered in worker processes within a time and memory budget."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from chat_messages import mixed_chat
from pe_common.errors import InvalidRequestError, PEValidationError
from pe_engine.inputs.chat import ChatPromptBuilder
from pe_engine.inputs.chat_render import ChatRenderBusyError, ChatRenderPool, RenderLimits

DOS_TEMPLATE = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x"
OPTIONS = {
    "chat_template": None,
    "add_generation_prompt": True,
    "continue_final_message": False,
    "tools": None,
}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


@pytest.fixture(scope="module")
def pool(tokenizer: Any) -> Iterator[ChatRenderPool]:
    limits = RenderLimits(timeout_s=1.0, max_output_chars=50_000, max_memory_bytes=512 * 2**20)
    pool = ChatRenderPool(tokenizer, num_workers=2, limits=limits)
    yield pool
    pool.close()


def render(pool: ChatRenderPool, template: str | None = None, **kwargs: Any) -> str:
    return pool.render(HI, {**OPTIONS, "chat_template": template}, kwargs or None, embeds=False)


def test_pool_renders_what_the_tokenizer_renders(pool: ChatRenderPool, tokenizer: Any) -> None:
    assert render(pool) == tokenizer.apply_chat_template(
        HI, tokenize=False, add_generation_prompt=True
    )


def test_builder_gives_the_same_prompt_with_and_without_the_pool(
    pool: ChatRenderPool, tokenizer: Any
) -> None:
    builder = ChatPromptBuilder(tokenizer, enable_prompt_embeds=True)
    rows = torch.randn(3, 8)
    messages = mixed_chat(rows)
    local = builder.build(messages)
    pooled = builder.build(messages, renderer=pool)
    assert pooled.token_ids == local.token_ids
    assert pooled.is_token_ids == local.is_token_ids
    assert pooled.prompt_embeds is not None and torch.equal(pooled.prompt_embeds, rows)
    assert builder.build(HI, renderer=pool).token_ids == builder.build(HI).token_ids


def test_kwargs_only_reach_the_template_by_the_names_it_reads(pool: ChatRenderPool) -> None:
    template = "{% for m in messages %}{{ m.content }}{% endfor %}|{{ flag }}"
    assert render(pool, template, flag="F", unused="U") == "hi|F"


def test_kwargs_may_not_set_the_renderers_arguments(tokenizer: Any) -> None:
    builder = ChatPromptBuilder(tokenizer)
    for name in ("tokenize", "add_generation_prompt", "messages", "chat_template"):
        with pytest.raises(InvalidRequestError) as info:
            builder.build(HI, chat_template_kwargs={name: True})
        assert info.value.param == f"chat_template_kwargs.{name}"


def test_a_render_past_its_deadline_is_killed_and_the_pool_recovers(
    pool: ChatRenderPool,
) -> None:
    start = time.monotonic()
    with pytest.raises(PEValidationError) as info:
        render(pool, DOS_TEMPLATE)
    assert info.value.code == "chat_template_timeout"
    assert time.monotonic() - start < pool.limits.timeout_s + 1.5
    for _ in range(4):  # both workers, one of them new
        assert render(pool, "ok") == "ok"


@pytest.mark.parametrize(
    "template", ["{{ 'a' * 10**10 }}", "{{ 'a' * 60000 }}"], ids=["memory", "output"]
)
def test_oversized_renders_are_refused(pool: ChatRenderPool, template: str) -> None:
    with pytest.raises(PEValidationError) as info:
        render(pool, template)
    assert info.value.code == "chat_template_too_large"
    assert render(pool, "ok") == "ok"


def test_template_errors_are_validation_errors(pool: ChatRenderPool) -> None:
    for template in ("{{ raise_exception('no') }}", "{% for %}", "{{ ''.__class__.__mro__[1] }}"):
        with pytest.raises(PEValidationError) as info:
            render(pool, template)
        assert info.value.code == "invalid_chat_template"


def test_no_free_worker_within_the_budget_is_busy(tokenizer: Any) -> None:
    pool = ChatRenderPool(tokenizer, num_workers=1, limits=RenderLimits(timeout_s=0.3))
    try:
        assert render(pool, "ok") == "ok"
        held = pool._idle.get(timeout=5)  # another caller holds the only worker
        with pytest.raises(ChatRenderBusyError):
            render(pool, "ok")
        pool._idle.put(held)
        assert render(pool, "ok") == "ok"
    finally:
        pool.close()
    with pytest.raises(ChatRenderBusyError):
        render(pool, "ok")
