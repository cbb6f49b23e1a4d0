"""The runner's input types: EngineConfig, SamplingParams, Prompt, Sequence."""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest
import torch

from pe_engine.config import EngineConfig
from pe_engine.core.sequence import Sequence, SequenceStatus, branch_seed
from pe_engine.prompt import Prompt
from pe_engine.sampling_params import SamplingParams


def mixed_prompt() -> Prompt:
    # positions:      0  1  2  3  4  5  6  7
    mask = [True, False, False, True, True, False, True, False]
    ids = [9 if m else 0 for m in mask]
    rows = torch.arange(4 * 3, dtype=torch.float32).view(4, 3)
    return Prompt(token_ids=ids, prompt_embeds=rows, is_token_ids=mask)


def test_engine_config_is_frozen_and_validated() -> None:
    config = EngineConfig(model="/m")
    with pytest.raises(pydantic.ValidationError):
        config.block_size = 8  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="block_size"):
        EngineConfig(model="/m", block_size=0)
    with pytest.raises(pydantic.ValidationError, match="dtype"):
        EngineConfig(model="/m", dtype="int8")  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError):
        EngineConfig(model="/m", not_a_field=1)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("config_json", "expected"),
    [({"dtype": "bfloat16"}, "bfloat16"), ({"torch_dtype": "float16"}, "float16"), ({}, "float32")],
)
def test_dtype_auto_reads_config_json(tmp_path: Path, config_json: dict, expected: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config_json))
    config = EngineConfig(model=str(tmp_path))
    assert config.dtype_name == expected
    assert config.torch_dtype == getattr(torch, expected)
    assert EngineConfig(model=str(tmp_path), dtype="float32").dtype_name == "float32"
    assert EngineConfig(model=str(tmp_path), device="auto").device_name in ("cpu", "cuda")


def test_sampling_params_defaults_follow_vllm() -> None:
    params = SamplingParams()
    assert (params.n, params.temperature, params.top_p, params.top_k) == (1, 1.0, 1.0, 0)
    assert params.max_tokens == 16 and params.stop == [] and not params.is_greedy
    assert SamplingParams(temperature=0.0).is_greedy
    assert SamplingParams(top_k=-1).top_k == 0
    assert SamplingParams(stop="x").stop == ["x"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n": 0}, "n"),
        ({"n": 3, "best_of": 2}, "best_of"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3.0}, "frequency_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
        ({"logprobs": -1}, "logprobs"),
        ({"prompt_logprobs": -1}, "prompt_logprobs"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"stop": [""]}, "stop"),
        ({"seed": 1.5}, "seed"),
        ({"temperature": float("nan")}, "temperature"),
    ],
)
def test_sampling_params_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_prompt_validate_checks_the_invariants() -> None:
    mixed_prompt().validate()
    Prompt([1, 2, 3]).validate()
    with pytest.raises(ValueError, match="is_token_ids"):
        Prompt([1, 2], torch.zeros(1, 3), [False]).validate()
    with pytest.raises(ValueError, match="rows"):
        Prompt([0, 0], torch.zeros(1, 3), [False, False]).validate()
    with pytest.raises(ValueError, match="2-D"):
        Prompt([0], torch.zeros(1, 1, 3), [False]).validate()
    with pytest.raises(ValueError, match="prompt_embeds"):
        Prompt([0], None, [False]).validate()
    with pytest.raises(ValueError, match="at least one"):
        Prompt([]).validate()
    assert Prompt([0, 0], torch.zeros(2, 3), [False, False]).is_pure_embeds
    assert not mixed_prompt().is_pure_embeds


def test_sequence_embeds_in_range_slices_rows_per_chunk() -> None:
    seq = Sequence.from_prompt("r", mixed_prompt(), SamplingParams())
    assert seq.embeds_in_range(0, 3)[0] == [1, 2]
    assert seq.embeds_in_range(0, 3)[1].tolist() == [[0, 1, 2], [3, 4, 5]]
    offsets, rows = seq.embeds_in_range(3, 8)
    assert offsets == [2, 4] and rows.tolist() == [[6, 7, 8], [9, 10, 11]]
    assert seq.embeds_in_range(3, 5) == ([], None)
    seq.append_token(17)
    assert seq.embeds_in_range(7, 9)[0] == [0]
    assert seq.embeds_in_range(8, 9) == ([], None)  # generated positions are tokens


def test_sequence_bookkeeping_and_penalty_ids() -> None:
    seq = Sequence.from_prompt("r", mixed_prompt(), SamplingParams())
    assert seq.num_tokens == seq.num_prompt_tokens == 8
    assert seq.penalty_token_ids == [9, 9, 9, 9]  # placeholders excluded
    seq.append_token(4)
    seq.append_token(0)  # a generated id 0 is a real token
    assert seq.output_token_ids == [4, 0] and seq.token_ids[-1] == 0
    assert seq.penalty_token_ids == [9, 9, 9, 9, 4, 0]
    assert seq.num_output_tokens == 2 and not seq.is_finished
    seq.status = SequenceStatus.FINISHED_LENGTH
    assert seq.is_finished
    text = Sequence.from_prompt("t", Prompt([3, 4]), SamplingParams())
    assert text.penalty_token_ids == [3, 4] and text.embeds_in_range(0, 2) == ([], None)
    assert text.seq_id != seq.seq_id


def test_seeded_branches_get_distinct_reproducible_generators() -> None:
    CPU = torch.device("cpu")
    params = SamplingParams(seed=7, n=2)
    draws = [
        Sequence.from_prompt("r", Prompt([1]), params, branch=b).generator(CPU).initial_seed()
        for b in (0, 1, 0)
    ]
    assert draws[0] == draws[2] == 7 and draws[1] != 7
    assert branch_seed(7, 1) == branch_seed(7, 1)
    assert Sequence.from_prompt("r", Prompt([1]), SamplingParams()).generator(CPU) is None
