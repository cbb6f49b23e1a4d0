"""One EOS set: generation_config.json's list, config.json's and the tokenizer's eos ids all stop
the output, are all banned until min_tokens, and are all ignored with ignore_eos (offline ``LLM``).

Each case puts the token greedy decoding emits at ``EOS_AT`` in one place only, beside ids the
model never emits, so a consumer that reads another set fails its case.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from eos_model import EOS_AT, IM_END, PROMPT, free_greedy_run, unused_id, write_multi_eos_model
from pe_engine import LLM, SamplingParams
from pe_engine.models.eos import eos_token_ids

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# case -> (generation_config list, config.json id, tokenizer id) from (eos, unused)
Places = Callable[[int, int], tuple[list[int], int, int]]
CASES: dict[str, Places] = {
    "generation_config[1]": lambda eos, unused: ([IM_END, eos, unused], IM_END, IM_END),
    "generation_config[2]": lambda eos, unused: ([IM_END, unused, eos], IM_END, IM_END),
    "config.json": lambda eos, unused: ([IM_END, unused], eos, IM_END),
    "tokenizer": lambda eos, unused: ([IM_END, unused], IM_END, eos),
}


def test_eos_token_ids_is_the_union_of_the_three_places(tmp_path: Path) -> None:
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
    hf_config, tokenizer = SimpleNamespace(eos_token_id=11), SimpleNamespace(eos_token_id=13)
    assert eos_token_ids(tmp_path, hf_config, tokenizer) == {7, 9, 11, 13}
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 9}))
    assert eos_token_ids(tmp_path, SimpleNamespace(eos_token_id=[11, 12])) == {9, 11, 12}
    (tmp_path / "generation_config.json").unlink()
    assert eos_token_ids(tmp_path, SimpleNamespace(), tokenizer) == {13}


@pytest.fixture(scope="module")
def free_run(tiny_llama_dir: Path) -> list[int]:
    ids = free_greedy_run(tiny_llama_dir)
    assert ids[EOS_AT] not in ids[:EOS_AT]  # its first appearance is at EOS_AT
    return ids


@pytest.fixture(scope="module", params=list(CASES))
def llm(
    request: pytest.FixtureRequest,
    tiny_llama_dir: Path,
    free_run: list[int],
    tmp_path_factory: pytest.TempPathFactory,
) -> LLM:
    generation, config, tokenizer = CASES[request.param](free_run[EOS_AT], unused_id(free_run))
    model_dir = write_multi_eos_model(
        tiny_llama_dir,
        tmp_path_factory.mktemp("multi_eos") / "model",
        generation=generation,
        config=config,
        tokenizer=tokenizer,
    )
    return LLM(str(model_dir), dtype="float32", device="cpu", max_model_len=64, num_kv_blocks=16)


def run(llm: LLM, **kw: Any) -> Any:
    params = SamplingParams(temperature=0.0, **{"max_tokens": 24, **kw})
    return llm.generate(PROMPT, params, use_tqdm=False)[0].outputs[0]


def test_stopping_and_min_tokens_use_one_set(llm: LLM, free_run: list[int]) -> None:
    stops = llm.engine.scheduler.eos_token_ids
    assert stops == llm.engine.runner.sampler.eos_token_ids
    assert stops == {IM_END, free_run[EOS_AT], unused_id(free_run)}


def test_output_stops_at_the_listed_eos(llm: LLM, free_run: list[int]) -> None:
    out = run(llm)
    assert out.token_ids == free_run[: EOS_AT + 1]
    assert out.finish_reason == "stop" and out.stop_reason is None


def test_min_tokens_bans_every_eos_id_until_reached(llm: LLM, free_run: list[int]) -> None:
    eos_ids = llm.engine.scheduler.eos_token_ids
    min_tokens = EOS_AT + 2
    out = run(llm, min_tokens=min_tokens)
    assert out.token_ids[:EOS_AT] == free_run[:EOS_AT]
    assert len(out.token_ids) >= min_tokens
    assert not eos_ids & set(out.token_ids[:min_tokens])
    # after min_tokens, an EOS (if one comes) is the last token
    assert not eos_ids & set(out.token_ids[:-1])


def test_ignore_eos_runs_to_max_tokens(llm: LLM, free_run: list[int]) -> None:
    out = run(llm, ignore_eos=True, max_tokens=EOS_AT + 3)
    assert out.token_ids == free_run[: EOS_AT + 3] and out.finish_reason == "length"
    # ignore_eos also lifts the min_tokens ban (vLLM): the EOS is emitted, not stopped on
    out = run(llm, ignore_eos=True, min_tokens=EOS_AT + 3, max_tokens=EOS_AT + 3)
    assert out.token_ids == free_run[: EOS_AT + 3]
