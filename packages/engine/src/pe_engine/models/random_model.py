"""Tiny random-weight Llama / Qwen2 / Qwen3 models for tests and benchmarks.

Weights come from one ``torch.Generator`` (deterministic): embeddings N(0, 1) (0.25² when
tied), ``lm_head`` N(0, 0.25²) so top logits are far apart (greedy tokens do not flip between
fp32 kernels), other linears N(0, 1/fan_in) so the next token depends on the context; norm weights are
1 + N(0, 0.1²) so a skipped or misplaced norm changes the output. The directory looks like a
``save_pretrained`` output: config.json, generation_config.json, model.safetensors, tokenizer.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any, Literal

import torch

Arch = Literal["llama", "qwen2", "qwen3"]
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


def build_random_model(
    out_dir: str | Path,
    *,
    arch: Arch = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 192,
    head_dim: int | None = None,
    tie_word_embeddings: bool = False,
    rope_theta: float = 10000.0,
    rope_scaling: dict[str, Any] | None = None,
    max_position_embeddings: int = 2048,
    seed: int = 1234,
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Write a random model directory to ``out_dir`` and return it."""
    from transformers import AutoTokenizer

    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}.")
    if tokenizer_dir is None:
        from pe_engine.demo_model import smollm2_tokenizer_dir

        tokenizer_dir = smollm2_tokenizer_dir()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = _hf_config(
        arch,
        vocab_size=_round_up(len(tokenizer), 64),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        head_dim=head_dim or hidden_size // num_heads,
        tie_word_embeddings=tie_word_embeddings,
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.save_pretrained(str(out))
    _save_generation_config(out, tokenizer)
    _save_weights(out, _random_state_dict(arch, config, seed))
    for item in Path(tokenizer_dir).iterdir():
        if item.is_file() and item.name.startswith(("tokenizer", "chat_template", "special")):
            shutil.copy2(item, out / item.name)
    return out


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def _hf_config(
    arch: Arch, *, rope_theta: float, rope_scaling: dict[str, Any] | None, **kw: Any
) -> Any:
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    rope_parameters = {"rope_type": "default", **(rope_scaling or {}), "rope_theta": rope_theta}
    config: Any
    if arch == "llama":
        config = LlamaConfig(rope_parameters=rope_parameters, **kw)
    elif arch == "qwen2":
        kw.pop("head_dim")  # Qwen2 always uses hidden_size / num_heads
        config = Qwen2Config(rope_parameters=rope_parameters, use_sliding_window=False, **kw)
    else:
        config = Qwen3Config(rope_parameters=rope_parameters, use_sliding_window=False, **kw)
    config.architectures = [ARCHITECTURES[arch]]
    config.dtype = "float32"
    return config


def _save_generation_config(out: Path, tokenizer: Any) -> None:
    from transformers import GenerationConfig

    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    ).save_pretrained(str(out))


def _random_state_dict(arch: Arch, config: Any, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    h, v = config.hidden_size, config.vocab_size
    hd = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q_size = config.num_attention_heads * hd
    kv_size = config.num_key_value_heads * hd

    def normal(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    def linear(out_features: int, in_features: int) -> torch.Tensor:
        return normal(out_features, in_features, std=1 / math.sqrt(in_features))

    def norm(size: int) -> torch.Tensor:
        return 1 + normal(size, std=0.1)

    # A tied table doubles as lm_head: the smaller std keeps the logits spread like lm_head's.
    embed_std = 0.25 if config.tie_word_embeddings else 1.0
    state = {"model.embed_tokens.weight": normal(v, h, std=embed_std)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        state[p + "input_layernorm.weight"] = norm(h)
        state[p + "self_attn.q_proj.weight"] = linear(q_size, h)
        state[p + "self_attn.k_proj.weight"] = linear(kv_size, h)
        state[p + "self_attn.v_proj.weight"] = linear(kv_size, h)
        if arch == "qwen2":
            for name, size in (("q", q_size), ("k", kv_size), ("v", kv_size)):
                state[p + f"self_attn.{name}_proj.bias"] = normal(size, std=1 / math.sqrt(h))
        if arch == "qwen3":
            state[p + "self_attn.q_norm.weight"] = norm(hd)
            state[p + "self_attn.k_norm.weight"] = norm(hd)
        state[p + "self_attn.o_proj.weight"] = linear(h, q_size)
        state[p + "post_attention_layernorm.weight"] = norm(h)
        state[p + "mlp.gate_proj.weight"] = linear(config.intermediate_size, h)
        state[p + "mlp.up_proj.weight"] = linear(config.intermediate_size, h)
        state[p + "mlp.down_proj.weight"] = linear(h, config.intermediate_size)
    state["model.norm.weight"] = norm(h)
    if not config.tie_word_embeddings:
        state["lm_head.weight"] = normal(v, h, std=0.25)
    return state


def _save_weights(out: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file(
        {k: t.contiguous() for k, t in state.items()},
        str(out / "model.safetensors"),
        metadata={"format": "pt"},
    )
