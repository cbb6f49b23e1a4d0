"""Every stop condition through the engine (EOS: test_eos.py), plus hostile inputs that must
leave it usable."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from pe_common.errors import PEValidationError
from pe_engine import LLM, SamplingParams
from pe_engine.outputs import OutputAccumulator, RequestOutputKind

pytestmark = pytest.mark.usefixtures("torch_single_thread")

PROMPT = "Stop conditions are tested on this prompt"


@pytest.fixture(scope="module")
def llm(build_llm: Callable[..., LLM]) -> LLM:
    return build_llm(max_model_len=64, num_kv_blocks=32)


@pytest.fixture(scope="module")
def free_run(llm: LLM) -> Any:
    """The greedy continuation without any stop (the reference for every case)."""
    params = SamplingParams(
        temperature=0.0, max_tokens=24, ignore_eos=True, skip_special_tokens=False
    )
    return llm.generate(PROMPT, params, use_tqdm=False)[0].outputs[0]


def run(llm: LLM, **kw: Any) -> Any:
    params = SamplingParams(temperature=0.0, **{"max_tokens": 24, **kw})
    return llm.generate(PROMPT, params, use_tqdm=False)[0].outputs[0]


def test_max_tokens_and_max_model_len(llm: LLM, free_run: Any) -> None:
    out = run(llm, max_tokens=5, ignore_eos=True)
    assert out.token_ids == free_run.token_ids[:5] and out.finish_reason == "length"
    assert out.stop_reason is None
    capped = run(llm, max_tokens=None, ignore_eos=True)
    prompt_len = len(llm.get_tokenizer().encode(PROMPT))
    assert len(capped.token_ids) == 64 - prompt_len and capped.finish_reason == "length"


def test_stop_token_ids_and_min_tokens(llm: LLM, free_run: Any) -> None:
    target = free_run.token_ids[3]
    first = free_run.token_ids.index(target)
    out = run(llm, stop_token_ids=[target], ignore_eos=True)
    assert out.token_ids == free_run.token_ids[: first + 1]
    assert out.finish_reason == "stop" and out.stop_reason == target
    later = run(llm, stop_token_ids=[target], min_tokens=first + 2, max_tokens=first + 2,
                ignore_eos=True)  # fmt: skip
    assert later.finish_reason == "length"


@pytest.mark.parametrize("include", [False, True])
def test_stop_strings(llm: LLM, free_run: Any, include: bool) -> None:
    tok = llm.get_tokenizer()
    text = tok.decode(free_run.token_ids[:12], skip_special_tokens=True)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    if not stop.strip():
        pytest.skip("greedy text of the random model has no usable stop string here")
    out = run(llm, stop=[stop], include_stop_str_in_output=include, ignore_eos=True)
    assert out.finish_reason == "stop" and out.stop_reason == stop
    cut = text.index(stop)
    assert out.text == (text[: cut + len(stop)] if include else text[:cut])


def stream(llm: LLM, request_id: str, params: SamplingParams) -> list[Any]:
    engine = llm.engine
    engine.add_request(request_id, engine.prompt_builder.build(PROMPT), params)
    seen = []
    while engine.has_unfinished_requests():
        seen += [o for o in engine.step() if o.request_id == request_id]
    return seen


def fold(deltas: list[Any]) -> Any:
    accumulator = OutputAccumulator()
    for delta in deltas:
        accumulator.add(delta)
    return accumulator.result()


def test_steps_emit_deltas_and_final_is_marked(llm: LLM) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=2)
    seen = stream(llm, "stream", params)
    assert all(o.kind is RequestOutputKind.DELTA for o in seen)
    assert [len(o.outputs[0].token_ids) for o in seen] == [1] * 8
    assert [len(o.outputs[0].logprobs) for o in seen] == [1] * 8
    assert [o.finished for o in seen] == [False] * 7 + [True]
    assert [o.outputs[0].finish_reason for o in seen] == [None] * 7 + ["length"]
    (whole,) = llm.generate(PROMPT, params, use_tqdm=False)
    assert whole.kind is RequestOutputKind.CUMULATIVE
    total = fold(seen).outputs[0]
    assert "".join(o.outputs[0].text for o in seen) == total.text == whole.outputs[0].text
    assert total.token_ids == whole.outputs[0].token_ids
    assert total.logprobs == whole.outputs[0].logprobs
    assert seen[-1].outputs[0].cumulative_logprob == whole.outputs[0].cumulative_logprob
    metrics = seen[-1].metrics
    assert metrics.arrival_time <= metrics.first_token_time <= metrics.finished_time


@pytest.mark.parametrize("include", [False, True])
def test_deltas_release_held_back_text_and_never_show_a_stop_string(
    llm: LLM, free_run: Any, include: bool
) -> None:
    tok = llm.get_tokenizer()
    text = tok.decode(free_run.token_ids[:16], skip_special_tokens=True)
    stop = text[len(text) // 2 : len(text) // 2 + 4]
    if not stop.strip():
        pytest.skip("greedy text of the random model has no usable stop string here")
    params = SamplingParams(
        temperature=0.0, max_tokens=24, ignore_eos=True, stop=[stop],
        include_stop_str_in_output=include,
    )  # fmt: skip
    seen = stream(llm, f"stop-{include}", params)
    shown = "".join(o.outputs[0].text for o in seen)
    assert shown == run(llm, stop=[stop], include_stop_str_in_output=include, ignore_eos=True).text
    assert (stop in shown) is include and seen[-1].outputs[0].stop_reason == stop
    if not include:  # while running, the stop string's first characters were held back
        assert all(stop not in o.outputs[0].text for o in seen)
    unstopped = stream(llm, "unstopped", SamplingParams(
        temperature=0.0, max_tokens=12, ignore_eos=True, stop=["never in this text"]
    ))  # fmt: skip
    held = "".join(o.outputs[0].text for o in unstopped)
    assert held == tok.decode(free_run.token_ids[:12], skip_special_tokens=True)


def test_best_of_is_held_until_the_end_and_then_sent_once(llm: LLM) -> None:
    params = SamplingParams(n=2, best_of=4, temperature=1.0, seed=11, max_tokens=6,
                            ignore_eos=True, logprobs=1)  # fmt: skip
    seen = stream(llm, "best-of", params)
    assert len(seen) == 1 and seen[0].finished
    (whole,) = llm.generate(PROMPT, params, use_tqdm=False)
    assert [o.index for o in seen[0].outputs] == [0, 1]
    for sent, out in zip(seen[0].outputs, whole.outputs, strict=True):
        assert (sent.text, sent.token_ids, sent.logprobs) == (out.text, out.token_ids, out.logprobs)
        assert len(sent.token_ids) == 6 and sent.finish_reason == "length"
    assert whole.outputs[0].cumulative_logprob >= whole.outputs[1].cumulative_logprob


def test_abort_frees_every_block(llm: LLM) -> None:
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, n=2)
    for i in range(4):
        engine.add_request(f"abort-{i}", engine.prompt_builder.build(PROMPT * (i + 1)), params)
    engine.step()
    engine.step()
    final = engine.abort_request("abort-0")
    assert final is not None and final.finished
    assert {o.finish_reason for o in final.outputs} == {"abort"}
    for i in range(1, 4):
        engine.abort_request(f"abort-{i}")
    assert engine.abort_request("unknown") is None
    assert not engine.has_unfinished_requests()
    assert engine.num_free_blocks == engine.num_total_blocks


HOSTILE: list[tuple[str, Any]] = [
    ("wrong width", {"prompt_embeds": torch.randn(4, 7)}),
    ("1-D", {"prompt_embeds": torch.randn(64)}),
    ("3-D batch > 1", {"prompt_embeds": torch.randn(2, 4, 64)}),
    ("zero rows", {"prompt_embeds": torch.randn(0, 64)}),
    ("too long", {"prompt_embeds": torch.randn(64, 64)}),
    ("non-float", {"prompt_embeds": torch.ones(4, 64, dtype=torch.int32)}),
    ("NaN", {"prompt_embeds": torch.full((4, 64), float("nan"))}),
    ("bad token id", {"prompt_token_ids": [1, 1 << 30]}),
    ("too many ids", {"prompt_token_ids": [1] * 64}),
]


@pytest.mark.parametrize(("name", "prompt"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_inputs_are_value_errors_and_engine_survives(
    llm: LLM, free_run: Any, name: str, prompt: Any
) -> None:
    hidden = llm.engine.hidden_size
    if "prompt_embeds" in prompt and prompt["prompt_embeds"].shape[-1] == 64 and hidden != 64:
        pytest.skip("fixture model width differs")
    with pytest.raises(PEValidationError):
        llm.generate(prompt, use_tqdm=False)
    assert (
        run(llm, max_tokens=4, ignore_eos=True, skip_special_tokens=False).token_ids
        == (free_run.token_ids[:4])
    )
    assert llm.engine.num_free_blocks == llm.engine.num_total_blocks


def test_embeds_rejected_when_disabled(tiny_llama_dir: Path) -> None:
    off = LLM(str(tiny_llama_dir), dtype="float32", device="cpu", num_kv_blocks=8)
    with pytest.raises(PEValidationError, match="enable-prompt-embeds"):
        off.generate({"prompt_embeds": torch.randn(2, off.engine.hidden_size)}, use_tqdm=False)
    with pytest.raises(PEValidationError, match="enable-prompt-embeds"):
        off.chat([{"role": "user", "content": [{"type": "prompt_embeds", "data": "AAAA"}]}])
