"""Stored embeds in the offline LLM and the AsyncEngine: a handle is taken wherever a tensor is,
gives the same greedy output, hits the prefix cache, is pinned while a request runs, and a
missing one is an error naming its id."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from pe_common.errors import InvalidRequestError, PEValidationError, PromptEmbedsError
from pe_engine import LLM, AsyncEngine, EngineConfig, SamplingParams
from pe_engine.inputs.embeds_store import EmbedsStore

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SETTINGS: dict[str, Any] = {
    "dtype": "float32", "device": "cpu", "enable_prompt_embeds": True, "max_model_len": 256,
    "num_kv_blocks": 64, "block_size": 8,
}  # fmt: skip


@pytest.fixture(scope="module")
def llm(tiny_llama_dir: Path) -> LLM:
    return LLM(str(tiny_llama_dir), **SETTINGS)


def rows(llm: LLM, num_rows: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(num_rows, llm.engine.hidden_size, generator=gen) * 0.02


def greedy(n: int = 8) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


def ids_of(outputs: list[Any]) -> list[list[int]]:
    return [out.outputs[0].token_ids for out in outputs]


def test_a_handle_gives_the_inline_output_and_hits_the_prefix_cache(llm: LLM) -> None:
    tensor = rows(llm, 20, seed=1)
    obj = llm.create_embeds(tensor)
    by_handle = ids_of(llm.generate({"prompt_embeds": obj}, greedy(), use_tqdm=False))
    block_manager = llm.engine.block_manager
    hits = block_manager.prefix_cache_hits
    by_id = ids_of(llm.generate({"prompt_embeds": {"id": obj.id}}, greedy(), use_tqdm=False))
    assert block_manager.prefix_cache_hits > hits  # the second use reads the first's KV blocks
    inline = ids_of(llm.generate({"prompt_embeds": tensor}, greedy(), use_tqdm=False))
    assert by_handle == by_id == inline
    assert obj.pins == 0  # released when generate returned
    built = llm.engine.prompt_builder.build({"prompt_embeds": obj})
    assert built.prompt_embeds is obj.tensor  # the stored rows, not read or copied again


def test_create_embeds_checks_and_casts_like_an_inline_tensor(llm: LLM) -> None:
    source = rows(llm, 6, seed=2).double().unsqueeze(0)  # (1, N, H) float64
    obj = llm.create_embeds(source)
    assert obj.tensor.shape == (6, llm.engine.hidden_size)
    assert obj.tensor.dtype == llm.engine.dtype
    source.zero_()  # the stored object is a copy: the caller's tensor may change
    assert obj.tensor.abs().sum() > 0
    bad = rows(llm, 4, seed=3)
    bad[1, 2] = float("nan")
    with pytest.raises(PEValidationError):
        llm.create_embeds(bad)
    with pytest.raises(PromptEmbedsError):
        llm.create_embeds(torch.zeros(4, llm.engine.hidden_size + 1))
    disabled = dataclasses.replace(llm.engine.prompt_builder, enable_prompt_embeds=False)
    with pytest.raises(PromptEmbedsError, match="enable-prompt-embeds"):
        disabled.validate_embeds(rows(llm, 2, seed=4))


def test_a_handle_in_a_mixed_prompt_equals_the_inline_tensor(llm: LLM) -> None:
    tensor = rows(llm, 5, seed=5)
    obj = llm.create_embeds(tensor)
    ids = [101, 102, 0, 0, 0, 0, 0, 103]
    mask = [True, True, False, False, False, False, False, True]
    prompts = [
        {"prompt_token_ids": ids, "prompt_embeds": embeds, "is_token_ids": mask}
        for embeds in (tensor, obj)
    ]
    inline, by_handle = ids_of(llm.generate(prompts, greedy(), use_tqdm=False))
    assert inline == by_handle


def test_chat_parts_take_a_handle_or_an_id(llm: LLM) -> None:
    tensor = rows(llm, 7, seed=6)
    obj = llm.create_embeds(tensor)

    def chat(part: dict[str, Any]) -> list[dict[str, Any]]:
        content = [{"type": "text", "text": "Read"}, {"type": "prompt_embeds", **part}]
        return [{"role": "user", "content": content}]

    conversations = [chat({"data": tensor}), chat({"data": obj}), chat({"id": obj.id})]
    inline, by_handle, by_id = ids_of(llm.chat(conversations, greedy(), use_tqdm=False))
    assert inline == by_handle == by_id
    assert obj.pins == 0


def test_a_deleted_or_foreign_handle_is_an_error_naming_its_id(llm: LLM) -> None:
    obj = llm.create_embeds(rows(llm, 3, seed=7))
    llm.embeds_store.delete(obj.id)
    with pytest.raises(InvalidRequestError, match=obj.id) as caught:
        llm.generate({"prompt_embeds": obj}, greedy(), use_tqdm=False)
    assert (caught.value.code, caught.value.param) == ("embeds_not_found", "prompt_embeds")
    with pytest.raises(InvalidRequestError, match="emb_nothing"):
        llm.generate({"prompt_embeds": {"id": "emb_nothing"}}, greedy(), use_tqdm=False)
    foreign = EmbedsStore().put(rows(llm, 3, seed=8))  # another store's object
    with pytest.raises(InvalidRequestError, match=foreign.id):
        llm.generate({"prompt_embeds": foreign}, greedy(), use_tqdm=False)
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "Read"}, {"type": "prompt_embeds", "data": obj},
    ]}]  # fmt: skip
    with pytest.raises(InvalidRequestError) as caught:
        llm.chat(messages, greedy(), use_tqdm=False)
    assert caught.value.param == "messages[0].content[1].data"


def test_a_failed_generate_releases_the_pins_it_took(llm: LLM) -> None:
    obj = llm.create_embeds(rows(llm, 3, seed=9))
    prompts = [{"prompt_embeds": obj}, {"prompt_embeds": {"id": "emb_missing"}}]
    with pytest.raises(InvalidRequestError):
        llm.generate(prompts, greedy(), use_tqdm=False)
    assert obj.pins == 0


def test_async_engine_takes_handles_and_pins_them_while_the_request_runs(
    tiny_llama_dir: Path, llm: LLM
) -> None:
    tensor = rows(llm, 12, seed=10)
    expected = ids_of(llm.generate({"prompt_embeds": tensor}, greedy(16), use_tqdm=False))[0]
    engine = AsyncEngine(EngineConfig(model=str(tiny_llama_dir), **SETTINGS))
    engine.start()

    async def run() -> tuple[list[int], list[int]]:
        obj = engine.create_embeds(tensor)
        token_ids: list[int] = []
        pins_seen = []
        async for out in engine.generate({"prompt_embeds": obj}, greedy(16), "r1"):
            pins_seen.append(obj.pins)
            token_ids += out.outputs[0].token_ids
        assert obj.pins == 0
        with pytest.raises(InvalidRequestError, match="emb_gone"):
            async for _ in engine.generate({"prompt_embeds": {"id": "emb_gone"}}, greedy(), "r2"):
                pass
        return token_ids, pins_seen

    try:
        token_ids, pins_seen = asyncio.run(run())
    finally:
        engine.shutdown()
    assert token_ids == expected
    assert set(pins_seen) == {1}


def test_a_stored_objects_rows_are_hashed_once_and_hit_blocks_cached_inline(
    llm: LLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prefix cache keys each embeds row by a digest; a stored object's are made at upload,
    so later prompts built from it hash nothing, and they equal the inline rows' keys, so
    blocks cached by an inline request are hit by the same rows sent by id (and back)."""
    import pe_engine.core.sequence as sequence_module
    from pe_engine.core.row_keys import row_keys

    part = rows(llm, 40, seed=11)
    inline = llm.generate({"prompt_embeds": part}, greedy(), use_tqdm=False)[0]
    stored = llm.create_embeds(part)
    calls: list[int] = []

    def counted(rows_: torch.Tensor) -> bytes:
        calls.append(int(rows_.shape[0]))
        return row_keys(rows_)

    monkeypatch.setattr(sequence_module, "row_keys", counted)
    hits = llm.engine.block_manager.prefix_cache_hits
    by_handle = llm.generate({"prompt_embeds": stored}, greedy(), use_tqdm=False)[0]
    assert calls == []  # no row hashed again
    assert llm.engine.block_manager.prefix_cache_hits - hits >= 32  # the inline run's blocks
    assert by_handle.outputs[0].token_ids == inline.outputs[0].token_ids
    chat = [{"role": "user", "content": [{"type": "text", "text": "Read"},
                                          {"type": "prompt_embeds", "data": stored}]}]  # fmt: skip
    llm.chat(chat, greedy(), use_tqdm=False)
    assert calls == []  # the chat prompt carries the stored rows' keys too
