"""ModelRunner: loading, KV pool sizing, batch preparation, splice and sampling positions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from pe_engine.config import EngineConfig
from pe_engine.core.sequence import Sequence
from pe_engine.models.loader import SUPPORTED_ARCHITECTURES
from pe_engine.models.runner import ModelRunner
from pe_engine.prompt import Prompt
from pe_engine.sampling_params import SamplingParams

pytestmark = pytest.mark.usefixtures("torch_single_thread")

PLACEHOLDER = 0


@pytest.fixture(scope="module")
def runner(tiny_llama_dir: Path) -> ModelRunner:
    return ModelRunner(EngineConfig(model=str(tiny_llama_dir), num_kv_blocks=64, block_size=4))


@pytest.fixture
def driver(runner: ModelRunner, runner_driver: type) -> Any:
    return runner_driver(runner)


def copy_model(src: Path, dst: Path, **config_changes: Any) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(config_changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_runner_exposes_model_facts(runner: ModelRunner) -> None:
    assert runner.hidden_size == 64
    assert runner.vocab_size % 64 == 0
    assert runner.dtype == torch.float32
    assert runner.block_size == 4 and runner.num_kv_blocks == 64
    assert runner.max_model_len == 2048
    assert tuple(runner.kv_cache.shape) == (2, 2, 2, 64, 4, 16)  # layers, K/V, heads, ...
    rows = runner.embed_tokens([5, 9])
    assert rows.shape == (2, 64) and rows.device.type == "cpu"


def test_kv_pool_is_sized_from_the_memory_budget(tiny_llama_dir: Path) -> None:
    config = EngineConfig(model=str(tiny_llama_dir), kv_cache_memory=10 * 8192 + 100)
    runner = ModelRunner(config)
    assert runner.bytes_per_block == 2 * 2 * 16 * 2 * 16 * 4  # K+V, layers, slots, heads, dim
    assert runner.num_kv_blocks == 10
    with pytest.raises(ValueError, match="kv_cache_memory"):
        ModelRunner(EngineConfig(model=str(tiny_llama_dir), kv_cache_memory=100))


def test_unknown_architecture_is_named(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model_dir = copy_model(tiny_llama_dir, tmp_path / "m", architectures=["FooForCausalLM"])
    with pytest.raises(ValueError, match="FooForCausalLM") as info:
        ModelRunner(EngineConfig(model=str(model_dir)))
    assert all(name in str(info.value) for name in SUPPORTED_ARCHITECTURES)


def test_missing_model_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        ModelRunner(EngineConfig(model=str(tmp_path / "nowhere")))


def test_max_model_len_is_checked_against_the_model(tiny_llama_dir: Path) -> None:
    with pytest.raises(ValueError, match="max_model_len"):
        ModelRunner(EngineConfig(model=str(tiny_llama_dir), max_model_len=4096, num_kv_blocks=4))
    config = EngineConfig(model=str(tiny_llama_dir), max_model_len=100, num_kv_blocks=4)
    assert ModelRunner(config).max_model_len == 100


def test_sharded_checkpoint_loads_the_same_weights(
    tiny_llama_dir: Path, tmp_path: Path, runner: ModelRunner
) -> None:
    from safetensors.torch import load_file, save_file

    model_dir = copy_model(tiny_llama_dir, tmp_path / "sharded")
    state = load_file(str(model_dir / "model.safetensors"))
    (model_dir / "model.safetensors").unlink()
    names = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for file_name, shard_names in shards.items():
        save_file({n: state[n] for n in shard_names}, str(model_dir / file_name))
    weight_map = {n: f for f, shard_names in shards.items() for n in shard_names}
    index = {"metadata": {}, "weight_map": weight_map}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    sharded = ModelRunner(EngineConfig(model=str(model_dir), num_kv_blocks=8))
    for name, param in runner.model.state_dict().items():
        assert torch.equal(param, sharded.model.state_dict()[name]), name


def test_checkpoint_missing_a_weight_is_rejected(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    model_dir = copy_model(tiny_llama_dir, tmp_path / "partial")
    state = load_file(str(model_dir / "model.safetensors"))
    del state["model.layers.1.self_attn.v_proj.weight"]
    save_file(state, str(model_dir / "model.safetensors"))
    with pytest.raises(ValueError, match=r"layers\.1\.self_attn\.qkv_proj"):
        ModelRunner(EngineConfig(model=str(model_dir), num_kv_blocks=8))


def test_only_chunks_reaching_the_end_sample(runner: ModelRunner, driver: Any) -> None:
    long_seq = driver.new_seq(Prompt(list(range(100, 120))))
    short_seq = driver.new_seq(Prompt([7, 8, 9]))
    results = driver.step([(long_seq, 8), (short_seq, 3)])
    assert results[0] is None and results[1] is not None
    results = driver.step([(long_seq, 12), (short_seq, 1)])  # decode listed after the prefill
    assert all(r is not None for r in results)
    assert long_seq.num_tokens == 21 and short_seq.num_tokens == 5


def test_splice_runs_only_for_chunks_with_embed_positions(runner: ModelRunner, driver: Any) -> None:
    looked_up: list[list[int]] = []
    embedding = runner.model.model.embed_tokens
    hook = embedding.register_forward_hook(lambda m, args, out: looked_up.append(args[0].tolist()))
    try:
        ids = [11, 12, 13, 14, 15, 16, 17, 18]
        mask = [True, True, False, False, True, True, True, False]
        rows = runner.embed_tokens([13, 14, 18])
        looked_up.clear()
        prompt = Prompt(
            [t if m else PLACEHOLDER for t, m in zip(ids, mask, strict=True)], rows, mask
        )
        seq = driver.new_seq(prompt)
        text = driver.new_seq(Prompt([21, 22, 23]))
        driver.step([(seq, 2)])  # no embed positions in this chunk: plain input_ids
        assert looked_up == [[11, 12]]
        driver.step([(seq, 6), (text, 3)])  # spliced: token rows only, placeholders never
        assert looked_up[1] == [15, 16, 17, 21, 22, 23]
        driver.step([(seq, 1), (text, 1)])  # decodes: plain input_ids
        assert looked_up[2] == [seq.token_ids[-2], text.token_ids[-2]]
    finally:
        hook.remove()
    assert all(PLACEHOLDER not in ids for ids in looked_up)


def test_pure_embeds_penalised_request_batched_with_long_text(
    runner: ModelRunner, driver: Any
) -> None:
    """vLLM #57719 crashes here; the pure-embeds row must also equal its solo run."""
    params = SamplingParams(temperature=0.0, repetition_penalty=1.5, presence_penalty=1.0)
    embeds_prompt = Prompt(
        [PLACEHOLDER] * 5, runner.embed_tokens([40, 41, 42, 43, 44]), [False] * 5
    )
    (solo,) = driver.generate([driver.new_seq(embeds_prompt, params)], 8)
    batch = [
        driver.new_seq(embeds_prompt, params),
        driver.new_seq(Prompt(list(range(300, 360))), params),
    ]
    together = driver.generate(batch, 8)
    assert [r.token_id for r in together[0]] == [r.token_id for r in solo]


def test_bfloat16_model_agrees_with_float32_on_the_top_token(
    tiny_llama_dir: Path, runner_driver: type
) -> None:
    from transformers import AutoModelForCausalLM

    config = EngineConfig(model=str(tiny_llama_dir), dtype="bfloat16", num_kv_blocks=16)
    runner = ModelRunner(config)
    assert runner.model.model.embed_tokens.weight.dtype == torch.bfloat16
    ids = [19556, 905, 28, 451, 314, 253, 1028, 30]
    seq = Sequence.from_prompt("r", Prompt(ids), SamplingParams(temperature=0.0))
    logits = runner_driver(runner).logits(seq, len(ids))
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32)
    with torch.no_grad():
        reference = hf(torch.tensor([ids])).logits[0]
    assert logits.dtype == torch.float32
    assert (logits - reference).abs().max() < 0.5
    assert torch.equal(logits.argmax(-1), reference.argmax(-1))
