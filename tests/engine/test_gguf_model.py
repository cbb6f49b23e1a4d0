"""A ``.gguf`` file as the model: converted once, cached by the file's identity, same tokens.

The tiny GGUF is written from the tiny random Llama directory by tests/gguf_files.py, the way
llama.cpp's ``convert_hf_to_gguf.py`` writes a Llama, in float32 so the weights survive the
round trip exactly (or as Q8_0 blocks, for int8).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from gguf_files import write_llama_gguf
from pe_engine import LLM, SamplingParams, gguf_model
from pe_engine.demo_model import resolve_model

PROMPTS = ["The capital of France is", "1, 2, 3,"]


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llama_gguf(tiny_llama_dir, tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf")


@pytest.fixture(scope="module")
def gguf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pe-cache")


@pytest.fixture
def cache(gguf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PE_CACHE_DIR for this test (set after the session's tokenizer and tiny models exist)."""
    monkeypatch.setenv("PE_CACHE_DIR", str(gguf_cache))
    return gguf_cache


@pytest.fixture(scope="module")
def converted_dir(tiny_gguf: Path, gguf_cache: Path) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PE_CACHE_DIR", str(gguf_cache))
        return resolve_model(tiny_gguf)


def greedy_token_ids(model: str | Path) -> list[list[int]]:
    llm = LLM(str(model), dtype="float32", device="cpu", max_model_len=128, num_kv_blocks=32, block_size=8)  # fmt: skip
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    return [list(out.outputs[0].token_ids) for out in llm.generate(PROMPTS, params, use_tqdm=False)]


def test_gguf_path_serves_the_same_greedy_tokens_as_the_hf_directory(
    tiny_gguf: Path, tiny_llama_dir: Path, cache: Path
) -> None:
    from_gguf = greedy_token_ids(tiny_gguf)
    assert from_gguf == greedy_token_ids(tiny_llama_dir)
    assert all(len(ids) == 12 for ids in from_gguf)


def test_int8_from_a_q8_0_gguf_holds_the_files_blocks(
    tiny_llama_dir: Path, tmp_path: Path, cache: Path
) -> None:
    """quantization="int8" on a Q8_0 file: every int8 linear (and the output head) holds the
    file's own Q8_0 values and scales, which dequantize exactly to the weights the plain
    (dequantized float32) load of the same file runs."""
    from pe_engine.models.int8_linear import Int8Linear

    q8_file = write_llama_gguf(tiny_llama_dir, tmp_path / "tiny-llama.Q8_0.gguf", q8_0=True)
    settings: dict[str, Any] = {"dtype": "float32", "device": "cpu", "max_model_len": 64,
                                "num_kv_blocks": 16, "block_size": 8}  # fmt: skip
    plain = LLM(str(q8_file), cpu_linear="torch", **settings).engine.runner.model
    quantized = LLM(str(q8_file), quantization="int8", **settings).engine.runner.model
    linears = dict(quantized.named_modules())
    int8 = {name: m for name, m in linears.items() if isinstance(m, Int8Linear)}
    assert len(int8) == 4 * len(quantized.layers) + 1
    for name, module in int8.items():
        weight = plain.get_submodule(name).weight
        assert module.fits_kernel
        assert torch.equal(module.dequantized(), weight), name
        assert not torch.equal(weight, load_hf_weight(tiny_llama_dir, name)), name  # Q8_0 values
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    llm = LLM(str(q8_file), quantization="int8", **settings)
    (out,) = llm.generate(PROMPTS[:1], params, use_tqdm=False)
    assert len(out.outputs[0].token_ids) == 8


def load_hf_weight(model_dir: Path, module_name: str) -> torch.Tensor:
    """The unquantized weight behind one of pe's (possibly fused) linears."""
    from safetensors.torch import load_file

    state = load_file(str(model_dir / "model.safetensors"))
    parts = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
    prefix, _, leaf = module_name.rpartition(".")
    names = [f"{prefix}.{part}.weight".lstrip(".") for part in parts.get(leaf, (leaf,))]
    return torch.cat([state[name if name in state else "model." + name] for name in names])


def test_converted_directory_holds_the_weights_tokenizer_and_template(
    converted_dir: Path, tiny_gguf: Path, tiny_llama_dir: Path
) -> None:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    assert converted_dir.parent.name != "" and converted_dir.name.startswith("gguf-tiny-llama.F32-")
    config = json.loads((converted_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "float32"
    got = load_file(str(converted_dir / "model.safetensors"))
    want = load_file(str(tiny_llama_dir / "model.safetensors"))
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name  # q/k un-permuted exactly
    tokenizer = AutoTokenizer.from_pretrained(str(converted_dir))
    reference = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    messages = [{"role": "user", "content": "Hi there, café 123!"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        reference.apply_chat_template(messages, tokenize=False)
    )
    assert tokenizer("Hi there, café 123!").input_ids == reference("Hi there, café 123!").input_ids
    assert tokenizer.eos_token_id == reference.eos_token_id


def test_second_resolve_reuses_the_cache(
    converted_dir: Path, tiny_gguf: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_conversion(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_model, "convert_gguf_model", no_conversion)
    assert resolve_model(str(tiny_gguf)) == converted_dir
    assert resolve_model(tiny_gguf.parent / ".." / tiny_gguf.parent.name / tiny_gguf.name) == (
        converted_dir
    )


def test_a_changed_file_gets_a_new_cache_entry(
    converted_dir: Path,
    tiny_gguf: Path,
    tmp_path: Path,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[Path] = []

    def fake_conversion(gguf_file: Path, out: Path, dtype: str) -> None:
        calls.append(gguf_file)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(gguf_model, "convert_gguf_model", fake_conversion)
    copy = tmp_path / tiny_gguf.name
    copy.write_bytes(tiny_gguf.read_bytes())
    first = resolve_model(copy)
    assert first != converted_dir and calls == [copy.resolve()]  # another path, another entry
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    touched = resolve_model(copy)
    assert touched != first and len(calls) == 2
    assert touched.name.startswith("gguf-tiny-llama.F32-float32-")
    assert resolve_model(copy) == touched and len(calls) == 2


def test_missing_gguf_file_is_a_file_not_found_error(tmp_path: Path, cache: Path) -> None:
    missing = tmp_path / "nope" / "model.Q4_0.gguf"
    with pytest.raises(FileNotFoundError, match=r"model\.Q4_0\.gguf"):
        resolve_model(missing)
    with pytest.raises(FileNotFoundError, match=r"model\.Q4_0\.gguf"):
        LLM(str(missing), device="cpu")
    directory = tmp_path / "folder.gguf"
    directory.mkdir()
    with pytest.raises(FileNotFoundError, match=r"folder\.gguf"):
        resolve_model(directory)  # a directory named *.gguf is not a GGUF file


def test_missing_gguf_package_names_the_install(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PE_CACHE_DIR", str(tmp_path / "cache"))
    real_find_spec = gguf_model.importlib.util.find_spec
    monkeypatch.setattr(
        gguf_model.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gguf" else real_find_spec(name, *a),
    )
    with pytest.raises(gguf_model.GGUFSupportMissingError, match=r"pip install 'gguf"):
        resolve_model(tiny_gguf)
    assert not any((tmp_path / "cache").iterdir())  # nothing half-built is left


@pytest.mark.parametrize("kind", ["garbage", "unknown architecture"])
def test_unreadable_gguf_is_a_value_error_with_transformers_message(
    kind: str, tmp_path: Path, cache: Path
) -> None:
    import gguf

    path = tmp_path / "bad.gguf"
    if kind == "garbage":
        path.write_bytes(b"this is not a GGUF file at all" * 10)
    else:
        writer = gguf.GGUFWriter(str(path), "not-an-architecture")
        writer.add_block_count(1)
        writer.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    with pytest.raises(ValueError, match=r"Cannot load .*bad\.gguf as a GGUF model: .+") as info:
        resolve_model(path)
    assert info.value.__cause__ is not None
    if kind != "garbage":
        assert "not-an-architecture" in str(info.value)


def test_dtype_is_checked(tiny_gguf: Path, cache: Path) -> None:
    with pytest.raises(ValueError, match="dtype"):
        gguf_model.ensure_gguf_model(tiny_gguf, "int8")


@pytest.mark.slow
def test_demo_gguf_file_by_path_matches_demo(
    demo_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pe_engine.demo_model import GGUF_FILE, gguf_dir

    def greedy(model: str) -> list[list[int]]:
        llm = LLM(model, dtype="bfloat16", device="cpu", max_model_len=256, num_kv_blocks=64)
        params = SamplingParams(temperature=0.0, max_tokens=12)
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        outs = llm.chat([messages], params, use_tqdm=False)
        return [list(out.outputs[0].token_ids) for out in outs]

    demo = greedy("demo")
    monkeypatch.setenv("PE_CACHE_DIR", str(tmp_path))  # a fresh conversion, not a cached one
    assert greedy(str(gguf_dir() / GGUF_FILE)) == demo
    assert len(list(tmp_path.glob("gguf-SmolLM2-135M-Instruct.Q4_1-float32-*"))) == 1
